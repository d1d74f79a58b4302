"""Relative pose candidates: the dominant plane's pose, cheirality, and the choice between candidates."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from diffmatch.geometry.estimation import estimate_relative_pose, sample_matches
from diffmatch.geometry.relative_pose import (
    RelativePose,
    in_front,
    plane_pose,
    pose_support,
    sampson_distances,
)
from diffmatch.metrics import pose_error
from diffmatch.result import MatchResult

FOCAL = 150.0


def _plane_scene(h: int = 120, w: int = 160):
    """The exact flow of one tilted plane seen from two cameras, with the cameras' intrinsics and pose."""
    k = np.array([[FOCAL, 0, w / 2], [0, FOCAL, h / 2], [0, 0, 1]])
    rotation, _ = cv2.Rodrigues(np.array([0.05, -0.3, 0.02]))
    translation = np.array([0.8, 0.05, 0.1])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(k).T
    normal = np.array([0.2, -0.1, 1.0]) / np.linalg.norm([0.2, -0.1, 1.0])
    points = rays * (5.0 / (rays @ normal))[..., None] @ rotation.T + translation
    projected = points @ k.T
    flow = torch.from_numpy(projected[..., :2] / projected[..., 2:] - np.stack([xs, ys], -1)).permute(2, 0, 1).float()
    return flow[None], k, rotation, translation


def _normalised_matches(result: MatchResult, k: np.ndarray, num: int = 800, seed: int = 0):
    tgt, src, _ = sample_matches(result, num, torch.Generator().manual_seed(seed), mode="sample")
    norm = lambda p: cv2.undistortPoints(p.reshape(-1, 1, 2).astype(np.float64), k, None).reshape(-1, 2)  # noqa: E731
    return tgt, src, norm(tgt), norm(src)


def test_plane_pose_is_the_decomposition_that_puts_the_plane_in_front():
    flow, k, rotation, translation = _plane_scene()
    tgt, src, norm_t, norm_s = _normalised_matches(MatchResult.from_samples(flow[:, None]), k)
    pose = plane_pose(tgt, src, norm_t, norm_s, cv2.RANSAC, 0.5 / FOCAL, 0.99999, 10000)
    assert max(pose_error(pose.rotation, pose.translation, rotation, translation)) < 0.1
    assert in_front(pose.rotation, pose.translation, norm_t, norm_s).all() and pose.inliers.mean() > 0.99
    # Every decomposition fits the plane, but the others put part of it behind a camera.
    homography, _ = cv2.findHomography(norm_t, norm_s, 0)
    count, rotations, translations, _ = cv2.decomposeHomographyMat(homography, np.eye(3))
    wrong = [
        in_front(r, t.ravel() / np.linalg.norm(t), norm_t, norm_s).mean()
        for r, t in zip(rotations[:count], translations[:count])
        if max(pose_error(r, t.ravel(), rotation, translation)) > 5
    ]
    assert len(wrong) >= 2 and max(wrong) < 0.9


def test_in_front_and_support_count_only_points_before_both_cameras():
    flow, k, rotation, translation = _plane_scene()
    tgt, src, norm_t, norm_s = _normalised_matches(MatchResult.from_samples(flow[:, None]), k)
    assert in_front(rotation, translation, norm_t, norm_s).all()
    assert not in_front(rotation, -translation, norm_t, norm_s).any()  # the mirrored scene lies behind
    skew = np.array([[0, -translation[2], translation[1]], [translation[2], 0, -translation[0]], [-translation[1], translation[0], 0]])
    essential = skew @ rotation
    assert np.sqrt(sampson_distances(essential, norm_t, norm_s)).max() < 1e-6
    direction, everyone = translation / np.linalg.norm(translation), np.ones(len(tgt), bool)
    true = RelativePose(rotation, direction, essential, everyone, tgt, src)
    mirrored = RelativePose(rotation, -direction, -essential, everyone, tgt, src)
    # Both fit every match's epipolar line; only the true pose has them in front.
    assert pose_support(true, norm_t, norm_s, 0.5 / FOCAL) == len(tgt)
    assert pose_support(mirrored, norm_t, norm_s, 0.5 / FOCAL) == 0
    assert in_front(rotation, translation, norm_t[:0], norm_s[:0]).shape == (0,)


@pytest.mark.parametrize("card", [False, True])
def test_a_scene_of_one_plane_gives_the_true_pose(card):
    """Dense matches on one plane fit a family of essential matrices; with a wrongly matched card on
    top (a small layer moved coherently, as a matcher gets small occluders wrong), RANSAC's essential
    matrix alone is 85° off for every seed here. The plane's decomposition gets the pose right."""
    flow, k, rotation, translation = _plane_scene()
    if card:
        flow[..., 20:60, 100:150] += torch.tensor([9.0, -4.0]).view(1, 2, 1, 1)
    result = MatchResult.from_samples(flow[:, None])
    size = tuple(flow.shape[-2:])
    errors = [
        max(pose_error(p.rotation, p.translation, rotation, translation))
        for p in (
            estimate_relative_pose(result, k, k, num=800, source_size=size, generator=torch.Generator().manual_seed(seed), trials=5 if card else 1)
            for seed in range(5)
        )
    ]
    assert sum(e < 1.0 for e in errors) >= (4 if card else 5), errors


def test_matches_without_motion_give_a_clear_error():
    """OpenCV's five-point solver raises its own error on matches that do not move (identical images)."""
    k = np.array([[FOCAL, 0, 80], [0, FOCAL, 60], [0, 0, 1]])
    still = MatchResult.from_samples(torch.zeros(1, 1, 2, 120, 160))
    for trials in (1, 2):
        with pytest.raises(ValueError, match="no match moves"):
            estimate_relative_pose(still, k, k, trials=trials)
