"""Sanity pairs: exact ground truth, masks, and a matcher scored on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmatch.data.photos import bundled_photos
from diffmatch.errors import InputError
from diffmatch.evaluation.baselines import OPENCV_METHODS
from diffmatch.evaluation.sanity import SANITY_CASES, sanity_errors, sanity_pairs
from diffmatch.geometry import warp
from diffmatch.io import load_image
from diffmatch.result import MatchResult


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_image(bundled_photos("val") / "coffee.jpg")[:240, :320].copy()


def test_ground_truth_reproduces_each_target(photo):
    pairs = sanity_pairs(photo)
    assert [p.name for p in pairs] == list(SANITY_CASES)
    for pair in pairs:
        assert pair.source.shape == pair.target.shape == (1, 3, 240, 320)
        assert pair.flow.shape == (1, 2, 240, 320) and pair.mask.shape == (1, 240, 320)
        assert pair.mask.float().mean() > 0.3
        warped, _ = warp(pair.source, pair.flow)
        error = (warped - pair.target).abs().amax(1)[pair.mask]
        assert error.max() < 2.5 / 255  # both sides bilinear; uint8 rounding of the target only
        # The check has teeth: one pixel off does not reproduce the target.
        shifted, _ = warp(pair.source, pair.flow + 1.0)
        assert (shifted - pair.target).abs().amax(1)[pair.mask].mean() > 5 / 255
    identical, shift, rotation = pairs
    assert identical.flow.abs().max() == 0 and identical.mask.all()
    assert torch.allclose(shift.flow[:, 0], torch.full_like(shift.flow[:, 0], 20.0))
    assert not shift.mask[0, :, -40:].any() and shift.mask[0, :, :-40].all()
    # 10° and 1.1x zoom about the centre: the centre stays, a corner moves by tens of pixels.
    assert rotation.flow[0, :, 120, 160].abs().max() < 0.6
    assert rotation.flow[0, :, 0, 0].norm() > 10


def test_scores_are_the_errors_of_the_returned_flow(photo):
    class Constant:
        name = "constant"

        def __call__(self, source, target):
            return MatchResult.from_samples(torch.full((1, 1, 2, *target.shape[-2:]), 3.0))

    errors = sanity_errors(Constant(), photo)
    assert errors["identical"] == pytest.approx(3.0 * 2**0.5, rel=1e-5)
    assert errors["shift20"] == pytest.approx(float(np.hypot(17.0, 3.0)), rel=1e-5)
    # A real matcher recovers the shift (DIS is exact on it) and scores zero on identical images.
    dis = sanity_errors(OPENCV_METHODS["dis"](), photo)
    assert dis["identical"] < 0.05 and dis["shift20"] < 0.5


def test_bad_image_is_refused():
    with pytest.raises(InputError, match="uint8"):
        sanity_pairs(np.zeros((32, 32, 3), np.uint8))
