"""Relative camera poses from normalised matches: the candidates and how they are told apart.

Matches here are normalised image points, ``n = K⁻¹ [x, y, 1]`` without the third coordinate,
``(K, 2)`` float64 arrays: ``norm_t`` in the target image and ``norm_s`` their matches in the
source. A pose ``(R, t)`` maps target-camera coordinates to source-camera coordinates,
``X_source = R @ X_target + t``, and its essential matrix ``E = [t]× R`` satisfies
``ns @ E @ nt = 0`` (the convention of :mod:`diffmatch.geometry.estimation`, which samples the
matches from a flow and calls these functions).

Two kinds of candidate:

* :func:`essential_pose`: the essential matrix found by RANSAC or MAGSAC++, and the rotation and
  translation direction ``cv2.recoverPose`` takes from it.
* :func:`plane_pose`: the homography of the scene's dominant plane, decomposed into its (up to four)
  poses, of which the one that puts most of the plane's points in front of both cameras is kept.

Why both: when most matches lie on one plane (a wall, a floor, a table, the background of a scene),
the essential matrix is poorly determined. Every member of a family of essential matrices fits the
plane, and RANSAC takes the one that also fits the most other matches. When the other layers are
matched wrongly, that is a wrong pose, often 60–90° off, and it puts only about half of the plane's
points in front of the cameras. The plane's own homography decomposes into two physically different
poses; the true one puts all of the plane in front. COLMAP's two-view geometry decomposes the
homography in the same situation (its ``PLANAR`` configurations). :func:`pose_support` then
chooses among the candidates: the matches a pose explains *and* puts in front of both cameras.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["RelativePose", "essential_pose", "in_front", "plane_pose", "pose_support", "sampson_distances"]


@dataclass
class RelativePose:
    """A relative camera pose estimated from matches.

    Attributes:
        rotation: ``(3, 3)`` float64 ``R``, target camera to source camera.
        translation: ``(3,)`` float64 unit direction of ``t`` (``X_source = R @ X_target + t``; the
            scale of ``t`` cannot be known from two views).
        essential: ``(3, 3)`` float64 essential matrix ``[t]× R``.
        inliers: ``(K,)`` bool, the matches the estimator kept and that lie in front of both cameras.
        target_xy: ``(K, 2)`` the target pixels used.
        source_xy: ``(K, 2)`` their source points.
    """

    rotation: np.ndarray
    translation: np.ndarray
    essential: np.ndarray
    inliers: np.ndarray
    target_xy: np.ndarray
    source_xy: np.ndarray


def _cross_matrix(v: np.ndarray) -> np.ndarray:
    """``[v]×``, the matrix of the cross product with ``v``."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def sampson_distances(essential: np.ndarray, norm_t: np.ndarray, norm_s: np.ndarray) -> np.ndarray:
    """``(K,)`` squared Sampson distances of normalised matches to ``ns @ E @ nt = 0``."""
    t = np.c_[norm_t, np.ones(len(norm_t))]
    s = np.c_[norm_s, np.ones(len(norm_s))]
    et, es = t @ essential.T, s @ essential
    residual = np.sum(s * et, 1) ** 2
    return residual / np.maximum(et[:, 0] ** 2 + et[:, 1] ** 2 + es[:, 0] ** 2 + es[:, 1] ** 2, 1e-30)


def in_front(rotation: np.ndarray, translation: np.ndarray, norm_t: np.ndarray, norm_s: np.ndarray) -> np.ndarray:
    """``(K,)`` bool: the matches whose triangulated point lies in front of both cameras.

    Each match is triangulated (``cv2.triangulatePoints``, target camera ``[I | 0]``, source camera
    ``[R | t]``) and kept where its depth is positive in both. The signs are read from the homogeneous
    coordinates (depth times ``w``), as ``cv2.recoverPose`` reads them, so that far points need no
    division.
    """
    if len(norm_t) == 0:
        return np.zeros(0, bool)
    target_camera = np.hstack([np.eye(3), np.zeros((3, 1))])
    source_camera = np.hstack([rotation, np.reshape(translation, (3, 1))])
    points = cv2.triangulatePoints(target_camera, source_camera, norm_t.T.astype(np.float64), norm_s.T.astype(np.float64))
    w = points[3]
    depth_target = points[2] * w
    depth_source = (rotation[2] @ points[:3] + translation[2] * w) * w
    return (depth_target > 0) & (depth_source > 0)


