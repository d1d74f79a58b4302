from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmatch.metrics import (
    PairMetrics,
    ause,
    end_point_error,
    pair_metrics,
    pose_auc,
    pose_error,
    sparsification,
    summarize,
    valid_errors,
)


def _reference_ause(errors: np.ndarray, uncertainty: np.ndarray, intervals: int = 50) -> dict[str, float]:
    """DenseMatching's compute_aucs, restated with percentile thresholds, as an independent check."""
    x = np.linspace(0, 1, intervals + 1)
    curves = {}
    for key, ranking in (("sparse", uncertainty), ("oracle", errors)):
        keeps = [-ranking >= np.percentile(-ranking, 100.0 / intervals * t) for t in range(intervals)]
        curves[key] = {
            "epe": [errors[k].mean() for k in keeps] + [0.0],
            "pck1": [(errors[k] <= 1).mean() for k in keeps] + [1.0],
            "pck5": [(errors[k] <= 5).mean() for k in keeps] + [1.0],
        }
    out = {}
    for metric in ("epe", "pck1", "pck5"):
        top = max(curves["oracle"][metric]) + 1e-6
        sparse, oracle = np.array(curves["sparse"][metric]) / top, np.array(curves["oracle"][metric]) / top
        out[metric] = abs(
            np.sum((sparse[1:] + sparse[:-1]) * np.diff(x)) / 2
            - np.sum((oracle[1:] + oracle[:-1]) * np.diff(x)) / 2
        )
    return out


def test_end_point_error_known_vector():
    flow = torch.zeros(1, 2, 2, 3)
    flow[:, 0], flow[:, 1] = 3.0, -4.0
    assert torch.allclose(end_point_error(flow, torch.zeros_like(flow)), torch.full((1, 2, 3), 5.0))
    with pytest.raises(ValueError, match="same shape"):
        end_point_error(flow, torch.zeros(1, 2, 3, 3))


def test_valid_errors_keeps_masked_pixels_only():
    gt = torch.zeros(1, 2, 2, 2)
    flow = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    mask = torch.tensor([[True, False], [False, True]])
    errors, ranking = valid_errors(flow, gt, mask, uncertainty=torch.tensor([[[[9.0, 8.0], [7.0, 6.0]]]]))
    assert errors.tolist() == [1.0, 4.0] and ranking.tolist() == [9.0, 6.0]
    with pytest.raises(ValueError, match="mask"):
        valid_errors(flow, gt, torch.ones(3, 3, dtype=torch.bool))


def test_pair_metrics_known_error_field():
    errors = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 6.0])  # PCK uses EPE <= t, so 1.0 counts for PCK-1
    metrics = pair_metrics(errors, seconds=0.25)
    assert metrics.aepe == pytest.approx(13.5 / 6)
    assert (metrics.pck(1), metrics.pck(3), metrics.pck(5)) == pytest.approx((3 / 6, 4 / 6, 5 / 6))
    assert metrics.num_pixels == 6 and metrics.seconds == 0.25
    assert metrics.sparsification is not None and metrics.sparsification.ause == {}  # oracle only


def test_summarize_aepe_per_image_and_pck_pooled_vs_per_image():
    a = pair_metrics(np.array([0.0, 0.0, 0.0, 10.0]))  # AEPE 2.5, PCK-1 3/4
    b = pair_metrics(np.array([2.0, 2.0]))  # AEPE 2.0, PCK-1 0
    empty = pair_metrics(np.array([]))
    out = summarize([a, b, empty])
    assert out["num_pairs"] == 3 and out["num_pixels"] == 6
    assert out["aepe"] == pytest.approx((2.5 + 2.0) / 2)  # mean of per-image means, not 12/6
    assert out["pck1"] == pytest.approx(3 / 6)  # pixels pooled
    assert out["pck1_per_image"] == pytest.approx((0.75 + 0.0) / 2)
    assert out["pck3"] == pytest.approx(5 / 6)
    assert out["ause_epe"] is None and out["ause_pck"] is None
    assert "epe" not in out["sparsification"] and len(out["sparsification"]["oracle_epe"]) == 51


def test_sparsification_hand_computed_curves_and_ause():
    errors = np.array([0.0, 1.0, 2.0, 3.0])
    backwards = np.array([3.0, 2.0, 1.0, 0.0])  # most confident where the error is largest
    result = sparsification(errors, backwards, intervals=4)
    scale = 1.5 + 1e-6  # the oracle's maximum: the full AEPE
    assert result.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # Oracle: drop 3, then 2, then 1; the no-pixel end point is 0.
    assert result.oracle["epe"] * scale == pytest.approx([1.5, 1.0, 0.5, 0.0, 0.0])
    assert result.curve["epe"] * scale == pytest.approx([1.5, 2.0, 2.5, 3.0, 0.0])
    # Trapezoids with dx = 0.25: oracle 0.5625, estimate 2.0625; their gap over 1.5 is 1.
    assert result.ause["epe"] == pytest.approx(1.0, abs=1e-5)
    # PCK-1 goes 2/4 -> 1 for the oracle, 2/4 -> 0 for the backward ranking.
    assert result.oracle["pck1"] == pytest.approx([0.5, 2 / 3, 1.0, 1.0, 1.0], abs=1e-5)
    assert result.curve["pck1"] == pytest.approx([0.5, 1 / 3, 0.0, 0.0, 1.0], abs=1e-5)


def test_perfect_uncertainty_has_zero_ause_and_random_positive():
    rng = np.random.default_rng(0)
    errors = np.abs(rng.standard_normal(5000)) * 3
    for perfect in (errors, errors**2):  # only the ranking matters: a variance is as good
        assert all(v == pytest.approx(0.0, abs=1e-12) for v in sparsification(errors, perfect).ause.values())
    noisy = sparsification(errors, rng.random(5000)).ause
    assert noisy["epe"] > 0.1 and noisy["pck1"] > 0.01 and noisy["pck5"] > 0.01
    assert ause(errors, errors) == pytest.approx(0.0, abs=1e-12)


