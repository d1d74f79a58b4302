"""Sanity checks of the bundled default model (the cascade ``diffmatch/assets/diffmatch_xfeat_stage2.pt``), slow-marked.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, px. The thresholds are the
measured behaviour with a margin (checkpoints/README.md, "Its numbers"), tighter than issue #15's
goals, so that a regression fails. The goals are checked on what users get, the refined flow
(``DiffMatcher``'s default); the model's own flow has its own regression test.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from diffmatch.data.benchmark import SyntheticBenchmark
from diffmatch.data.photos import bundled_photos
from diffmatch.data.scenes import SCENE_LEVELS, SceneBenchmark
from diffmatch.evaluation.methods import CheckpointMethod
from diffmatch.evaluation.runner import evaluate_pair
from diffmatch.evaluation.sanity import sanity_errors
from diffmatch.matcher import DiffMatcher
from diffmatch.metrics import ause

pytestmark = pytest.mark.slow
SIZE = 384


@pytest.fixture(scope="module")
def matcher() -> DiffMatcher:
    return DiffMatcher.from_checkpoint(device="cpu")


def _photo(name: str) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(bundled_photos("val") / name)), cv2.COLOR_BGR2RGB)
    side = min(image.shape[:2])
    return cv2.resize(image[:side, :side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def _sanity(matcher: DiffMatcher, refine: bool) -> dict[str, float]:
    method = CheckpointMethod(matcher, 3, None, 0, refine=refine)
    return sanity_errors(method, _photo("coffee.jpg"))


@pytest.fixture(scope="module")
def errors(matcher: DiffMatcher) -> dict[str, float]:
    """Sanity-pair errors on a 384² crop of a held-out photo (3 hypotheses, seed 0, refined), px."""
    return _sanity(matcher, refine=True)


def test_goal_identical_images_under_half_a_pixel(errors):
    assert errors["identical"] < 0.1  # goal 0.5; measured 0.0002 px (previous weights 0.003; single-scale refinement 0.07)


def test_goal_20_px_shift_under_1_5_px(errors):
    assert errors["shift20"] < 0.15  # goal 1.5; measured 0.04 px (previous weights 0.04; 0.21 single-scale)


def test_goal_10_degrees_and_1_1_zoom_under_3_px(errors):
    assert errors["rot10_zoom1.1"] < 0.9  # goal 3; measured 0.47 px (previous weights 0.59; 1.49 single-scale)


def test_the_unrefined_model_alone_stays_near_a_pixel(matcher):
    errors = _sanity(matcher, refine=False)  # measured 0.03 / 1.00 / 1.66 px (previous weights 0.94 / 1.22 / 2.30)
    assert errors["identical"] < 0.5 and errors["shift20"] < 1.4 and errors["rot10_zoom1.1"] < 2.3


def test_unet_beats_its_own_init_flow_and_the_refinement_beats_the_unet_at_every_level(matcher):
    for level in ("easy", "medium", "hard"):
        bench = SyntheticBenchmark(bundled_photos("val"), size=(240, 240), level=level, num_pairs=6)
        refined, unet, init = [], [], []
        for i in range(len(bench)):
            item = bench[i]
            mask = item["mask"]
            for out, refine in ((refined, True), (unet, False)):
                gen = torch.Generator().manual_seed(i)
                result = matcher.match(item["source"], item["target"], generator=gen, refine=refine)
                out.append((result.flow[0] - item["flow"]).norm(dim=0)[mask].mean().item())
            init.append((result.init_flow[0] - item["flow"]).norm(dim=0)[mask].mean().item())
        assert np.mean(refined) < np.mean(unet) < np.mean(init), (level, np.mean(refined), np.mean(unet), np.mean(init))


def test_the_confidence_ranks_errors_better_than_the_variance_on_clean_pairs(matcher):
    """AUSE-EPE by confidence against by variance, per image, on 5 held-out pairs per level.

    Measured 0.178 / 0.208 / 0.152 against 0.172 / 0.263 / 0.190 (easy / medium / hard) with the
    calibration's log offsets; the calibration before them, ``log(1 + x)``, measured 0.230 / 0.228 /
    0.181 against 0.172 / 0.245 / 0.194, and fails (docs/confidence.md, "Log offsets").
    """
    by_confidence, by_variance = [], []
    for level in ("easy", "medium", "hard"):
        bench = SyntheticBenchmark(bundled_photos("val"), size=(240, 240), level=level, num_pairs=5)
        for i in range(len(bench)):
            item = bench[i]
            mask = item["mask"].numpy()
            result = matcher.match(item["source"], item["target"], generator=torch.Generator().manual_seed(i))
            epe = (result.flow[0] - item["flow"]).norm(dim=0).numpy()[mask]
            by_confidence.append(ause(epe, 1.0 - result.confidence[0, 0].numpy()[mask]))
            by_variance.append(ause(epe, result.uncertainty[0, 0].numpy()[mask]))
    assert np.mean(by_confidence) < 0.95 * np.mean(by_variance), (np.mean(by_confidence), np.mean(by_variance))


# Per level: (mean AEPE, median pose error) ceilings, px and degrees; measured with the weights fine-tuned on
# scenes (checkpoints/README.md), two rounds of the layer search and the pose estimator that also offers
# the dominant plane's pose (2026-12-05) at 1 thread: 0.41 / 1.28 / 36.9 px and 0.3 / 0.5 / 0.1 degrees,
# the median over the five seeded estimates of each pair. The wide level's first pair is one where the
# model matches a layer wrongly (about 83 px; its pose swings 0.4–2.9° between seeds); its second one
# is dominated by one plane, and the essential matrix alone put it 85° off in every seed (the wide
# median was then 2.3°, over the ceiling; the previous estimator measured 0.4 / 0.6 / 2.3 degrees). The
# single-scale refinement before issue #27 fails the stereo and medium ceilings; the two-pass matching
# before the rotation search measured 2.06 px at medium (its third pair is turned by 40°).
SCENE_PINS = {"stereo": (0.55, 1.5), "medium": (1.8, 1.5), "wide": (45.0, 1.0)}


@pytest.fixture(scope="module")
def scene_metrics(matcher: DiffMatcher) -> dict[str, tuple[float, float]]:
    """Mean AEPE (px) and median pose error (degrees, over the five seeded estimates of each pair, as
    ``diffmatch evaluate`` repeats them) per level on the scenes benchmark's first 3 pairs.

    The default as users get it (two passes, refined, calibrated; 3 hypotheses, each pair seeded from
    0 and its pixels), scored as ``diffmatch evaluate --dataset scenes`` scores each pair.
    """
    method = CheckpointMethod(matcher, 3, None, 0)
    out = {}
    for level in SCENE_LEVELS:
        bench = SceneBenchmark(bundled_photos("val"), level=level, num_pairs=3)
        metrics = [evaluate_pair(method, bench[i], torch.device("cpu")) for i in range(len(bench))]
        poses = [error for m in metrics for error in m.pose_repeats]  # every pair's five seeded estimates
        out[level] = (float(np.mean([m.aepe for m in metrics])), float(np.median(poses)))
    return out


@pytest.mark.parametrize("level", list(SCENE_LEVELS))
def test_scene_numbers_are_pinned(scene_metrics, level):
    aepe, pose = scene_metrics[level]
    max_aepe, max_pose = SCENE_PINS[level]
    assert aepe < max_aepe and pose < max_pose, (level, aepe, pose)


@pytest.mark.parametrize("name", ["chelsea.jpg", "coffee.jpg"])
def test_a_large_in_plane_rotation_is_found_by_the_rotation_search(matcher, name):
    """A held-out photo turned by 55°: the model alone does not follow it (measured with the previous weights: 125 / 106 px
    AEPE), the rotation search of two-pass matching does (0.013 / 0.023 px), and the layer search,
    the default, leaves it so (its veto; without the veto it took wrong planes: 0.46 / 1.47 px)."""
    from diffmatch.geometry import homography_to_flow, warp
    from diffmatch.two_pass import TwoPassConfig, rotation_homography

    source = torch.from_numpy(_photo(name)).permute(2, 0, 1)[None].float() / 255
    truth = homography_to_flow(rotation_homography(55.0, (SIZE, SIZE), (SIZE, SIZE)), (SIZE, SIZE)).float()
    target, valid = warp(source, truth)
    aepe = {}
    for label, passes in (("searched", None), ("plain", TwoPassConfig(rotations=()))):
        result = matcher.match(source, target, num_samples=3, generator=torch.Generator().manual_seed(0), two_pass=passes)
        aepe[label] = float((result.flow - truth).norm(dim=1)[valid].mean())
    assert aepe["plain"] > 50.0 and aepe["searched"] < 0.2, aepe
