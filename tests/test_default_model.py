"""Sanity checks of the bundled default model (``checkpoints/diffmatch_xfeat.pt``), slow-marked.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, px. The thresholds are the
measured behaviour with a margin (checkpoints/README.md, "Where it falls short"), so that a
regression fails; the goals it does not reach yet are strict ``xfail`` tests, which fail once it
reaches them so that the README gets updated.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from diffmatch.data.benchmark import SyntheticBenchmark
from diffmatch.data.photos import bundled_photos
from diffmatch.evaluation.methods import CheckpointMethod
from diffmatch.evaluation.sanity import sanity_errors
from diffmatch.matcher import DiffMatcher

pytestmark = pytest.mark.slow
SIZE = 384


@pytest.fixture(scope="module")
def matcher() -> DiffMatcher:
    return DiffMatcher.from_checkpoint(device="cpu")


def _photo(name: str) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(bundled_photos("val") / name)), cv2.COLOR_BGR2RGB)
    side = min(image.shape[:2])
    return cv2.resize(image[:side, :side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def errors(matcher: DiffMatcher) -> dict[str, float]:
    """Sanity-pair errors on a 384² crop of a held-out photo (3 hypotheses, seed 0), px."""
    method = CheckpointMethod(matcher, num_samples=3, num_steps=None, generator=torch.Generator().manual_seed(0))
    return sanity_errors(method, _photo("coffee.jpg"))


def test_identical_images_give_a_small_flow(errors):
    assert errors["identical"] < 1.0  # measured 0.61 px


@pytest.mark.xfail(strict=True, reason="identical images give ~0.6 px mean flow at 384², more on larger images (checkpoints/README.md)")
def test_goal_identical_images_under_half_a_pixel(errors):
    assert errors["identical"] < 0.5


def test_goal_20_px_shift_under_1_5_px(errors):
    assert errors["shift20"] < 1.5  # measured 1.05 px


def test_goal_10_degrees_and_1_1_zoom_under_3_px(errors):
    assert errors["rot10_zoom1.1"] < 3.0  # measured 2.51 px


def test_unet_beats_its_own_init_flow_at_every_level(matcher):
    for level in ("easy", "medium", "hard"):
        bench = SyntheticBenchmark(bundled_photos("val"), size=(240, 240), level=level, num_pairs=6)
        final, init = [], []
        for i in range(len(bench)):
            item = bench[i]
            result = matcher.match(item["source"], item["target"], generator=torch.Generator().manual_seed(i))
            mask = item["mask"]
            final.append((result.flow[0] - item["flow"]).norm(dim=0)[mask].mean().item())
            init.append((result.init_flow[0] - item["flow"]).norm(dim=0)[mask].mean().item())
        assert np.mean(final) < np.mean(init), (level, np.mean(final), np.mean(init))
