"""``infer.py`` with a calibrated checkpoint: confidence.npy/png, and --min-confidence in every flow format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmatch.cli.infer import main, write_outputs
from diffmatch.confidence import fit_calibrator
from diffmatch.errors import InputError
from diffmatch.io import read_flow_file, save_image
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import save_weights
from diffmatch.result import MatchResult
from tests.helpers import tiny_config


def _result(h: int = 12, w: int = 16) -> MatchResult:
    flow = torch.stack(torch.meshgrid(torch.linspace(-3, 3, h), torch.linspace(-2, 2, w), indexing="ij")[::-1])
    result = MatchResult.from_samples(torch.stack((flow, flow + 0.5))[None])
    result.confidence = torch.linspace(0, 1, h * w).view(1, 1, h, w)
    result.confidence_tau = 3.0
    return result


@pytest.mark.parametrize("fmt", ["flo", "png", "npy", "npz"])
def test_min_confidence_masks_each_flow_format(tmp_path, fmt):
    result = _result()
    images = np.zeros((12, 16, 3), np.uint8)
    written = write_outputs(tmp_path, result, images, images, fmt, viz=False, min_confidence=0.5)
    assert "confidence.npy" in written
    confidence = np.load(tmp_path / "confidence.npy")
    np.testing.assert_allclose(confidence, result.confidence[0, 0].numpy())
    low = confidence < 0.5
    assert low.any() and (~low).any()
    truth = result.flow[0].permute(1, 2, 0).numpy()
    for path in {tmp_path / "flow.npy", tmp_path / f"flow.{fmt}"}:
        data = read_flow_file(path)
        np.testing.assert_array_equal(data["valid"], ~low)  # NaN (npy, npz, flo) or the KITTI valid bit
        tolerance = 1 / 64 if fmt == "png" else 1e-6  # KITTI stores 1/64 px
        np.testing.assert_allclose(data["flow"][~low], truth[~low], atol=tolerance)
        if path.suffix != ".png":
            assert np.isnan(data["flow"][low]).all()


def test_without_min_confidence_nothing_is_masked_and_pictures_include_confidence(tmp_path):
    images = np.zeros((12, 16, 3), np.uint8)
    written = write_outputs(tmp_path, _result(), images, images, "npz", viz=True)
    assert {"confidence.npy", "confidence.png"} <= set(written)
    assert read_flow_file(tmp_path / "flow.npz")["valid"].all()
    assert np.isfinite(np.load(tmp_path / "flow.npy")).all()
    plain = _result()
    plain.confidence = None
    with pytest.raises(InputError, match="calibrated"):
        write_outputs(tmp_path / "plain", plain, images, images, "npy", viz=False, min_confidence=0.5)


def _checkpoint(tmp_path, calibrated: bool):
    torch.manual_seed(0)
    model = DiffMatch(tiny_config()).eval()
    rng = np.random.default_rng(0)
    cues = np.stack((rng.gamma(1, 4, 500), rng.gamma(1, 3, 500)), 1)
    errors = cues.sum(1) * rng.uniform(0.3, 1.5, 500)
    calibration = fit_calibrator(cues, errors, ("variance", "init_distance")).to_dict() if calibrated else None
    return save_weights(model, tmp_path / f"model_{calibrated}.pt", calibration=calibration)


def test_cli_writes_confidence_and_masks_with_a_calibrated_checkpoint(tmp_path, photo, capsys):
    save_image(tmp_path / "a.png", photo[:48, :56])
    save_image(tmp_path / "b.png", photo[4:52, 2:58])
    args = ["--source", str(tmp_path / "a.png"), "--target", str(tmp_path / "b.png"), "--samples", "2", "--steps", "2"]
    out = tmp_path / "out"
    assert main([*args, "--checkpoint", str(_checkpoint(tmp_path, True)), "--out", str(out), "--no-viz",
                 "--flow-format", "png", "--min-confidence", "0.3"]) == 0
    confidence = np.load(out / "confidence.npy")
    assert confidence.shape == (48, 56) and 0 <= confidence.min() and confidence.max() <= 1
    np.testing.assert_array_equal(read_flow_file(out / "flow.png")["valid"], confidence >= 0.3)

    plain = str(_checkpoint(tmp_path, False))
    assert main([*args, "--checkpoint", plain, "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "confidence.npy").exists()
    capsys.readouterr()
    assert main([*args, "--checkpoint", plain, "--out", str(tmp_path / "p2"), "--min-confidence", "0.5"]) == 2
    assert "no confidence calibration" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--checkpoint", plain, "--out", str(tmp_path / "p3"), "--min-confidence", "1.5"])
    assert exit_info.value.code == 2
    assert "--min-confidence must be in [0, 1]" in capsys.readouterr().err
