"""Dense-correspondence metrics, with the DenseMatching (GLU-Net / PDC-Net) definitions.

Flows follow the project convention: on the target grid, ``target(x) ≈ source(x + flow(x))``, in
pixels, channel 0 = x, tensors ``(B, 2, H, W)``. Errors are only counted on valid ground truth
(``mask``).

* **EPE** of a pixel: ``|flow(x) - gt(x)|_2`` in pixels.
* **AEPE**: each image's mean EPE over its valid pixels, then the mean over images.
* **PCK-t**: fraction of valid pixels with ``EPE <= t`` px. Reported two ways, as DenseMatching does:
  *per dataset* (all valid pixels of all images pooled; the number DenseMatching prints for HPatches
  and ETH3D) and *per image* (each image's PCK, then the mean over images).
* **Sparsification** (uncertainty quality): remove the most uncertain fraction ``f`` of the pixels
  and measure the metric on the rest, for ``f = 0, 1/n, ..., (n-1)/n`` plus ``f = 1`` (no pixels
  left: EPE 0, PCK 1). The **oracle** does the same with the true EPE as the ranking. Pixels of equal
  uncertainty are kept or removed together (a threshold on the ``1 - f`` quantile, as
  DenseMatching's ``compute_aucs``). **AUSE** is ``|∫ sparse / m - ∫ oracle / m|`` (trapezoid rule
  over ``f``), with ``m`` the oracle's maximum; it is computed per image and averaged over images.
  Only the ranking of the uncertainty matters, so a variance and a standard deviation give the
  same AUSE, and an uncertainty equal to the error gives 0.
* **Pose error** of a pair (the MegaDepth-1500 protocol of LoFTR, DKM, RoMa): the larger of the
  rotation's angular error and the angle between the estimated and true translation directions (in
  degrees; a failed estimate counts as infinite). **Pose AUC@t**: the area under the curve of the
  fraction of pairs whose pose error is below a threshold, from 0 to ``t`` degrees, divided by ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from diffmatch.geometry import check_flow, flow_magnitude

__all__ = [
    "PCK_THRESHOLDS",
    "SPARSIFICATION_INTERVALS",
    "end_point_error",
    "valid_errors",
    "Sparsification",
    "sparsification",
    "ause",
    "POSE_AUC_THRESHOLDS",
    "PairMetrics",
    "pair_metrics",
    "pose_auc",
    "pose_error",
    "summarize",
]

PCK_THRESHOLDS: tuple[int, ...] = (1, 3, 5)
# DenseMatching's compute_aucs uses 50 intervals: fractions 0, 0.02, ..., 0.98, then 1.
SPARSIFICATION_INTERVALS = 50
_UNCERTAINTY_METRICS: tuple[str, ...] = ("epe", "pck1", "pck5")
POSE_AUC_THRESHOLDS: tuple[int, ...] = (5, 10, 20)


def end_point_error(flow: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-pixel end-point error.

    Args:
        flow: ``(B, 2, H, W)`` estimated flow in pixels.
        gt: ``(B, 2, H, W)`` ground-truth flow in pixels.

    Returns:
        ``(B, H, W)`` Euclidean distance in pixels.

    Example:
        >>> end_point_error(torch.full((1, 2, 1, 1), 3.0), torch.tensor([[[[0.0]], [[-1.0]]]])).item()
        5.0
    """
    check_flow(flow)
    check_flow(gt, "gt")
    if flow.shape != gt.shape:
        raise ValueError(
            f"flow and gt must have the same shape, got {tuple(flow.shape)} and {tuple(gt.shape)}"
        )
    return flow_magnitude(flow.float() - gt.float())


