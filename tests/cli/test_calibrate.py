"""``python -m diffmatch.calibrate`` as a user meets it: arguments and --out checked first, one line on failure."""

from __future__ import annotations

import numpy as np
import pytest

from diffmatch.cli.calibrate import _layer_search_part
from diffmatch.cli.calibrate import main as calibrate_main
from diffmatch.confidence.fitting import SEARCH_FIT_CUES, CueSamples
from diffmatch.data import bundled_photos
from diffmatch.refinement import LayerSearchConfig
from tests.helpers import synthetic_search_cues

PHOTOS = bundled_photos("train")


def _err_lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.strip()]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corrupted", "2"], "--corrupted is a share of the pairs, in [0, 1], got 2"),
        (["--corrupted", "-0.5"], "--corrupted is a share of the pairs, in [0, 1], got -0.5"),
        (["--samples", "0"], "--samples must be >= 1"),
        (["--samples", "1"], "--samples 1 has no variance to calibrate"),
        (["--reverse-samples", "0"], "--reverse-samples must be >= 1"),
        (["--scenes", "1.5"], "--scenes is a share of the pairs, in [0, 1], got 1.5"),
        (["--out", "FOLDER"], "is a folder; give a file name"),
        (["--taus", "1,x"], "--taus must be a comma list of numbers, got '1,x'"),
        (["--taus", "1,5"], "--default-tau 3.0 must be one of --taus (1.0, 5.0)"),
        (["--cues", "variance,colour"], "--cues must be 'auto' or a comma list of"),
        (["--pairs", "2"], "need --pairs >= 4 and --pixels >= 10"),
    ],
)
def test_bad_argument_or_out_is_one_line_before_the_model_loads(tmp_path, capsys, extra, message):
    # The checkpoint does not exist: only a check made before loading it can report the argument.
    extra = [str(tmp_path) if a == "FOLDER" else a for a in extra]
    argv = [str(tmp_path / "missing.pt"), "--out", str(tmp_path / "cal.pt"), *extra]
    assert calibrate_main(argv) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_steps_beyond_the_model_are_refused_before_matching(tmp_path, checkpoint, capsys):
    argv = [str(checkpoint), "--out", str(tmp_path / "cal.pt"), "--steps", "9", "--photos", str(PHOTOS)]
    assert calibrate_main(argv) == 2
    err = _err_lines(capsys)
    assert err == ["error: --steps must be in [1, 5] for this model, got 9"]
    assert not (tmp_path / "cal.pt").exists()


def test_benchmark_photos_are_refused(tmp_path, checkpoint, capsys):
    argv = [str(checkpoint), "--out", str(tmp_path / "cal.pt"), "--photos", str(bundled_photos("val"))]
    assert calibrate_main(argv) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "these are the benchmark's held-out photos" in err[0], err


def test_default_photos_not_fetched_name_the_command_and_the_folder(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("DIFFMATCH_HOME", str(tmp_path / "home"))  # the default --photos: nothing fetched there
    assert calibrate_main([str(checkpoint), "--out", str(tmp_path / "cal.pt")]) == 2
    err = _err_lines(capsys)
    folder = tmp_path / "home" / "photos" / "extra"
    assert len(err) == 1 and f"`diffmatch fetch-photos` downloads them into {folder}" in err[0], err
    assert not (tmp_path / "cal.pt").exists()


def test_a_model_that_is_wrong_everywhere_is_one_line(tmp_path, checkpoint, capsys):
    # The random tiny model is within 0.01 px nowhere, as a briefly trained model is within 1 px nowhere.
    out = tmp_path / "cal.pt"
    argv = [str(checkpoint), "--out", str(out), "--photos", str(PHOTOS), "--pairs", "4", "--size", "64",
            "--pixels", "50", "--samples", "2", "--taus", "0.01", "--default-tau", "0.01", "--no-refine",
            "--device", "cpu"]
    assert calibrate_main(argv) == 1
    err = [x for x in _err_lines(capsys) if not x.startswith(("matching ", "  pair "))]
    assert len(err) == 1 and "cannot calibrate at τ = 0.01 px: none of the 200 pixels is within it" in err[0], err
    assert not out.exists()


def _taken(pairs: int, seed: int = 0) -> CueSamples:
    """Made-up pixels the layer search took: the error grows with the census cost."""
    cues, errors = synthetic_search_cues(200 * pairs, seed)
    return CueSamples(SEARCH_FIT_CUES, cues, errors, np.repeat(np.arange(pairs), 200))


def test_the_layer_search_part_is_fitted_from_taken_pixels_or_skipped_in_one_line(capsys):
    part = _layer_search_part(_taken(8), (1.0, 3.0, 5.0), 3.0, LayerSearchConfig(), True, ["calibrate"])
    assert part is not None and part.taus == (1.0, 3.0, 5.0) and part.refined
    assert "census_cost" in part.cues and set(part.cues) <= set(SEARCH_FIT_CUES)
    assert part.info["pairs"] == 8 and part.info["command"] == ["calibrate"]
    assert part.transform == "log" and part.info["variance_ause"] < 1.0
    old = _layer_search_part(_taken(8), (1.0, 3.0, 5.0), 3.0, LayerSearchConfig(), True, [], transform="log1p")
    assert old.transform == "log1p"  # --transform log1p: fitted as calibrations before the log offsets
    # The confidence falls with the census cost, the cue the error was made from.
    probe = np.tile(np.median(_taken(8).cues, 0), (5, 1))
    probe[:, 2] = np.linspace(0.0, 0.5, 5)
    columns = [SEARCH_FIT_CUES.index(c) for c in part.cues]
    probs = part.predict_numpy(probe[:, columns])
    assert np.all(np.diff(probs) <= 0) and probs[0] > 0.9 and probs[-1] < 0.1
    capsys.readouterr()
    assert _layer_search_part(_taken(2), (1.0, 3.0, 5.0), 3.0, LayerSearchConfig(), True, []) is None
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("no layer-search part: the search took pixels in 2 pairs (need 4)")