def pose_support(pose: RelativePose, norm_t: np.ndarray, norm_s: np.ndarray, threshold: float) -> int:
    """How many matches ``pose`` explains: within ``threshold`` (normalised, Sampson) of its epipolar
    geometry and in front of both cameras.

    The cheirality matters where a scene is mostly one plane: several essential matrices fit the plane
    equally well, but only the true pose puts it in front of both cameras (module docstring).
    """
    close = sampson_distances(pose.essential, norm_t, norm_s) < threshold**2
    return int((close & in_front(pose.rotation, pose.translation, norm_t, norm_s)).sum())


def essential_pose(
    tgt: np.ndarray, src: np.ndarray, norm_t: np.ndarray, norm_s: np.ndarray, method: int, threshold: float,
    confidence: float, max_iters: int,
) -> RelativePose:
    """The pose of an essential matrix found by ``method`` (``cv2.RANSAC`` or ``cv2.USAC_MAGSAC``).

    ``threshold`` is normalised. Of several essential matrices (the five-point solver can return up to
    ten), the one whose ``cv2.recoverPose`` puts the most inliers in front of both cameras is kept.

    Raises:
        ValueError: no essential matrix (OpenCV's solver fails on matches without any motion, for
            one), or no pose with 5 inliers in front of both cameras.
    """
    try:
        essential, mask = cv2.findEssentialMat(norm_t, norm_s, np.eye(3), method, confidence, threshold, maxIters=max_iters)
    except cv2.error:
        still = len(norm_t) and float(np.abs(norm_s - norm_t).max()) < 1e-12
        reason = "no match moves, and a pose needs motion" if still else "OpenCV's five-point solver failed on them"
        raise ValueError(f"no essential matrix found from {len(tgt)} matches: {reason}") from None
    if essential is None or essential.shape[0] < 3 or mask is None:
        raise ValueError(f"no essential matrix found from {len(tgt)} matches")
    best: RelativePose | None = None
    best_count = -1
    for candidate in np.split(essential[: essential.shape[0] // 3 * 3], essential.shape[0] // 3):
        count, rotation, translation, pose_mask = cv2.recoverPose(
            candidate, norm_t, norm_s, np.eye(3), 1e9, mask=mask.copy()
        )[:4]
        if count > best_count:
            inliers = pose_mask.ravel() > 0
            t = translation.ravel() / max(np.linalg.norm(translation), 1e-12)
            best = RelativePose(rotation, t, candidate, inliers, tgt, src)
            best_count = count
    if best is None or best_count < 5:
        raise ValueError(f"no pose puts 5 of {len(tgt)} matches in front of both cameras")
    return best


def plane_pose(
    tgt: np.ndarray, src: np.ndarray, norm_t: np.ndarray, norm_s: np.ndarray, method: int, threshold: float,
    confidence: float, max_iters: int,
) -> RelativePose | None:
    """The pose of the dominant plane's homography, or ``None`` where there is none.

    The homography (target → source, normalised points, ``threshold`` normalised) is found by
    ``method`` and decomposed (``cv2.decomposeHomographyMat``); of its poses, the one that puts the
    most of the homography's inliers in front of both cameras is kept. Its ``inliers`` are the matches
    its essential matrix explains within ``threshold`` and puts in front (not only the plane's).
    A decomposition without translation (a pure rotation) gives no direction and is skipped.
    """
    try:
        homography, mask = cv2.findHomography(norm_t, norm_s, method, threshold, maxIters=max_iters, confidence=confidence)
        count, rotations, translations, _ = cv2.decomposeHomographyMat(homography, np.eye(3)) if homography is not None else (0, (), (), ())
    except cv2.error:
        return None
    if homography is None or mask is None or int(mask.sum()) < 4:
        return None
    plane = mask.ravel().astype(bool)
    best: tuple[int, np.ndarray, np.ndarray] | None = None
    for rotation, translation in zip(rotations[:count], translations[:count]):
        length = float(np.linalg.norm(translation))
        if length < 1e-9:
            continue
        direction = translation.ravel() / length
        visible = int(in_front(rotation, direction, norm_t[plane], norm_s[plane]).sum())
        if best is None or visible > best[0]:
            best = (visible, rotation, direction)
    if best is None:
        return None
    _, rotation, direction = best
    essential = _cross_matrix(direction) @ rotation
    inliers = (sampson_distances(essential, norm_t, norm_s) < threshold**2) & in_front(rotation, direction, norm_t, norm_s)
    return RelativePose(rotation, direction, essential, inliers, tgt, src)
