"""The calibration's validation pairs: both benchmarks' kinds, their levels in turn, a share corrupted."""

from __future__ import annotations

import pytest
import torch

from diffmatch.confidence.fitting import calibration_pairs
from diffmatch.data import bundled_photos
from diffmatch.errors import InputError

PHOTOS = bundled_photos("train")


def test_calibration_pairs_mix_scenes_and_synthetic_levels():
    items = calibration_pairs(PHOTOS, 6, 64, corrupted=0.5, seed=1, scenes=1 / 3, scene_size=(48, 64))
    assert [item["kind"] for item in items] == ["synthetic", "synthetic", "scenes"] * 2
    assert [item["name"].split("/")[0] for item in items if item["kind"] == "scenes"] == ["stereo", "medium"]
    assert [item["corruption"] != "clean" for item in items] == [False, True] * 3
    for item in items:
        size = (48, 64) if item["kind"] == "scenes" else (64, 64)
        assert item["source"].shape == item["target"].shape == (3, *size)
        assert item["flow"].shape == (2, *size) and item["mask"].shape == size and item["mask"].any()
        assert torch.isfinite(item["flow"][:, item["mask"].bool()]).all()
    plain = calibration_pairs(PHOTOS, 3, 64, corrupted=0.0, seed=1)
    assert [item["kind"] for item in plain] == ["synthetic"] * 3


def test_calibration_pairs_refuse_a_share_outside_zero_one():
    with pytest.raises(InputError, match="--scenes is a share"):
        calibration_pairs(PHOTOS, 4, 64, scenes=1.5)
