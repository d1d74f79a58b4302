"""The ``diffmatch`` command: subcommands dispatch to the same programs as the older entry points."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from diffmatch.cli.main import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    names = ("match", "train", "evaluate", "evaluate-confidence", "calibrate", "export", "convert-official", "fetch-photos")
    for name in names:
        assert f"  {name} " in text
    assert set(SUBCOMMANDS) == set(names)


def test_unknown_or_missing_subcommand_is_one_line_and_status_2(capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown subcommand 'nope'" in err[0]
    assert main([]) == 2


@pytest.mark.parametrize("name", ["evaluate", "calibrate", "export", "convert-official", "evaluate-confidence", "fetch-photos"])
def test_subcommand_help_names_the_diffmatch_command(capsys, name):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: diffmatch {name} ")


def test_bad_arguments_are_one_line_naming_the_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--dataset", "synthetic"])  # no --methods, no --out
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "(see diffmatch evaluate --help)" in err[0]


def test_match_writes_what_infer_writes(tmp_path, checkpoint, photo):
    import cv2

    from diffmatch.cli.infer import main as infer_main

    src, tgt = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(src), photo[:64, :80])
    cv2.imwrite(str(tgt), photo[4:68, 6:86])
    args = ["--source", str(src), "--target", str(tgt), "--checkpoint", str(checkpoint), "--samples", "2", "--seed", "3",
            "--no-viz"]
    assert main(["match", *args, "--out", str(tmp_path / "cmd")]) == 0
    assert infer_main([*args, "--out", str(tmp_path / "old")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "cmd" / "flow.npy"), np.load(tmp_path / "old" / "flow.npy"))


def test_python_dash_m_entry_points_still_run():
    for module in ("diffmatch.cli", "diffmatch.export"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage:" in proc.stdout, (module, proc.stderr[-500:])
