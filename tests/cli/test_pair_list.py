"""``infer.py --pairs``: resuming a list, and splitting it over processes (``--devices N``, issue #30).

A pair list is written one folder per pair, each folder whole or absent, so a re-run skips the
complete ones; ``--devices N`` splits what is left over N Lightning DDP processes (gloo on CPU),
which write exactly what one process writes.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import diffmatch.cli.infer as cli
from diffmatch.cli.infer import main as infer_main
from diffmatch.cli.pair_progress import PairTotals, pair_folder

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
FILES = {"flow.npy", "uncertainty.npy", "flow.flo"}  # --no-viz, an uncalibrated model
# The variables Lightning's launcher sets in the process that starts the others.
DDP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


@pytest.fixture
def pairs_file(tmp_path, photo) -> Path:
    """Four small pairs, crops of one photo shifted by a few pixels, listed in ``pairs.txt``."""
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for i in range(4):
        src, tgt = folder / f"s{i}.png", folder / f"t{i}.png"
        cv2.imwrite(str(src), cv2.cvtColor(photo[4 * i : 4 * i + 64, 8 : 8 + 72], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tgt), cv2.cvtColor(photo[10 : 10 + 64, 3 * i + 4 : 3 * i + 76], cv2.COLOR_RGB2BGR))
        lines.append(f"{src} {tgt}\n")
    path = tmp_path / "pairs.txt"
    path.write_text("".join(lines))
    return path


def _argv(pairs: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["--pairs", str(pairs), "--out", str(out), "--checkpoint", str(checkpoint), "--no-viz",
            "--samples", "2", "--seed", "3", *extra]


def _folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _stamps(folder: Path) -> tuple:
    """What a rewrite would change: the folder's inode (it is replaced whole) and its files' mtimes."""
    return folder.stat().st_ino, sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())


def _assert_same_outputs(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert {p.name for p in (a / name).iterdir()} == {p.name for p in (b / name).iterdir()} == FILES, name
        for array in ("flow.npy", "uncertainty.npy"):
            np.testing.assert_allclose(np.load(b / name / array), np.load(a / name / array), atol=1e-5, err_msg=name)
        np.testing.assert_allclose(cv2.readOpticalFlow(str(b / name / "flow.flo")),
                                   cv2.readOpticalFlow(str(a / name / "flow.flo")), atol=1e-5, err_msg=name)


def _status(argv: list[str]) -> int:
    """``infer.py``'s exit status, argument errors (argparse's ``SystemExit``) included."""
    try:
        return infer_main(argv)
    except SystemExit as exit_:
        return exit_.code


def _summary(stdout: str) -> str:
    lines = [x for x in stdout.splitlines() if x.startswith("done: ")]
    assert len(lines) == 1, stdout[-2000:]
    return lines[0]


# ------------------------------------------------------------------------------- resuming, one process
def test_rerun_skips_complete_pairs_and_redoes_the_rest(tmp_path, checkpoint, pairs_file, monkeypatch, capsys):
    out = tmp_path / "out"
    calls = []
    original = cli.write_flow

    def crash_in_pair_2(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # pair 2: flow.npy and uncertainty.npy are written, then the run dies
            raise KeyboardInterrupt
        return original(path, *args, **kwargs)

    monkeypatch.setattr(cli, "write_flow", crash_in_pair_2)
    assert infer_main(_argv(pairs_file, out, checkpoint)) == 130
    names = ["0000_s0_t0", "0001_s1_t1", "0002_s2_t2", "0003_s3_t3"]
    assert _folders(out) == names[:2]
    monkeypatch.setattr(cli, "write_flow", original)
    (out / names[3]).mkdir()
    np.save(out / names[3] / "flow.npy", np.zeros((2, 2, 2), np.float32))  # an older run's folder, incomplete
    before = {name: _stamps(out / name) for name in names[:2]}
    matched = []
    match_pair = cli.match_pair

    def counting(args, out, index, *rest):
        matched.append(index)
        return match_pair(args, out, index, *rest)

    monkeypatch.setattr(cli, "match_pair", counting)
    capsys.readouterr()
    assert infer_main(_argv(pairs_file, out, checkpoint)) == 0
    captured = capsys.readouterr()
    assert matched == [2, 3]
    assert {name: _stamps(out / name) for name in names[:2]} == before
    assert _folders(out) == names and all({p.name for p in (out / n).iterdir()} == FILES for n in names)
    assert "note: 2 of 4 pairs are already complete" in captured.err and "--overwrite" in captured.err
    summary = _summary(captured.out)
    assert "4 pairs: 2 written, 2 skipped (already complete), 0 failed" in summary
    assert "pairs/s on 1 process " in summary
    # Nothing left: nothing is matched.
    assert infer_main(_argv(pairs_file, out, checkpoint)) == 0
    assert matched == [2, 3] and "0 written, 4 skipped" in _summary(capsys.readouterr().out)
    # --overwrite redoes every pair.
    assert infer_main(_argv(pairs_file, out, checkpoint, "--overwrite")) == 0
    assert matched == [2, 3, 0, 1, 2, 3] and _stamps(out / names[0]) != before[names[0]]


def test_a_folder_lacking_a_file_this_run_writes_is_redone(tmp_path, checkpoint, pairs_file, capsys):
    """Complete means every file this run would write: a --no-viz folder is incomplete for a run with pictures."""
    out = tmp_path / "out"
    pairs_file.write_text(pairs_file.read_text().splitlines()[0] + "\n")
    assert infer_main(_argv(pairs_file, out, checkpoint)) == 0
    capsys.readouterr()
    argv = [x for x in _argv(pairs_file, out, checkpoint) if x != "--no-viz"]
    assert infer_main(argv) == 0
    written = {p.name for p in (out / "0000_s0_t0").iterdir()}
    assert written == set(cli.output_names("flo", viz=True, confidence=False))
    assert "1 written, 0 skipped" in _summary(capsys.readouterr().out)


def test_a_failed_pair_is_retried_by_the_next_run(tmp_path, checkpoint, pairs_file, capsys):
    out = tmp_path / "out"
    broken = Path(pairs_file.read_text().split()[4])  # pair 2's source
    image = broken.read_bytes()
    broken.write_bytes(b"not an image")
    assert infer_main(_argv(pairs_file, out, checkpoint)) == 1
    captured = capsys.readouterr()
    assert "3 written, 0 skipped (already complete), 1 failed" in _summary(captured.out)
    assert "s2.png: not a readable image" in captured.err and "error: 1 of 4 pairs failed" in captured.err
    broken.write_bytes(image)
    assert infer_main(_argv(pairs_file, out, checkpoint)) == 0
    assert "1 written, 3 skipped" in _summary(capsys.readouterr().out)
    assert len(_folders(out)) == 4


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--devices", "0"], "error: --devices must be >= 1, got 0"),
        (["--devices", "-2"], "error: --devices must be >= 1, got -2"),
        (["--device", "cpu", "--accelerator", "gpu"], "error: --device cpu and --accelerator gpu disagree"),
    ],
)
def test_bad_devices_arguments_are_one_line(tmp_path, pairs_file, capsys, extra, message):
    code = _status(_argv(pairs_file, tmp_path / "out", tmp_path / "missing.pt", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--devices", "2"], "--devices splits a --pairs list over processes; give --pairs FILE"),
        (["--devices", "1"], "--devices splits a --pairs list over processes; give --pairs FILE"),
        (["--overwrite"], "--overwrite applies to --pairs"),
    ],
)
def test_devices_and_overwrite_need_a_pairs_list(tmp_path, photo, capsys, extra, message):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), photo[:64, :64])
    code = _status(["--source", str(image), "--target", str(image), "--out", str(tmp_path / "out"),
                    "--checkpoint", str(tmp_path / "missing.pt"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_accelerator_gpu_without_cuda_is_one_line_before_the_model_loads(tmp_path, pairs_file, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for extra, message in ((["--devices", "2", "--accelerator", "gpu"], "--accelerator gpu: no CUDA GPU"),
                           (["--accelerator", "gpu"], "no CUDA GPU is available")):
        # The checkpoint does not exist: only a check made before loading the model can answer.
        code = infer_main(_argv(pairs_file, tmp_path / "out", tmp_path / "missing.pt", *extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert not (tmp_path / "out").exists()


def test_devices_from_python_is_refused_before_the_model_loads(tmp_path, pairs_file, capsys):
    """Lightning starts the other processes by running the command line again: main(argv) cannot be rerun."""
    code = infer_main(_argv(pairs_file, tmp_path / "out", tmp_path / "missing.pt", "--devices", "2",
                            "--accelerator", "cpu"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "as a command, not main(argv)" in err[0], err


# ---------------------------------------------------------------------- the Lightning path, in-process
def test_processes_share_the_pairs_left_each_once():
    from diffmatch.cli.pair_list import share

    todo = [0, 2, 3, 4, 7, 8, 9]
    shares = [share(todo, rank, 3) for rank in range(3)]
    assert shares == [[0, 4, 9], [2, 7], [3, 8]]
    assert [share([5], rank, 2) for rank in range(2)] == [[5], []]  # fewer pairs than processes


def test_pair_writer_counts_failures_and_stops_on_a_full_disk(capsys):
    from diffmatch.cli.pair_list import PairWriter

    def write_pair(index: int) -> bool:
        if index == 3:
            raise OSError(errno.ENOSPC, "No space left on device", "out/0003")
        return index != 1  # pair 1 fails (it reports itself)

    writer = PairWriter(write_pair, [0, 1, 3, 4, 5])
    for step, index in enumerate(writer.todo):
        writer.predict_step(index, step)
    assert (writer.written, writer.failed, writer.not_tried) == (1, 1, 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device (pair 3); this process stops" in err[0]


def test_lightning_path_writes_what_one_process_writes(tmp_path, checkpoint, pairs_file, monkeypatch):
    """Trainer.predict with the DDP strategy, one process (no start-up of others): pairs 1 and 3 alone
    give the same folders as the whole list in the plain loop, so a pair does not depend on the split."""
    from diffmatch.cli.pair_list import PairListProcesses

    for name in DDP_VARIABLES:  # Lightning's launcher sets them in this process; leave none behind
        monkeypatch.delenv(name, raising=False)
    for name in ("lightning.pytorch", "lightning.fabric"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    reference = tmp_path / "reference"
    assert infer_main(_argv(pairs_file, reference, checkpoint)) == 0
    out = tmp_path / "out"
    args = cli.parse_args(_argv(pairs_file, out, checkpoint))
    pairs = cli.read_pairs_file(pairs_file)
    processes = PairListProcesses("cpu", 1, from_command_line=True)
    run, confidence = cli._build_matcher(args, processes.device)
    assert processes.is_first and not confidence
    totals = processes.predict([1, 3], lambda index: cli.match_pair(args, out, index, pairs[index], run))
    assert isinstance(totals, PairTotals) and (totals.written, totals.failed, totals.not_tried) == (2, 0, 0)
    names = [pair_folder(out, i, pairs[i]).name for i in (1, 3)]
    assert _folders(out) == names
    _assert_same_outputs(reference, out, names)


# ------------------------------------------------------------------------- two processes (gloo, CPU)
def _command(pairs: Path, out: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "infer.py"), *_argv(pairs, out, checkpoint, "--devices", "2",
                                                             "--accelerator", "cpu", *extra)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV, cwd=pairs.parent)


@pytest.mark.slow
def test_two_cpu_processes_write_what_one_process_writes_and_resume(tmp_path, checkpoint, pairs_file):
    """``--devices 2 --accelerator cpu``: a run where pair 2 fails writes the others; the re-run does pair 2
    alone; every folder equals a single-process run's."""
    out = tmp_path / "out"
    broken = Path(pairs_file.read_text().split()[4])  # pair 2's source
    image = broken.read_bytes()
    broken.write_bytes(b"not an image")
    proc = _command(pairs_file, out, checkpoint)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = _summary(proc.stdout)
    assert "4 pairs: 3 written, 0 skipped (already complete), 1 failed" in summary and "on 2 processes" in summary
    assert "s2.png: not a readable image" in proc.stderr and "error: 1 of 4 pairs failed" in proc.stderr
    assert len([x for x in proc.stdout.splitlines() if x.startswith("wrote ")]) == 3
    names = ["0000_s0_t0", "0001_s1_t1", "0002_s2_t2", "0003_s3_t3"]
    assert _folders(out) == [names[0], names[1], names[3]]
    before = {name: _stamps(out / name) for name in _folders(out)}

    broken.write_bytes(image)
    proc = _command(pairs_file, out, checkpoint)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 written, 3 skipped (already complete), 0 failed" in _summary(proc.stdout)
    assert [x for x in proc.stdout.splitlines() if x.startswith("wrote ")] == [
        f"wrote {out / names[2]}{os.sep}flow.npy, uncertainty.npy, flow.flo"
    ]
    assert {name: _stamps(out / name) for name in before} == before
    assert _folders(out) == names

    reference = tmp_path / "reference"
    assert infer_main(_argv(pairs_file, reference, checkpoint)) == 0
    _assert_same_outputs(reference, out, names)
    # Nothing left: the processes are not even started.
    proc = _command(pairs_file, out, checkpoint)
    assert proc.returncode == 0 and "0 written, 4 skipped" in _summary(proc.stdout), proc.stderr[-3000:]
