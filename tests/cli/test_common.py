"""What every command line promises (``diffmatch.cli.common``): one line, an exit status, nothing half-written.

Exit statuses: 2 bad input (checked before any model or data loads), 1 the work failed (a full
disk), 130 Ctrl-C. Each test asserts what the user sees: the status, the lines on stderr, no
traceback, and the files left behind.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch

from diffmatch.cli.infer import main as infer_main

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # this checkout's diffmatch


@pytest.fixture
def images(tmp_path, photo) -> tuple[Path, Path]:
    src, tgt = tmp_path / "src.png", tmp_path / "tgt.png"
    cv2.imwrite(str(src), cv2.cvtColor(photo[:64, :72], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tgt), cv2.cvtColor(photo[8:72, 4:76], cv2.COLOR_RGB2BGR))
    return src, tgt


def _lines(text: str) -> list[str]:
    """The lines a user reads on stderr (tqdm's progress redraws dropped)."""
    lines = [x.strip() for x in text.replace("\r", "\n").splitlines()]
    return [x for x in lines if x and not x.startswith("pairs:")]


def _pairs_file(tmp_path: Path, images: tuple[Path, Path], count: int) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{images[0]} {images[1]}\n" for _ in range(count)))
    return path


COMPLETE = {"flow.npy", "uncertainty.npy", "flow.flo"}


def _check_folders(out: Path, written: int) -> None:
    """``written`` complete pair folders and nothing else: no partial folder, no temporary file."""
    entries = sorted(out.iterdir())
    assert [p.name for p in entries] == [f"{i:04d}_src_tgt" for i in range(written)], entries
    for folder in entries:
        assert {p.name for p in folder.iterdir()} == COMPLETE


# ----------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_while_a_pair_is_written_exits_130_and_keeps_only_complete_pairs(
    tmp_path, checkpoint, images, monkeypatch, capsys
):
    import diffmatch.cli.infer as cli

    calls = []
    original = cli.write_flow

    def interrupted_on_the_second_pair(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # pair 1: flow.npy and uncertainty.npy are written, then Ctrl-C
            raise KeyboardInterrupt
        return original(path, *args, **kwargs)

    monkeypatch.setattr(cli, "write_flow", interrupted_on_the_second_pair)
    out = tmp_path / "out"
    code = infer_main(["--pairs", str(_pairs_file(tmp_path, images, 3)), "--out", str(out), "--checkpoint",
                       str(checkpoint), "--no-viz", "--samples", "2"])
    assert code == 130
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("interrupted"), err
    _check_folders(out, written=1)


def test_ctrl_c_in_a_single_pair_run_leaves_out_as_it_was(tmp_path, checkpoint, images, monkeypatch, capsys):
    import diffmatch.cli.infer as cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    monkeypatch.setattr(cli, "write_flow", interrupt)  # after flow.npy and uncertainty.npy
    code = infer_main(["--source", str(images[0]), "--target", str(images[1]), "--out", str(out),
                       "--checkpoint", str(checkpoint), "--no-viz"])
    assert code == 130 and len(_lines(capsys.readouterr().err)) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_ctrl_c_through_the_command(tmp_path, checkpoint, images):
    """A real SIGINT to ``python infer.py --pairs``: status 130, one line, no traceback, no partial pair."""
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "infer.py"), "--pairs", str(_pairs_file(tmp_path, images, 200)), "--out",
               str(out), "--checkpoint", str(checkpoint), "--no-viz", "--samples", "2", "--device", "cpu"]
    # A command started in the background of a non-interactive shell ignores SIGINT, and so would this
    # child: give it the default disposition, as a terminal's foreground command has.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().startswith("wrote "), proc.stderr.read()[-2000:]  # pair 0 is done
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    err = _lines(stderr)
    assert len(err) == 1 and err[0].startswith("interrupted"), err
    written = len(list(out.iterdir()))
    assert written >= 1
    _check_folders(out, written)


# ------------------------------------------------------------------------------------- full disk
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "somewhere")


def test_full_disk_stops_infer_with_one_line_and_keeps_the_pairs_written(
    tmp_path, checkpoint, images, monkeypatch, capsys
):
    import diffmatch.cli.infer as cli

    calls = []
    original = cli.write_flow

    def full_on_the_second_pair(path, *args, **kwargs):
        calls.append(path)
        if len(calls) >= 2:
            _disk_full()
        return original(path, *args, **kwargs)

    monkeypatch.setattr(cli, "write_flow", full_on_the_second_pair)
    out = tmp_path / "out"
    code = infer_main(["--pairs", str(_pairs_file(tmp_path, images, 3)), "--out", str(out), "--checkpoint",
                       str(checkpoint), "--no-viz", "--samples", "2"])
    assert code == 1
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "No space left on device" in err[0] and "pair 1" in err[0], err
    assert len(calls) == 2  # pair 2 was not tried: it could not be written either
    _check_folders(out, written=1)


def test_full_disk_in_export_is_one_line(tmp_path, checkpoint, monkeypatch, capsys):
    import diffmatch.models.weights as weights
    from diffmatch.cli.export import main as export_main

    monkeypatch.setattr(weights, "atomic_open", _disk_full)
    assert export_main([str(checkpoint), str(tmp_path / "out.pt")]) == 1
    err = _lines(capsys.readouterr().err)
    assert err == ["error: somewhere: No space left on device"]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ outputs checked first
def test_export_to_a_folder_is_one_line_before_reading(tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-m", "diffmatch.export", str(tmp_path / "absent.ckpt"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _lines(proc.stderr) == [f"error: {tmp_path}: is a folder; give a file name, e.g. {tmp_path / 'model.pt'}"]


def test_export_keeps_float16_weights_float16(tmp_path, checkpoint):
    from diffmatch.cli.export import main as export_main

    half, again, wide = tmp_path / "half.pt", tmp_path / "again.pt", tmp_path / "wide.pt"
    assert export_main([str(checkpoint), str(half), "--half"]) == 0
    assert export_main([str(half), str(again)]) == 0
    assert export_main([str(half), str(wide), "--float32"]) == 0
    dtypes = {path.name: {v.dtype for v in torch.load(path, weights_only=True)["state_dict"].values()
                          if v.is_floating_point()} for path in (half, again, wide)}
    assert dtypes == {"half.pt": {torch.float16}, "again.pt": {torch.float16}, "wide.pt": {torch.float32}}
    assert again.stat().st_size < 0.6 * wide.stat().st_size


def test_export_argument_errors_are_one_line(tmp_path, capsys):
    from diffmatch.cli.export import main as export_main

    with pytest.raises(SystemExit) as exit_:
        export_main([str(tmp_path / "a.ckpt"), str(tmp_path / "b.pt"), "--half", "--float32"])
    assert exit_.value.code == 2
    assert len(_lines(capsys.readouterr().err)) == 1