def valid_errors(
    flow: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, uncertainty: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """EPE (and uncertainty) of the valid pixels of one image, as flat float64 arrays.

    Args:
        flow: ``(1, 2, H, W)`` estimated flow in pixels.
        gt: ``(1, 2, H, W)`` ground truth in pixels.
        mask: ``(1, H, W)`` or ``(H, W)`` bool, valid ground truth.
        uncertainty: optional ``(1, 1, H, W)`` or ``(1, H, W)`` per-pixel uncertainty (any monotone
            measure, e.g. variance in px²).

    Returns:
        ``(epe, uncertainty)``: ``(N,)`` arrays over the ``N`` valid pixels (``None`` without uncertainty).
    """
    epe = end_point_error(flow, gt)
    if epe.shape[0] != 1:
        raise ValueError(f"valid_errors takes one image (B = 1), got B = {epe.shape[0]}")
    if mask.numel() != epe[0].numel():
        raise ValueError(
            f"mask must have {tuple(epe.shape[-2:])} pixels like the flow, got shape {tuple(mask.shape)}"
        )
    mask = mask.reshape(epe.shape[-2:]).bool().to(epe.device)
    errors = epe[0][mask].double().cpu().numpy()
    if uncertainty is None:
        return errors, None
    if uncertainty.numel() != epe[0].numel():
        raise ValueError(
            f"uncertainty must have {tuple(epe.shape[-2:])} pixels, got shape {tuple(uncertainty.shape)}"
        )
    values = uncertainty.reshape(epe.shape[-2:]).to(epe.device)[mask].double().cpu().numpy()
    return errors, values


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def _ranked_curve(errors: np.ndarray, ranking: np.ndarray, fractions: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics on the pixels left after removing the top ``f`` of ``ranking`` (ties together)."""
    order = np.argsort(ranking, kind="stable")
    ranked, sorted_errors = ranking[order], errors[order]
    cumulative = {
        "epe": np.concatenate(([0.0], np.cumsum(sorted_errors))),
        "pck1": np.concatenate(([0.0], np.cumsum(sorted_errors <= 1.0))),
        "pck5": np.concatenate(([0.0], np.cumsum(sorted_errors <= 5.0))),
    }
    inner = fractions[:-1]
    thresholds = np.quantile(ranked, 1.0 - inner)
    kept = np.searchsorted(ranked, thresholds, side="right")
    safe = np.maximum(kept, 1)
    curves = {}
    for name, total in cumulative.items():
        empty_value = 0.0 if name == "epe" else 1.0
        values = np.where(kept > 0, total[kept] / safe, empty_value)
        curves[name] = np.append(values, empty_value)
    return curves


@dataclass
class Sparsification:
    """Sparsification and oracle curves of one image, and their AUSE.

    Attributes:
        fractions: ``(n + 1,)`` removed fractions, ``0 .. 1``.
        curve: metric name (``epe``, ``pck1``, ``pck5``) to ``(n + 1,)`` values after removing the
            most uncertain pixels, normalised by the oracle's maximum; empty without uncertainty.
        oracle: the same when removing the largest errors first, normalised alike.
        ause: metric name to the area between the two normalised curves; empty without uncertainty.
    """

    fractions: np.ndarray
    curve: dict[str, np.ndarray]
    oracle: dict[str, np.ndarray]
    ause: dict[str, float]


def sparsification(
    errors: np.ndarray, uncertainty: np.ndarray | None, intervals: int = SPARSIFICATION_INTERVALS
) -> Sparsification:
    """Sparsification curves against the oracle, and AUSE, for one image (DenseMatching ``compute_aucs``).

    Args:
        errors: ``(N,)`` EPE of the valid pixels, in pixels.
        uncertainty: ``(N,)`` uncertainty of the same pixels; larger means less certain. ``None``
            gives the oracle only.
        intervals: number of steps ``n``; fractions are ``k / n`` for ``k = 0..n``.

    Returns:
        The normalised curves and AUSE for EPE, PCK-1 and PCK-5.

    Raises:
        ValueError: mismatched or empty inputs, non-finite values, or ``intervals < 1``.
    """
    errors = np.asarray(errors, np.float64).ravel()
    ranking = errors if uncertainty is None else np.asarray(uncertainty, np.float64).ravel()
    if errors.shape != ranking.shape:
        raise ValueError(f"errors and uncertainty must match, got {errors.shape} and {ranking.shape}")
    if errors.size == 0:
        raise ValueError("sparsification needs at least one valid pixel, got none")
    if not (np.isfinite(errors).all() and np.isfinite(ranking).all()):
        raise ValueError("errors and uncertainty must be finite")
    if intervals < 1:
        raise ValueError(f"intervals must be >= 1, got {intervals}")
    fractions = np.arange(intervals + 1, dtype=np.float64) / intervals
    oracle = _ranked_curve(errors, errors, fractions)
    curve = _ranked_curve(errors, ranking, fractions) if uncertainty is not None else None
    out_curve, out_oracle, areas = {}, {}, {}
    for name in _UNCERTAINTY_METRICS:
        scale = float(oracle[name].max()) + 1e-6
        out_oracle[name] = oracle[name] / scale
        if curve is not None:
            out_curve[name] = curve[name] / scale
            areas[name] = abs(
                _trapezoid(out_curve[name], fractions) - _trapezoid(out_oracle[name], fractions)
            )
    return Sparsification(fractions=fractions, curve=out_curve, oracle=out_oracle, ause=areas)


def ause(
    errors: np.ndarray,
    uncertainty: np.ndarray,
    metric: str = "epe",
    intervals: int = SPARSIFICATION_INTERVALS,
) -> float:
    """Area between the sparsification curve and the oracle for ``metric`` (``epe``, ``pck1``, ``pck5``).

    Example:
        >>> errors = np.array([0.0, 1.0, 2.0, 3.0])
        >>> round(ause(errors, errors), 6)
        0.0
    """
    if metric not in _UNCERTAINTY_METRICS:
        raise ValueError(f"metric must be one of {_UNCERTAINTY_METRICS}, got {metric!r}")
    return sparsification(errors, uncertainty, intervals).ause[metric]


def _angle_degrees(cosine: float) -> float:
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def pose_error(
    rotation: np.ndarray, translation: np.ndarray, rotation_gt: np.ndarray, translation_gt: np.ndarray
) -> tuple[float, float]:
    """Angular errors of an estimated relative pose, in degrees.

    Args:
        rotation, rotation_gt: ``(3, 3)`` estimated and true rotations.
        translation, translation_gt: ``(3,)`` translations; only their directions count (two views
            give no scale).

    Returns:
        ``(rotation_error, translation_error)``: the angle of ``rotation_gtᵀ @ rotation``, and the angle
        between the translation directions, folded to ``[0, 90]`` (an essential matrix cannot tell
        ``t`` from ``-t`` in every case; LoFTR's and RoMa's evaluations fold it the same way). A
        true translation of zero length gives a translation error of 0.

    Example:
        >>> pose_error(np.eye(3), np.array([1.0, 0, 0]), np.eye(3), np.array([-2.0, 0, 0]))
        (0.0, 0.0)
    """
    rotation, rotation_gt = np.asarray(rotation, np.float64), np.asarray(rotation_gt, np.float64)
    translation, translation_gt = np.ravel(translation).astype(np.float64), np.ravel(translation_gt).astype(np.float64)
    if rotation.shape != (3, 3) or rotation_gt.shape != (3, 3) or translation.shape != (3,) or translation_gt.shape != (3,):
        raise ValueError("pose_error needs (3, 3) rotations and (3,) translations")
    rotation_error = _angle_degrees((np.trace(rotation_gt.T @ rotation) - 1.0) / 2.0)
    norms = np.linalg.norm(translation) * np.linalg.norm(translation_gt)
    if np.linalg.norm(translation_gt) < 1e-12:
        return rotation_error, 0.0
    if norms < 1e-12:
        return rotation_error, 90.0
    translation_error = _angle_degrees(float(translation @ translation_gt) / norms)
    return rotation_error, min(translation_error, 180.0 - translation_error)


def pose_auc(errors: Sequence[float], thresholds: Sequence[float] = POSE_AUC_THRESHOLDS) -> dict[float, float]:
    """Area under the cumulative pose-error curve up to each threshold, normalised to ``[0, 1]``.

    The curve joins ``(0, 0)`` and the points ``(e_i, i / n)`` of the sorted errors ``e_1 <= ... <= e_n``
    linearly, and is held flat from the last error below ``t`` to ``t`` (LoFTR's ``error_auc``, which
    DKM and RoMa reuse); failures (``inf``, ``nan``) count as pairs that never fall below it.

    Args:
        errors: per-pair pose errors in degrees.
        thresholds: the thresholds ``t`` in degrees.

    Returns:
        ``{t: AUC@t}``.

    Example:
        >>> pose_auc([0.0, 10.0], thresholds=(10,))
        {10: 0.5}
    """
    values = np.sort(np.nan_to_num(np.asarray(errors, np.float64), nan=np.inf))
    out: dict[float, float] = {}
    if values.size == 0:
        return {t: math.nan for t in thresholds}
    recall = np.arange(1, values.size + 1) / values.size
    points = np.concatenate(([0.0], values))
    recall = np.concatenate(([0.0], recall))
    for t in thresholds:
        last = int(np.searchsorted(points, t, side="left"))
        x = np.concatenate((points[:last], [t]))
        y = np.concatenate((recall[:last], [recall[last - 1]]))
        out[t] = float(_trapezoid(y, x) / t)
    return out


@dataclass
class PairMetrics:
    """Metrics of one image pair.

    Attributes:
        num_pixels: number of valid pixels.
        aepe: mean EPE over the valid pixels (px; NaN when there are none).
        pck_counts: threshold (px) to the number of valid pixels with ``EPE <= threshold``.
        seconds: time the method took on this pair.
        sparsification: the oracle curves, and the uncertainty's curves and AUSE when the method gave
            an uncertainty (``None`` without valid pixels).
        rotation_error, translation_error: the relative pose's errors in degrees
            (:func:`pose_error`; ``inf`` when no pose could be estimated); ``None`` when the pair has
            no ground-truth pose.
        pose_repeats: the pose errors (the larger of the two) of every repeated estimate of the
            pair's pose, the first being :attr:`pose_error`'s; empty when it was estimated once.
    """

    num_pixels: int
    aepe: float
    pck_counts: dict[int, int]
    seconds: float = math.nan
    sparsification: Sparsification | None = field(default=None, repr=False)
    rotation_error: float | None = None
    translation_error: float | None = None
    pose_repeats: tuple[float, ...] = ()

    @property
    def pose_error(self) -> float | None:
        """The larger of the rotation and translation errors (degrees), ``None`` without a pose."""
        if self.rotation_error is None or self.translation_error is None:
            return None
        return max(self.rotation_error, self.translation_error)

    def pck(self, threshold: int) -> float:
        """This image's PCK at ``threshold`` px (NaN without valid pixels)."""
        return self.pck_counts[threshold] / self.num_pixels if self.num_pixels else math.nan


def pair_metrics(
    errors: np.ndarray,
    uncertainty: np.ndarray | None = None,
    seconds: float = math.nan,
    intervals: int = SPARSIFICATION_INTERVALS,
) -> PairMetrics:
    """Metrics of one pair from the EPE of its valid pixels.

    Args:
        errors: ``(N,)`` EPE in pixels (see :func:`valid_errors`).
        uncertainty: optional ``(N,)`` uncertainty of the same pixels.
        seconds: time taken by the method.
        intervals: sparsification steps.
    """
    errors = np.asarray(errors, np.float64).ravel()
    counts = {t: int(np.count_nonzero(errors <= t)) for t in PCK_THRESHOLDS}
    curves = sparsification(errors, uncertainty, intervals) if errors.size else None
    aepe = float(errors.mean()) if errors.size else math.nan
    return PairMetrics(
        num_pixels=int(errors.size), aepe=aepe, pck_counts=counts, seconds=seconds, sparsification=curves
    )


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def summarize(pairs: Sequence[PairMetrics]) -> dict[str, object]:
    """Dataset-level metrics of a group of pairs.

    Pairs without valid pixels count in ``num_pairs`` but not in any average.

    Returns:
        ``num_pairs``; ``aepe`` (mean of per-image AEPE); ``pck1/3/5`` (per dataset, pixels pooled);
        ``pck1/3/5_per_image``; ``seconds_per_pair``; ``num_pixels``; and, if every pair with valid
        pixels has an uncertainty, ``ause_epe``, ``ause_pck`` (PCK-1) and ``ause_pck5`` (per-image AUSE
        averaged), else ``None``; ``sparsification``: the per-image normalised curves averaged
        (``fractions``, ``oracle_epe/pck1/pck5`` and, with uncertainty, ``epe/pck1/pck5``);
        ``pose_auc5/10/20`` (:func:`pose_auc` of the pairs with a ground-truth pose, ``None``
        without; with repeated estimates, of all of them pooled), ``num_poses`` (pairs) and, when
        every such pair was estimated the same number ``R > 1`` of times, ``pose_repeats`` (``R``)
        and ``pose_auc5/10/20_std`` (the standard deviation of the ``R`` runs' AUCs, each from
        the ``r``-th estimate of every pair: how much one run's AUC moves with RANSAC's draws).
    """
    pixels = sum(p.num_pixels for p in pairs)
    out: dict[str, object] = {
        "num_pairs": len(pairs),
        "num_pixels": pixels,
        "aepe": _mean([p.aepe for p in pairs]),
    }
    for t in PCK_THRESHOLDS:
        out[f"pck{t}"] = sum(p.pck_counts[t] for p in pairs) / pixels if pixels else None
    for t in PCK_THRESHOLDS:
        out[f"pck{t}_per_image"] = _mean([p.pck(t) for p in pairs])
    out["seconds_per_pair"] = _mean([p.seconds for p in pairs])
    posed = [p for p in pairs if p.pose_error is not None]
    runs = [p.pose_repeats or (p.pose_error,) for p in posed]
    aucs = pose_auc([e for errors in runs for e in errors]) if posed else {}
    for t in POSE_AUC_THRESHOLDS:
        out[f"pose_auc{t}"] = aucs.get(t)
    out["num_poses"] = len(posed)
    repeats = {len(errors) for errors in runs}
    if len(repeats) == 1 and (count := repeats.pop()) > 1:
        per_run = [pose_auc([errors[r] for errors in runs]) for r in range(count)]
        out["pose_repeats"] = count
        for t in POSE_AUC_THRESHOLDS:
            out[f"pose_auc{t}_std"] = float(np.std([auc[t] for auc in per_run]))
    curves = [p.sparsification for p in pairs if p.sparsification is not None]
    with_uncertainty = bool(curves) and all(c.ause for c in curves)
    out["ause_epe"] = float(np.mean([c.ause["epe"] for c in curves])) if with_uncertainty else None
    out["ause_pck"] = float(np.mean([c.ause["pck1"] for c in curves])) if with_uncertainty else None
    out["ause_pck5"] = float(np.mean([c.ause["pck5"] for c in curves])) if with_uncertainty else None
    if curves:
        sparse: dict[str, list[float]] = {"fractions": curves[0].fractions.tolist()}
        for name in _UNCERTAINTY_METRICS:
            sparse[f"oracle_{name}"] = np.mean([c.oracle[name] for c in curves], axis=0).tolist()
            if with_uncertainty:
                sparse[name] = np.mean([c.curve[name] for c in curves], axis=0).tolist()
        out["sparsification"] = sparse
    return out
