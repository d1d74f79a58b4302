"""``scripts/diagnose_scenes.py``'s two diagnostics, on flows with a known answer.

Flow convention: ``target(x) ≈ source(x + flow(x))``, in pixels, channel 0 = x.
"""

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from diffmatch.data import SceneBenchmark, bundled_photos
from diffmatch.evaluation.runner import PoseOptions

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("diagnose_scenes", ROOT / "scripts" / "diagnose_scenes.py")
diagnose = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diagnose)


def test_fill_interpolates_unconfident_pixels_from_confident_ones():
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    affine = torch.stack([0.1 * xs - 0.05 * ys + 3.0, 0.02 * xs + 0.08 * ys - 2.0])  # linear: interpolation is exact
    flow = affine.clone()
    confidence = torch.ones(48, 64)
    flow[:, 10:30, 20:40] += 25.0  # a wrong patch the confidence flags
    confidence[10:30, 20:40] = 0.05
    filled = diagnose._fill(diagnose._flow_result(flow, confidence), num=500)
    assert torch.allclose(filled, affine, atol=1e-3)
    assert diagnose._epe(filled, {"flow": affine, "mask": torch.ones(48, 64)}) < 1e-3


def test_truth_pose_on_all_pixels_is_exact_and_on_none_fails():
    item = SceneBenchmark(bundled_photos("val"), "wide", (96, 128), 1, 0)[0]
    valid = item["mask"].bool()
    assert diagnose._truth_pose_on(item, valid, PoseOptions(num_matches=2000, trials=1)) < 0.5
    assert math.isinf(diagnose._truth_pose_on(item, torch.zeros_like(valid), PoseOptions(trials=1)))
    assert np.isfinite(diagnose._epe(item["flow"], item)) and diagnose._epe(item["flow"], item) == 0.0
