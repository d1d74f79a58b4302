"""Sparse matches and geometry from dense results: top-k order, draws by confidence, homography, fundamental."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from diffmatch.confidence.metrics import corner_error, homography_accuracy, homography_from_flow
from diffmatch.geometry import homography_to_flow
from diffmatch.geometry.estimation import sample_matches
from diffmatch.matcher import DiffMatcher
from diffmatch.result import MatchResult

H_TRUE = np.array([[0.95, 0.04, 6.0], [-0.03, 1.02, -4.0], [2e-4, -1e-4, 1.0]])


def _result(flow: torch.Tensor, confidence: torch.Tensor | None = None) -> MatchResult:
    result = MatchResult.from_samples(flow[:, None])
    result.confidence = confidence
    return result


@pytest.mark.parametrize("method", ["magsac", "ransac"])
@pytest.mark.parametrize("mode", ["top_k", "sample", "spread"])
def test_estimate_homography_recovers_a_known_homography(method, mode):
    size = (96, 128)
    flow = homography_to_flow(torch.from_numpy(H_TRUE)[None].float(), size)
    confidence = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(0))
    result = _result(flow, confidence)
    estimate = DiffMatcher.estimate_homography(
        result, 500, mode=mode, method=method, source_size=size, generator=torch.Generator().manual_seed(1)
    )
    assert corner_error(estimate.matrix, H_TRUE, size) < 0.1
    assert estimate.inliers.mean() > 0.95 and estimate.target_xy.shape == (len(estimate.inliers), 2)


def test_confident_matches_survive_outliers():
    size = (80, 80)
    flow = homography_to_flow(torch.from_numpy(H_TRUE)[None].float(), size)
    noise = torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(0)) * 20
    wrong = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(1)) < 0.7  # 70 % outliers
    confidence = torch.where(wrong, 0.05, 0.9)
    result = _result(flow + noise * wrong, confidence)
    estimate = DiffMatcher.estimate_homography(result, 300, min_confidence=0.5, source_size=size)
    assert corner_error(estimate.matrix, H_TRUE, size) < 0.1


def test_top_k_is_ordered_and_sampling_follows_confidence():
    size = (20, 30)
    confidence = torch.linspace(0, 1, 600).view(1, 1, *size)
    result = _result(torch.zeros(1, 2, *size), confidence)
    tgt, src, conf = sample_matches(result, 50, mode="top_k")
    assert np.all(np.diff(conf) <= 0) and conf[0] == pytest.approx(1.0)
    np.testing.assert_allclose(tgt, src)  # zero flow
    assert tgt[0].tolist() == [29.0, 19.0]  # the last pixel is the most confident
    _, _, drawn = sample_matches(result, 200, generator=torch.Generator().manual_seed(0))
    assert drawn.mean() > 0.6 and (drawn > 0).all()  # ∝ confidence: mean 2/3 for a uniform ramp
    _, _, kept = sample_matches(result, 1000, mode="top_k", min_confidence=0.75)
    assert kept.min() >= 0.75 and len(kept) == int((confidence >= 0.75).sum())


def test_top_k_equals_a_full_stable_sort_with_ties_in_the_generators_order():
    size = (40, 50)
    levels = torch.randint(0, 6, (1, 1, *size), generator=torch.Generator().manual_seed(0)) / 5  # many ties
    result = _result(torch.zeros(1, 2, *size), levels)
    for num in (1, 37, 500, size[0] * size[1]):
        tgt, _, conf = sample_matches(result, num, torch.Generator().manual_seed(3), mode="top_k")
        shuffle = torch.randperm(size[0] * size[1], generator=torch.Generator().manual_seed(3))
        flat = levels.flatten()
        order = shuffle[torch.argsort(flat[shuffle], descending=True, stable=True)][:num]
        np.testing.assert_array_equal(conf, flat[order].numpy())
        np.testing.assert_array_equal(tgt[:, 0] + tgt[:, 1] * size[1], order.numpy())


def test_spread_takes_each_cells_most_confident_match_in_order():
    size = (40, 40)
    confidence = torch.zeros(1, 1, *size)
    confidence[0, 0, :10, :10] = 0.9 + torch.rand(10, 10, generator=torch.Generator().manual_seed(0)) * 0.1  # a sure corner
    confidence[0, 0, 10:, :] = torch.linspace(0.1, 0.5, 30 * 40).view(30, 40)
    result = _result(torch.zeros(1, 2, *size), confidence)
    top, _, _ = sample_matches(result, 16, mode="top_k")
    assert (top < 10).all()  # top-K: all in the sure corner
    tgt, _, conf = sample_matches(result, 16, mode="spread")  # 16 cells of 10x10 px
    cells = {(int(x) // 10, int(y) // 10) for x, y in tgt}
    assert len(cells) == len(tgt) == 16 and np.all(np.diff(conf) <= 0)
    best = confidence[0, 0].unfold(0, 10, 10).unfold(1, 10, 10).amax((-1, -2)).flatten().sort(descending=True).values
    np.testing.assert_allclose(conf, best.numpy())


def test_sample_matches_without_confidence_ranks_by_variance_and_checks_args():
    samples = torch.zeros(1, 2, 2, 10, 10)
    samples[0, 1, :, :5] = 4.0  # disagreeing hypotheses in the top half
    result = MatchResult.from_samples(samples)
    tgt, _, conf = sample_matches(result, 50, mode="top_k", source_size=(100, 100))
    assert (tgt[:, 1] >= 5).all() and conf.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mode"):
        sample_matches(result, 5, mode="best")
    with pytest.raises(ValueError, match="at least 4"):
        DiffMatcher.estimate_homography(result, 3)


def test_estimate_fundamental_satisfies_the_epipolar_constraint():
    h, w, f = 60, 80, 70.0
    k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = 4.0 + np.sin(xs / 9.0) + np.cos(ys / 7.0)  # a bumpy scene: no single homography
    rays = np.linalg.inv(k) @ np.stack((xs.ravel(), ys.ravel(), np.ones(h * w)))
    angle = 0.05
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    proj = k @ (rot @ (rays * depth.ravel()) + np.array([[0.4], [0.1], [0.0]]))
    src = (proj[:2] / proj[2]).T.reshape(h, w, 2)
    flow = torch.from_numpy(src - np.stack((xs, ys), -1)).permute(2, 0, 1)[None].float()
    estimate = DiffMatcher.estimate_fundamental(_result(flow), 800, method="ransac", threshold=0.5)
    ones = np.ones((len(estimate.target_xy), 1))
    xt, xsrc = np.hstack((estimate.target_xy, ones)), np.hstack((estimate.source_xy, ones))
    lines = xt @ estimate.matrix.T  # epipolar lines in the source
    distance = np.abs((xsrc * lines).sum(1)) / np.linalg.norm(lines[:, :2], axis=1)
    assert np.median(distance) < 0.1


def test_homography_from_flow_and_accuracy_summary():
    size = (50, 70)
    flow = homography_to_flow(torch.from_numpy(H_TRUE)[None].float(), size)[0].permute(1, 2, 0).numpy()
    matrix, rms = homography_from_flow(flow)
    assert rms < 1e-3 and corner_error(matrix, H_TRUE, size) < 1e-2
    assert corner_error(None, H_TRUE, size) == float("inf")
    summary = homography_accuracy([0.5, 2.0, 4.0, float("inf")])
    assert summary["acc@1"] == 0.25 and summary["acc@3"] == 0.5 and summary["acc@5"] == 0.75
    assert summary["failed"] == 1 and summary["mean"] == pytest.approx((0.5 + 2 + 4 + 100) / 4)


def _two_view_matches(seed: int = 0):
    """Points at random depths seen by two cameras; target → source pose ``(R, t)``."""
    import cv2

    rng = np.random.default_rng(seed)
    k_t = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    k_s = np.array([[280.0, 0, 150], [0, 280.0, 125], [0, 0, 1]])
    rotation, _ = cv2.Rodrigues(np.array([0.05, -0.2, 0.03]))
    translation = np.array([1.0, 0.1, 0.2])
    points = np.stack([rng.uniform(-3, 3, 400), rng.uniform(-2, 2, 400), rng.uniform(5, 12, 400)], 1)
    tgt = points @ k_t.T
    tgt = tgt[:, :2] / tgt[:, 2:]
    src = (points @ rotation.T + translation) @ k_s.T
    src = src[:, :2] / src[:, 2:]
    return k_s, k_t, rotation, translation, tgt, src


def test_estimate_relative_pose_from_sparse_matches_and_its_errors():
    from diffmatch.geometry.estimation import estimate_relative_pose
    from diffmatch.metrics import pose_error
    from diffmatch.result import SparseMatches

    k_s, k_t, rotation, translation, tgt, src = _two_view_matches()
    conf = np.linspace(1.0, 0.1, len(tgt)).astype(np.float32)
    # Outliers among the least confident matches.
    src = src.copy()
    src[-60:] += np.random.default_rng(1).uniform(-40, 40, (60, 2))
    result = MatchResult.from_samples(torch.zeros(1, 1, 2, 240, 320))
    result.matches = [SparseMatches(tgt.astype(np.float32), src.astype(np.float32), conf)]
    pose = estimate_relative_pose(result, k_s, k_t, threshold=1.0)
    errors = pose_error(pose.rotation, pose.translation, rotation, translation)
    assert max(errors) < 0.5
    assert pose.inliers[:300].mean() > 0.95 and pose.inliers[-60:].mean() < 0.2
    assert np.isclose(np.linalg.norm(pose.translation), 1.0)
    # Most confident first, at most num.
    assert len(estimate_relative_pose(result, k_s, k_t, num=50, threshold=1.0).target_xy) == 50
    with pytest.raises(ValueError, match="at least 5 matches"):
        estimate_relative_pose(result, k_s, k_t, min_confidence=0.9999)
    with pytest.raises(ValueError, match="K_source"):
        estimate_relative_pose(result, np.zeros((3, 3)), k_t)
    # With a generator, the matches reach RANSAC (whose own seed is fixed) in an order of its draw:
    # seeds give different orders, hence different RANSAC draws; one seed repeats.
    given = [
        estimate_relative_pose(result, k_s, k_t, threshold=1.0, generator=torch.Generator().manual_seed(seed))
        for seed in (0, 0, 1)
    ]
    assert np.array_equal(given[0].target_xy, given[1].target_xy)
    assert not np.array_equal(given[0].target_xy, given[2].target_xy)
    most_confident_first = estimate_relative_pose(result, k_s, k_t, threshold=1.0).target_xy
    assert not np.array_equal(given[0].target_xy, most_confident_first)
    assert np.array_equal(np.sort(given[0].target_xy, 0), np.sort(most_confident_first, 0))
    assert all(max(pose_error(p.rotation, p.translation, rotation, translation)) < 0.5 for p in given)


def _two_plane_flow(h: int = 120, w: int = 160):
    """An exact dense flow of a scene of two fronto-parallel planes, with its cameras."""
    k = np.array([[150.0, 0, w / 2], [0, 150.0, h / 2], [0, 0, 1]])
    rotation, _ = cv2.Rodrigues(np.array([0.02, -0.1, 0.01]))
    translation = np.array([0.6, 0.05, 0.1])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = np.where(xs < w * 0.6, 4.0, 9.0)
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(k).T
    points = rays * depth[..., None] @ rotation.T + translation
    projected = points @ k.T
    flow = projected[..., :2] / projected[..., 2:] - np.stack([xs, ys], -1)
    result = MatchResult.from_samples(torch.from_numpy(flow).permute(2, 0, 1).float()[None, None])
    return result, k, rotation, translation


def test_relative_pose_trials_keep_the_best_supported_pose_and_are_seeded():
    from diffmatch.geometry.estimation import estimate_relative_pose
    from diffmatch.geometry.relative_pose import sampson_distances
    from diffmatch.metrics import pose_error

    result, k, rotation, translation = _two_plane_flow()
    size = tuple(result.flow.shape[-2:])
    poses = [
        estimate_relative_pose(result, k, k, num=800, trials=4, source_size=size, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    assert np.allclose(poses[0].essential, poses[1].essential)  # same generator, same pose
    assert max(pose_error(poses[0].rotation, poses[0].translation, rotation, translation)) < 3.0
    # The kept pose is supported: its essential matrix fits the exact matches (Sampson ~ 0), while
    # a wrong one (the true rotation with a translation turned by 90°) does not.
    norm = lambda p: cv2.undistortPoints(p.reshape(-1, 1, 2).astype(np.float64), k, None).reshape(-1, 2)  # noqa: E731
    tgt, src = norm(poses[0].target_xy), norm(poses[0].source_xy)
    assert np.median(sampson_distances(poses[0].essential, tgt, src)) < (0.1 / 150) ** 2
    skew = lambda v: np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])  # noqa: E731
    wrong = skew(np.cross(translation, [0, 0, 1.0])) @ rotation
    assert np.median(sampson_distances(wrong, tgt, src)) > (5 / 150) ** 2
    with pytest.raises(ValueError, match="trials"):
        estimate_relative_pose(result, k, k, trials=0)
