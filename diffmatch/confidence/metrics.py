"""How good a confidence is, and what it buys: reliability, ECE, and homography accuracy.

Flow convention: flow on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels, channel
0 = x; tensors ``(B, 2, H, W)``, arrays on disk ``(H, W, 2)``. Homographies map target pixels to
source pixels (:mod:`diffmatch.geometry.estimation`).

* :func:`reliability` and :func:`expected_calibration_error`: predicted probability against the
  observed frequency of ``EPE < τ``, in equal-width bins (Guo et al. 2017).
* :func:`corner_error` and :func:`homography_accuracy`: HPatches practice (SuperPoint, LoFTR):
  the mean distance of the four target corners mapped by the estimated and the true homography, and
  the share of pairs under 1, 3 and 5 px.
* :func:`homography_from_flow`: the true homography of an exact homography flow (least squares).

``python -m diffmatch.evaluate_confidence`` runs them on a benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HOMOGRAPHY_THRESHOLDS",
    "Reliability",
    "corner_error",
    "expected_calibration_error",
    "homography_accuracy",
    "homography_from_flow",
    "reliability",
]

HOMOGRAPHY_THRESHOLDS: tuple[float, ...] = (1.0, 3.0, 5.0)


@dataclass
class Reliability:
    """A reliability diagram: per probability bin, how often the event happened.

    Attributes:
        edges: ``(M + 1,)`` bin edges on ``[0, 1]``.
        confidence: ``(M,)`` mean predicted probability in each bin (NaN if empty).
        frequency: ``(M,)`` observed frequency of the event in each bin (NaN if empty).
        count: ``(M,)`` samples per bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    frequency: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: ``Σ_b n_b / n · |frequency_b − confidence_b|``."""
        total = self.count.sum()
        used = self.count > 0
        if total == 0:
            raise ValueError("no samples")
        gaps = np.abs(self.frequency[used] - self.confidence[used])
        return float((self.count[used] * gaps).sum() / total)


def reliability(prob: np.ndarray, labels: np.ndarray, bins: int = 10) -> Reliability:
    """Bin predicted probabilities into ``bins`` equal-width bins and count outcomes.

    Bin ``b`` holds ``edges[b] <= p < edges[b + 1]``; the last bin includes 1.

    Args:
        prob: ``(N,)`` predicted probabilities in ``[0, 1]``.
        labels: ``(N,)`` outcomes, 0/1 or bool (here ``EPE < τ``).
        bins: number of bins ``M``.

    Raises:
        ValueError: mismatched or empty inputs, probabilities outside ``[0, 1]``, ``bins < 1``.
    """
    prob = np.asarray(prob, np.float64).ravel()
    labels = np.asarray(labels, np.float64).ravel()
    if prob.shape != labels.shape or prob.size == 0:
        raise ValueError(f"prob and labels must be equal, non-empty (N,), got {prob.shape} and {labels.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("prob must be finite and in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.floor(prob * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, prob, bins) / count
        frequency = np.bincount(which, labels, bins) / count
    return Reliability(edges, confidence, frequency, count.astype(np.int64))


def expected_calibration_error(prob: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of probabilities ``prob`` for 0/1 outcomes ``labels`` with ``bins`` equal-width bins.

    Example:
        >>> round(expected_calibration_error([0.25, 0.25, 0.75, 0.75], [0, 1, 1, 1], bins=2), 6)
        0.25
    """
    return reliability(prob, labels, bins).ece


def corner_error(estimate: np.ndarray | None, truth: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance in source pixels between the target's 4 corners mapped by two homographies.

    The corners are the pixel centres ``(0, 0)``, ``(W-1, 0)``, ``(0, H-1)``, ``(W-1, H-1)`` of the
    ``size = (H, W)`` target. ``estimate = None`` (a failed estimate) gives ``inf``.
    """
    if estimate is None:
        return float("inf")
    h, w = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64).T

    def project(matrix: np.ndarray) -> np.ndarray:
        mapped = np.asarray(matrix, np.float64) @ corners
        return mapped[:2] / mapped[2:]

    error = float(np.linalg.norm(project(estimate) - project(truth), axis=0).mean())
    return error if np.isfinite(error) else float("inf")


def homography_accuracy(errors: Sequence[float], thresholds: Sequence[float] = HOMOGRAPHY_THRESHOLDS) -> dict[str, float]:
    """Summary of per-pair corner errors (px; ``inf`` for a failure).

    Returns:
        ``mean`` and ``median`` corner error (failures count as 100 px in both, so a failure cannot
        vanish from the mean), ``failed`` (their number), and ``acc@t`` (share of pairs under
        ``t`` px) for each threshold.
    """
    errors = np.asarray(errors, np.float64)
    if errors.size == 0:
        raise ValueError("no corner errors")
    capped = np.minimum(np.where(np.isfinite(errors), errors, 100.0), 100.0)
    out = {"mean": float(capped.mean()), "median": float(np.median(capped)), "failed": float((~np.isfinite(errors)).sum())}
    for t in thresholds:
        out[f"acc@{t:g}"] = float((errors < t).mean())
    return out


def homography_from_flow(flow: np.ndarray, mask: np.ndarray | None = None, max_points: int = 5000) -> tuple[np.ndarray, float]:
    """The homography of an exact homography flow, by least squares on (a grid of) its pixels.

    Args:
        flow: ``(H, W, 2)`` flow on the target grid, px, ``target(x) ≈ source(x + flow(x))``.
        mask: ``(H, W)`` bool, pixels to use (default all).
        max_points: use at most about this many pixels, on a regular sub-grid.

    Returns:
        ``(H, rms)``: the ``(3, 3)`` target → source homography and its RMS residual in px (near 0
        for a flow that is a homography).

    Raises:
        ValueError: bad shapes or fewer than 4 pixels.
    """
    import cv2

    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    ok = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
    step = max(1, int(np.sqrt(ok.sum() / max_points)))
    sub = np.zeros_like(ok)
    sub[::step, ::step] = True
    ys, xs = np.nonzero(ok & sub)
    if xs.size < 4:
        raise ValueError(f"need at least 4 pixels, got {xs.size}")
    tgt = np.stack((xs, ys), 1).astype(np.float64)
    src = tgt + flow[ys, xs]
    matrix, _ = cv2.findHomography(tgt, src, 0)
    if matrix is None:
        raise ValueError("degenerate flow: no homography")
    mapped = np.concatenate((tgt, np.ones((len(tgt), 1))), 1) @ matrix.T
    rms = float(np.sqrt(((mapped[:, :2] / mapped[:, 2:] - src) ** 2).sum(1).mean()))
    return matrix / matrix[2, 2], rms
