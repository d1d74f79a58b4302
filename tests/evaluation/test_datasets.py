"""``--protocol paper`` / ``240``: HPatches at the original resolution and ETH3D's scene-averaged AEPE."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from diffmatch.cli.evaluate import main
from diffmatch.errors import InputError
from diffmatch.evaluation.datasets import build_subsets, default_protocol
from diffmatch.evaluation.report import summarize_records
from diffmatch.evaluation.runner import PairRecord, run_evaluation
from diffmatch.metrics import pair_metrics
from diffmatch.result import MatchResult

# Image 1 (the source) is 40 x 48, image 2 (the target) 30 x 36: the paper's protocol resizes the source.
SOURCE_SIZE, TARGET_SIZE = (40, 48), (30, 36)
H_1_2 = np.array([[0.74, 0.03, 1.5], [-0.02, 0.76, 0.8], [1e-4, -2e-4, 1.0]])  # image-1 px -> image-2 px


@pytest.fixture
def hpatches(tmp_path: Path) -> Path:
    root = tmp_path / "hpatches-sequences-release"
    seq = root / "v_fixture"
    seq.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(seq / "1.ppm"), rng.integers(0, 255, (*SOURCE_SIZE, 3), dtype=np.uint8))
    for k in range(2, 7):
        cv2.imwrite(str(seq / f"{k}.ppm"), rng.integers(0, 255, (*TARGET_SIZE, 3), dtype=np.uint8))
        np.savetxt(seq / f"H_1_{k}", H_1_2)
    return root


def expected_flow() -> np.ndarray:
    """The true flow at the target's size into the source resized to it, computed here from H_1_2 alone."""
    ht, wt = TARGET_SIZE
    ys, xs = np.mgrid[0:ht, 0:wt].astype(np.float64)
    p = np.linalg.inv(H_1_2) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    sx, sy = p[0] / p[2], p[1] / p[2]  # original source pixels
    rx = (sx + 0.5) * wt / SOURCE_SIZE[1] - 0.5  # pixel centres kept by the resize
    ry = (sy + 0.5) * ht / SOURCE_SIZE[0] - 0.5
    return np.stack([rx.reshape(ht, wt) - xs, ry.reshape(ht, wt) - ys])


class Oracle:
    """A matcher returning the known flow plus a constant offset (px)."""

    def __init__(self, offset: tuple[float, float] = (0.0, 0.0)) -> None:
        self.name = "oracle"
        self.offset = torch.tensor(offset, dtype=torch.float32).view(2, 1, 1)

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        assert source.shape[-2:] == target.shape[-2:] == TARGET_SIZE  # the source came resized
        flow = torch.from_numpy(expected_flow()).float() + self.offset
        return MatchResult.from_samples(flow[None, None])


def _aepe(hpatches: Path, offset: tuple[float, float]) -> tuple[float, int]:
    subsets = build_subsets("hpatches", hpatches, limit=1)[:1]
    records = run_evaluation([Oracle(offset)], subsets, torch.device("cpu"), progress=False)
    assert records[0].error is None, records[0].error
    return records[0].metrics.aepe, records[0].metrics.num_pixels


def test_hpatches_original_resolution_perfect_flow_scores_zero(hpatches: Path) -> None:
    aepe, pixels = _aepe(hpatches, (0.0, 0.0))
    assert pixels > 0.5 * TARGET_SIZE[0] * TARGET_SIZE[1]
    assert aepe == pytest.approx(0.0, abs=1e-4)


def test_hpatches_original_resolution_constant_error_scores_it(hpatches: Path) -> None:
    aepe, _ = _aepe(hpatches, (3.0, -4.0))
    assert aepe == pytest.approx(5.0, abs=1e-4)


def test_hpatches_items_under_each_protocol(hpatches: Path) -> None:
    paper = build_subsets("hpatches", hpatches)[0].dataset[0]
    assert paper["source"].shape[-2:] == paper["target"].shape[-2:] == TARGET_SIZE
    assert paper["flow"].shape == (2, *TARGET_SIZE)
    np.testing.assert_allclose(paper["flow"].numpy(), expected_flow(), atol=1e-4)
    old = build_subsets("hpatches", hpatches, protocol="240")[0].dataset[0]
    assert old["source"].shape[-2:] == old["target"].shape[-2:] == (240, 240)


def test_protocol_defaults_and_errors() -> None:
    assert default_protocol("hpatches", None) == "paper" and default_protocol("eth3d", None) == "paper"
    assert default_protocol("eth3d", "240") == "240" and default_protocol("synthetic", None) is None
    with pytest.raises(InputError, match="applies to hpatches and eth3d"):
        default_protocol("synthetic", "paper")
    with pytest.raises(InputError, match="unknown protocol"):
        default_protocol("hpatches", "480")


def _record(scene: str, rate: int, aepe: float, n: int = 4) -> PairRecord:
    errors = np.full(n, aepe)  # every pixel off by aepe: the image's AEPE is aepe
    return PairRecord("m", f"{scene}/rate_{rate}/{n:04d}", {"rate": f"rate_{rate}"}, pair_metrics(errors))


def test_eth3d_aepe_is_the_mean_over_scenes_of_scene_means() -> None:
    records = [
        _record("lakeside", 3, 1.0),
        _record("lakeside", 3, 3.0),  # lakeside at rate 3: (1 + 3) / 2 = 2
        _record("tunnel", 3, 8.0),  # tunnel at rate 3: 8
        _record("lakeside", 5, 2.0),
        _record("tunnel", 5, 4.0, n=10),
        _record("tunnel", 5, 6.0),  # tunnel at rate 5: 5, whatever the pixel counts
        PairRecord("m", "tunnel/rate_5/9999", {"rate": "rate_5"}, error="failed"),
    ]
    paper = summarize_records(records, "paper")["m"]
    assert paper["rate_3"]["aepe"] == pytest.approx(5.0)  # (2 + 8) / 2, not (1 + 3 + 8) / 3
    assert paper["rate_3"]["aepe_per_image"] == pytest.approx(4.0)
    assert paper["rate_5"]["aepe"] == pytest.approx(3.5)  # (2 + 5) / 2
    assert paper["all"]["aepe"] == pytest.approx(4.25)  # mean over rates: (5 + 3.5) / 2
    assert paper["rate_5"]["num_failed"] == 1
    per_image = summarize_records(records, "240")["m"]
    assert per_image["rate_3"]["aepe"] == pytest.approx(4.0) and "aepe_per_image" not in per_image["rate_3"]


def test_cli_names_the_protocol_and_the_paper_samples(hpatches: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert main(["--dataset", "hpatches", "--root", str(hpatches), "--methods", "dis", "--out", str(out)]) == 0
    assert "protocol: paper" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "paper" and summary["samples"] == 3
    assert main(["--dataset", "hpatches", "--root", str(hpatches), "--methods", "dis", "--out", str(out),
                 "--protocol", "240", "--limit", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["protocol"] == "240"
    assert main(["--dataset", "synthetic", "--methods", "dis", "--out", str(out), "--protocol", "paper"]) == 2
    assert "applies to hpatches and eth3d" in capsys.readouterr().err
