"""Sparse matches from a dense result, and two-view geometry estimated from them (OpenCV).

Flow convention: flow on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels, channel
0 = x; tensors ``(B, 2, H, W)``. Pixel ``(x, y)`` is column ``x``, row ``y``; a match pairs target
pixel ``(x, y)`` with source point ``(x, y) + flow(x, y)``.

A homography ``H`` (3×3) maps target pixels to source pixels, ``source ~ H @ [x, y, 1]``, like the
flow (:func:`diffmatch.geometry.homography_to_flow` is its inverse operation). A fundamental matrix
``F`` satisfies ``[xs, ys, 1] @ F @ [xt, yt, 1] = 0`` for a target point and its source match. A
relative pose ``(R, t)`` maps target-camera coordinates to source-camera coordinates,
``X_source = R @ X_target + t``, like the flow it points from the target into the source; its
essential matrix ``E = [t]× R`` satisfies ``ns @ E @ nt = 0`` for normalised points ``n = K⁻¹ [x, y, 1]``.

A result from a sparse matcher (``result.matches``, e.g. SIFT or LightGlue in the evaluation) gives
its own matches to the estimators, most confident first, instead of a sample of its dense flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from diffmatch.geometry.relative_pose import RelativePose, essential_pose, plane_pose, pose_support
from diffmatch.result import MatchResult

__all__ = [
    "GeometryEstimate",
    "RelativePose",
    "estimate_fundamental",
    "estimate_homography",
    "estimate_relative_pose",
    "match_weights",
    "sample_matches",
]

Mode = Literal["sample", "top_k", "spread"]
_METHODS = ("magsac", "ransac")


@dataclass
class GeometryEstimate:
    """A matrix estimated robustly from sparse matches.

    Attributes:
        matrix: ``(3, 3)`` float64: a homography (target → source) or a fundamental matrix.
        inliers: ``(K,)`` bool, which of the matches the estimator kept.
        target_xy: ``(K, 2)`` the target pixels used.
        source_xy: ``(K, 2)`` their source points.
    """

    matrix: np.ndarray
    inliers: np.ndarray
    target_xy: np.ndarray
    source_xy: np.ndarray


def match_weights(result: MatchResult, index: int = 0) -> tuple[torch.Tensor, bool]:
    """Per-pixel weight of a match, ``(H, W)`` in ``[0, 1]``, and whether it is a calibrated confidence.

    The calibrated ``result.confidence`` when there is one; else ``1 / (1 + variance)`` (a ranking
    only: it is no probability).
    """
    if result.confidence is not None:
        return result.confidence[index, 0].float().cpu(), True
    return 1.0 / (1.0 + result.uncertainty[index, 0].float().cpu()), False


def sample_matches(
    result: MatchResult,
    num: int = 5000,
    generator: torch.Generator | None = None,
    max_uncertainty: float | None = None,
    index: int = 0,
    source_size: tuple[int, int] | None = None,
    mode: Mode = "sample",
    min_confidence: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse matches: drawn by confidence (``"sample"``), the most confident (``"top_k"``), or the most
    confident of each grid cell (``"spread"``).

    The confidence is the calibrated ``result.confidence`` when the model has one, else
    ``1 / (1 + variance)`` (:func:`match_weights`). Only pixels whose match lies inside the source
    frame are used (``x, y >= -0.5``, and below the size with ``source_size``).

    Args:
        result: a :class:`MatchResult`.
        num: number of matches at most.
        generator: RNG of the draw (``mode="sample"``) and of the order of ties (``"top_k"``).
        max_uncertainty: drop pixels whose variance exceeds this, px².
        index: which pair of the batch.
        source_size: ``(Hs, Ws)``; when given, matches falling outside the source are dropped.
        mode: ``"sample"``: drawn without replacement with probability ∝ confidence (like RoMa's
            ``sample``), in draw order; ``"top_k"``: the ``num`` most confident, most confident first;
            ``"spread"``: the target is cut into about ``num`` square cells and each gives its most
            confident match, most confident first (top-K matches cluster where the model is sure,
            a poorly conditioned set for geometry).
        min_confidence: drop pixels whose confidence is lower.

    A result with sparse matches (``result.matches``) gives its own, most confident first, whatever
    the ``mode`` (``max_uncertainty`` and ``generator`` are then unused).

    Returns:
        ``(target_xy, source_xy, confidence)``: ``(K, 2)`` pixel coordinates in each image and the
        ``(K,)`` confidence of each match.

    Raises:
        ValueError: unknown ``mode``, ``num < 1``.
    """
    if mode not in ("sample", "top_k", "spread"):
        raise ValueError(f"mode must be 'sample', 'top_k' or 'spread', got {mode!r}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if result.matches is not None:
        return _sparse_matches(result, num, index, source_size, min_confidence)
    flow = result.flow[index].float().cpu()
    confidence, _ = match_weights(result, index)
    h, w = flow.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    src_x, src_y = xs + flow[0], ys + flow[1]
    ok = (src_x >= -0.5) & (src_y >= -0.5) & torch.isfinite(src_x) & torch.isfinite(src_y)
    if source_size is not None:
        ok &= (src_x <= source_size[1] - 0.5) & (src_y <= source_size[0] - 0.5)
    if max_uncertainty is not None:
        ok &= result.uncertainty[index, 0].float().cpu() <= max_uncertainty
    if min_confidence is not None:
        ok &= confidence >= min_confidence
    ok &= torch.isfinite(confidence)
    weights = torch.where(ok, confidence, torch.zeros_like(confidence)).flatten()
    count = int(min(num, int(ok.sum()) if mode != "sample" else int((weights > 0).sum())))
    if count == 0:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty, np.zeros(0, np.float32)
    if mode != "sample":
        ranked = torch.where(ok.flatten(), confidence.flatten(), torch.full_like(weights, -1.0))
        shuffle = torch.randperm(ranked.numel(), generator=generator)  # ties in random, not raster, order
        shuffled = ranked[shuffle]
        if mode == "top_k" and count < shuffled.numel():
            # Only values from the count-th largest up can be picked: sorting those alone (in shuffle
            # order, stably) gives the full sort's first ``count``, at a fraction of its cost.
            candidates = torch.nonzero(shuffled >= torch.topk(shuffled, count).values[-1]).squeeze(1)
            order = shuffle[candidates[torch.argsort(shuffled[candidates], descending=True, stable=True)]]
        else:
            order = shuffle[torch.argsort(shuffled, descending=True, stable=True)]
        if mode == "spread":
            order = order[ranked[order] >= 0]
            side = max(1, int((h * w / num) ** 0.5))
            cells = (ys.flatten()[order] // side) * (w // side + 1) + xs.flatten()[order] // side
            _, first = np.unique(cells.numpy(), return_index=True)  # each cell's most confident pixel
            order = order[torch.from_numpy(np.sort(first))]
        picked = order[:count]
    else:
        picked = torch.multinomial(weights, count, replacement=False, generator=generator)
    tgt = torch.stack((xs.flatten()[picked], ys.flatten()[picked]), 1)
    src = torch.stack((src_x.flatten()[picked], src_y.flatten()[picked]), 1)
    return tgt.numpy(), src.numpy(), confidence.flatten()[picked].numpy()


def _sparse_matches(
    result: MatchResult, num: int, index: int, source_size: tuple[int, int] | None, min_confidence: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sparse matcher's own matches, most confident first, filtered like the dense ones."""
    found = result.matches[index]
    tgt, src = found.target_xy.astype(np.float32), found.source_xy.astype(np.float32)
    conf = found.confidence.astype(np.float32)
    ok = np.isfinite(src).all(1) & (src >= -0.5).all(1)
    if source_size is not None:
        ok &= (src[:, 0] <= source_size[1] - 0.5) & (src[:, 1] <= source_size[0] - 0.5)
    if min_confidence is not None:
        ok &= conf >= min_confidence
    order = np.flatnonzero(ok)[np.argsort(-conf[ok], kind="stable")][:num]
    return tgt[order], src[order], conf[order]


def _cv_method(method: str) -> int:
    import cv2

    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    return cv2.USAC_MAGSAC if method == "magsac" else cv2.RANSAC


def estimate_homography(
    result: MatchResult,
    num: int = 2000,
    mode: Mode = "spread",
    method: str = "magsac",
    threshold: float = 3.0,
    index: int = 0,
    source_size: tuple[int, int] | None = None,
    min_confidence: float | None = None,
    generator: torch.Generator | None = None,
    max_iters: int = 10000,
) -> GeometryEstimate:
    """Homography (target → source pixels) from confident matches, by OpenCV's MAGSAC++ or RANSAC.

    Args:
        result: a :class:`MatchResult` (calibrated ``confidence`` used when present).
        num: matches given to the estimator (see :func:`sample_matches`).
        mode: ``"spread"`` (the most confident of each grid cell; the best of the three on the
            synthetic benchmark, docs/confidence.md), ``"top_k"`` (the most confident) or ``"sample"`` (drawn
            by confidence).
        method: ``"magsac"`` (``cv2.USAC_MAGSAC``) or ``"ransac"`` (``cv2.RANSAC``).
        threshold: inlier reprojection threshold in source pixels.
        index: which pair of the batch.
        source_size: ``(Hs, Ws)``: drop matches outside the source.
        min_confidence: drop matches below this confidence.
        generator: RNG of ``mode="sample"``, and of the order a sparse matcher's matches are given
            to the estimator in (OpenCV's RANSAC draws from a fixed seed, so the order decides its
            draws; without a generator they go most confident first).
        max_iters: the estimator's iteration cap.

    Returns:
        :class:`GeometryEstimate` with ``matrix`` normalised to ``H[2, 2] = 1``.

    Raises:
        ValueError: fewer than 4 matches, or the estimator found no homography.
    """
    import cv2

    tgt, src, _ = sample_matches(result, num, generator, None, index, source_size, mode, min_confidence)
    if len(tgt) < 4:
        raise ValueError(f"a homography needs at least 4 matches, got {len(tgt)}")
    matrix, mask = cv2.findHomography(tgt, src, _cv_method(method), threshold, maxIters=max_iters, confidence=0.999)
    if matrix is None:
        raise ValueError(f"{method} found no homography from {len(tgt)} matches")
    return GeometryEstimate(matrix / matrix[2, 2], mask.ravel().astype(bool), tgt, src)


def estimate_fundamental(
    result: MatchResult,
    num: int = 2000,
    mode: Mode = "spread",
    method: str = "magsac",
    threshold: float = 1.0,
    index: int = 0,
    source_size: tuple[int, int] | None = None,
    min_confidence: float | None = None,
    generator: torch.Generator | None = None,
    max_iters: int = 10000,
) -> GeometryEstimate:
    """Fundamental matrix (``source^T F target = 0``) from confident matches, by OpenCV.

    Arguments as :func:`estimate_homography`; ``threshold`` is the distance to the epipolar line in
    pixels.

    Raises:
        ValueError: fewer than 8 matches, or the estimator found no matrix.
    """
    import cv2

    tgt, src, _ = sample_matches(result, num, generator, None, index, source_size, mode, min_confidence)
    if len(tgt) < 8:
        raise ValueError(f"a fundamental matrix needs at least 8 matches, got {len(tgt)}")
    matrix, mask = cv2.findFundamentalMat(tgt, src, _cv_method(method), threshold, 0.999, max_iters)
    if matrix is None or matrix.shape != (3, 3):
        raise ValueError(f"{method} found no fundamental matrix from {len(tgt)} matches")
    return GeometryEstimate(matrix, mask.ravel().astype(bool), tgt, src)


def _check_intrinsics(name: str, matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    k = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all() or abs(k[2, 2]) < 1e-12 or abs(np.linalg.det(k)) < 1e-12:
        raise ValueError(f"{name} must be a finite, invertible (3, 3) intrinsics matrix, got {k.tolist()}")
    return k / k[2, 2]


def estimate_relative_pose(
    result: MatchResult,
    K_source: np.ndarray | torch.Tensor,
    K_target: np.ndarray | torch.Tensor,
    num: int = 5000,
    mode: Mode = "sample",
    method: str = "ransac",
    threshold: float = 0.5,
    index: int = 0,
    source_size: tuple[int, int] | None = None,
    min_confidence: float | None = None,
    generator: torch.Generator | None = None,
    confidence: float = 0.99999,
    max_iters: int = 10000,
    trials: int = 1,
) -> RelativePose:
    """Relative pose (target camera → source camera) from matches: essential matrix or dominant plane.

    The matches (:func:`sample_matches`; a sparse matcher's own when ``result.matches`` is set) are
    normalised by the intrinsics. From them, RANSAC or MAGSAC++ finds an essential matrix and
    ``cv2.recoverPose`` its rotation and translation direction, with a threshold of ``threshold``
    pixels (divided by the mean focal length, as LoFTR's and RoMa's pose evaluations do). The same
    matches also give the homography of their dominant plane, and the decomposition of it that puts
    the plane in front of both cameras (:func:`~diffmatch.geometry.relative_pose.plane_pose`).
    Of these candidates, the pose kept is the one that explains the most matches of a set spread
    over the whole target (:func:`sample_matches`'s ``"spread"``): within the threshold of its
    epipolar geometry and in front of both cameras
    (:func:`~diffmatch.geometry.relative_pose.pose_support`).

    Why the plane: dense matches of a scene dominated by one plane (a wall, the background) fit a
    whole family of essential matrices. RANSAC settles on the one that also fits the most of the
    other matches, and where small layers are matched wrongly that pose is 60–90° off, and it puts
    about half of the plane behind a camera. The plane's own decomposition does not. On scene pairs
    made from the training photos this raised pose AUC@10 at the wide level from 81.2 to 93.4
    (docs/results.md, "Pose from a dominant plane").

    Args:
        result: a :class:`MatchResult`.
        K_source: ``(3, 3)`` intrinsics of the source image (pixel centres at integer coordinates).
        K_target: ``(3, 3)`` intrinsics of the target image.
        num: matches given to the estimator.
        mode: how dense matches are picked (:func:`sample_matches`); ``"sample"`` draws them by
            confidence (RoMa's choice for pose).
        method: ``"ransac"`` (``cv2.RANSAC``) or ``"magsac"`` (``cv2.USAC_MAGSAC``).
        threshold: inlier threshold in pixels.
        index: which pair of the batch.
        source_size: ``(Hs, Ws)``: drop matches outside the source.
        min_confidence: drop matches below this confidence.
        generator: RNG of ``mode="sample"``, and of the order a sparse matcher's matches are given
            to the estimator in (OpenCV's RANSAC draws from a fixed seed, so the order decides its
            draws; without a generator they go most confident first).
        confidence: the estimator's confidence level.
        max_iters: the estimator's iteration cap.
        trials: draw ``num`` matches this many times, each draw giving its two candidates, and keep
            the best supported of all. Dense matches give a different RANSAC run per draw.

    Returns:
        :class:`RelativePose` with ``X_source = rotation @ X_target + translation · s`` for an unknown
        scale ``s > 0``.

    Raises:
        ValueError: bad intrinsics, fewer than 5 matches, or no pose found.

    Example:
        >>> pose = estimate_relative_pose(result, K_s, K_t)  # doctest: +SKIP
        >>> pose.rotation, pose.translation                  # doctest: +SKIP
    """
    import cv2

    k_source = _check_intrinsics("K_source", K_source)
    k_target = _check_intrinsics("K_target", K_target)
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0 px, got {threshold}")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    focal = float(np.mean([k_source[0, 0], k_source[1, 1], k_target[0, 0], k_target[1, 1]]))
    cv_method = _cv_method(method)

    def normalised(points: np.ndarray, k: np.ndarray) -> np.ndarray:
        return cv2.undistortPoints(points.reshape(-1, 1, 2).astype(np.float64), k, None).reshape(-1, 2)

    def candidates() -> list[RelativePose]:
        tgt, src, _ = sample_matches(result, num, generator, None, index, source_size, mode, min_confidence)
        if result.matches is not None and generator is not None:
            # OpenCV's RANSAC draws from a fixed seed: a sparse matcher's matches, given in one order,
            # would give every trial the same estimate. An order of the generator's makes each its own.
            order = torch.randperm(len(tgt), generator=generator).numpy()
            tgt, src = tgt[order], src[order]
        if len(tgt) < 5:
            raise ValueError(f"a relative pose needs at least 5 matches, got {len(tgt)}")
        norm_t, norm_s = normalised(tgt, k_target), normalised(src, k_source)
        plane = plane_pose(tgt, src, norm_t, norm_s, cv_method, threshold / focal, confidence, max_iters)
        try:
            found = [essential_pose(tgt, src, norm_t, norm_s, cv_method, threshold / focal, confidence, max_iters)]
        except ValueError:
            if plane is None:
                raise
            found = []
        return found if plane is None else [*found, plane]

    poses, failure = [], None
    for _ in range(trials):
        try:
            poses.extend(candidates())
        except ValueError as err:
            failure = err
    if not poses:
        raise failure
    if len(poses) == 1:
        return poses[0]
    # The spread set's ties are ordered by the same generator, so a seeded call stays reproducible.
    tgt, src, _ = sample_matches(result, num, generator, None, index, source_size, "spread", min_confidence)
    norm_t, norm_s = normalised(tgt, k_target), normalised(src, k_source)
    support = [pose_support(pose, norm_t, norm_s, threshold / focal) for pose in poses]
    return poses[int(np.argmax(support))]