def test_sparsification_matches_densematching_definition():
    rng = np.random.default_rng(1)
    errors = np.abs(rng.standard_normal(777)) * 4
    uncertainty = errors + rng.standard_normal(777) * 2
    ours = sparsification(errors, uncertainty).ause
    reference = _reference_ause(errors, uncertainty)
    for metric in ("epe", "pck1", "pck5"):
        assert ours[metric] == pytest.approx(reference[metric], abs=1e-9)


def test_tied_uncertainty_keeps_or_removes_pixels_together():
    errors = np.array([1.0, 2.0, 3.0, 6.0])
    result = sparsification(errors, np.zeros(4), intervals=4)
    assert result.curve["epe"][:-1] * (3.0 + 1e-6) == pytest.approx([3.0, 3.0, 3.0, 3.0])


def test_summarize_averages_ause_over_images():
    errors = np.array([0.0, 1.0, 2.0, 3.0])
    good = pair_metrics(errors, errors)
    bad = pair_metrics(errors, -errors)
    out = summarize([good, bad])
    assert out["ause_epe"] == pytest.approx((0.0 + bad.sparsification.ause["epe"]) / 2)
    assert out["sparsification"]["epe"][0] == pytest.approx(1.0, abs=1e-5)
    # One pair without uncertainty: no AUSE for the group.
    assert summarize([good, pair_metrics(errors)])["ause_epe"] is None


@pytest.mark.parametrize(
    ("errors", "uncertainty", "match"),
    [
        (np.zeros(3), np.zeros(4), "must match"),
        (np.zeros(0), np.zeros(0), "at least one"),
        (np.array([1.0, math.nan]), np.zeros(2), "finite"),
    ],
)
def test_sparsification_rejects_bad_input(errors, uncertainty, match):
    with pytest.raises(ValueError, match=match):
        sparsification(errors, uncertainty)


def test_pair_metrics_is_a_plain_record():
    metrics = PairMetrics(num_pixels=0, aepe=math.nan, pck_counts={1: 0, 3: 0, 5: 0})
    assert math.isnan(metrics.pck(1))


def test_pose_auc_hand_computed():
    # Sorted errors 1, 2, 3 and a failure; the curve joins (0,0), (1,.25), (2,.5), (3,.75) and stays at .75.
    # AUC@5 = (0.125 + 0.375 + 0.625 + 0.75·2) / 5 = 0.525; AUC@10 adds 0.75·5 → 6.375 / 10.
    aucs = pose_auc([3.0, float("inf"), 1.0, 2.0], thresholds=(5, 10, 2))
    assert aucs[5] == pytest.approx(0.525)
    assert aucs[10] == pytest.approx(0.6375)
    # Up to 2°: an error equal to the threshold does not count below it (LoFTR), so the curve stays
    # at 0.25 from 1° to 2°: (0.125 + 0.25) / 2.
    assert aucs[2] == pytest.approx(0.1875)
    assert pose_auc([0.0, 10.0], thresholds=(10,)) == {10: pytest.approx(0.5)}
    assert pose_auc([float("nan")] * 3) == {5: 0.0, 10: 0.0, 20: 0.0}


def test_pose_error_angles():
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90° about z
    assert pose_error(rotation, np.array([0, 0, 1.0]), np.eye(3), np.array([0, 0, 3.0])) == pytest.approx((90.0, 0.0))
    # Translation directions 60° apart; the opposite direction folds to 0.
    t = np.array([1.0, 0.0, 0.0])
    assert pose_error(np.eye(3), t, np.eye(3), np.array([0.5, math.sqrt(3) / 2, 0]))[1] == pytest.approx(60.0)
    assert pose_error(np.eye(3), -t, np.eye(3), t)[1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="rotations"):
        pose_error(np.eye(2), t, np.eye(3), t)


def test_summarize_reports_pose_auc_only_with_poses():
    plain = pair_metrics(np.array([1.0]))
    assert summarize([plain])["pose_auc10"] is None
    posed = [pair_metrics(np.zeros(0)) for _ in range(2)]
    posed[0].rotation_error, posed[0].translation_error = 0.0, 0.0
    posed[1].rotation_error, posed[1].translation_error = 4.0, 10.0  # pose error 10°
    summary = summarize(posed)
    assert summary["num_poses"] == 2 and summary["aepe"] is None
    assert summary["pose_auc10"] == pytest.approx(0.5)


def test_summarize_pools_repeated_poses_and_gives_the_runs_spread():
    posed = [pair_metrics(np.zeros(0)) for _ in range(2)]
    for metrics, runs in zip(posed, [(0.0, 10.0), (0.0, 0.0)]):
        metrics.rotation_error, metrics.translation_error = runs[0], runs[0]
        metrics.pose_repeats = runs
    summary = summarize(posed)
    # Pooled: errors 0, 10, 0, 0. Run 0 (0, 0) scores 1, run 1 (10, 0) scores 0.5.
    assert summary["num_poses"] == 2 and summary["pose_repeats"] == 2
    assert summary["pose_auc10"] == pytest.approx(pose_auc([0.0, 10.0, 0.0, 0.0])[10])
    assert summary["pose_auc10_std"] == pytest.approx(0.25)
    # One estimate per pair: no spread to give.
    for metrics in posed:
        metrics.pose_repeats = ()
    assert "pose_repeats" not in summarize(posed) and "pose_auc10_std" not in summarize(posed)
