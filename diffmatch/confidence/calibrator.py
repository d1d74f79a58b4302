"""Calibrated confidence: ``P(EPE < τ)`` per pixel, from cues the model already has.

Flow convention: flows live on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels,
channel 0 = x; tensors ``(B, 2, H, W)``, arrays on disk ``(H, W, 2)``.

A :class:`Calibrator` maps per-pixel *cues* to the probability that the match is within ``τ`` px of
the truth. The cues (:data:`CUES`, all on the target grid, ``(B, 1, H, W)`` each):

* ``variance``: the hypotheses' variance, px² (``MatchResult.uncertainty``);
* ``init_distance``: ``|flow - F_init|`` px, how far the diffusion moved away from the global cost's match;
* ``cost_peak``: the largest local-cost value around ``F_init`` (cosine similarity, ``[-1, 1]``);
* ``fb_error``: the forward–backward cycle error ``|fw(x) + bw(x + fw(x))|`` px of a reverse pass;
* ``local_variance``, ``local_fb_error``: the same two over a small window around the pixel
  (:func:`~diffmatch.confidence.cues.local_mean`: ``expm1`` of the window's mean ``log1p``, a
  window of about a 64th of the image's larger side), less noisy than one pixel's: three hypotheses
  give a rough variance, and errors come in patches.

Pixels the layer search (:mod:`diffmatch.refinement.layer_search`) takes from a plane are no longer the
model's match, and their cues above describe the match they replaced. A calibration may carry a second
:class:`Calibrator` for them (:attr:`Calibrator.layer_search`), which reads ``variance``,
``init_distance`` (recomputed for the new flow) and what decided the take (:data:`SEARCH_CUES`):

* ``census_cost``: the plane's windowed census cost, a share of census bits in ``[0, 1]``;
* ``census_margin``: the matcher's own flow's cost minus the plane's;
* ``distinctness``: how much the plane's flow moved by half a window costs more.

For each ``τ`` it stores a logistic model on standardised, log-compressed cues, followed by an
isotonic (monotone, piecewise-linear) map from the logistic score to the observed frequency. The cues
in pixels are compressed by ``log(x + 0.01 px)`` (``log(x + 1e-4 px²)`` for variances,
:data:`LOG_OFFSETS`): errors span 0–100 px, and the offset keeps sub-pixel differences apart, so the
confidence ranks the matches of an image whose errors are all small (where ``log(1 + x)``, linear
below a pixel, let the variance rank them better; docs/confidence.md, "Log offsets"). Calibrations
from before it load with ``log(1 + x)`` (:attr:`Calibrator.transform`). Both
are plain lists of floats (:meth:`Calibrator.to_dict`), so they live inside exported weights and load
with ``torch.load(weights_only=True)``. :func:`fit_calibrator` fits one from pixels with known error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "CUES",
    "DEFAULT_TAUS",
    "LOG_OFFSETS",
    "REVERSE_CUES",
    "SEARCH_CUES",
    "TRANSFORMS",
    "Calibrator",
    "calibrator_from_dict",
    "cue_stack",
    "fit_calibrator",
    "isotonic_fit",
    "logistic_loss",
]

CUES: tuple[str, ...] = ("variance", "init_distance", "cost_peak", "fb_error", "local_variance", "local_fb_error")
# What decided a layer-search take (diffmatch.refinement.layer_search.search_layers), read by a
# calibration's part for taken pixels.
SEARCH_CUES: tuple[str, ...] = ("census_cost", "census_margin", "distinctness")
DEFAULT_TAUS: tuple[float, ...] = (1.0, 3.0, 5.0)
# Cues measured in pixels (or px²) are log-compressed before the logistic model: errors span 0–100 px.
# The offset of ``log(x + offset)``: a hundredth of a pixel, squared for the variances.
LOG_OFFSETS: dict[str, float] = {
    "variance": 1e-4, "local_variance": 1e-4, "init_distance": 1e-2, "fb_error": 1e-2, "local_fb_error": 1e-2
}
# How those cues are compressed: ``log`` (``log(x + LOG_OFFSETS[cue])``), or ``log1p`` (``log(1 + x)``,
# calibrations from before the offsets).
TRANSFORMS: tuple[str, ...] = ("log", "log1p")
# Cues that need a reverse pass (target matched to source).
REVERSE_CUES = frozenset({"fb_error", "local_fb_error"})
_FORMAT = "diffmatch-calibration"





def cue_stack(cues: dict[str, torch.Tensor], names: Sequence[str] = CUES) -> torch.Tensor:
    """Stack named ``(B, 1, H, W)`` cue maps into ``(B, K, H, W)`` in the order of ``names``.

    Raises:
        ValueError: a named cue is missing, or the maps differ in shape.
    """
    missing = [name for name in names if name not in cues]
    if missing:
        raise ValueError(f"cues {missing} missing; got {sorted(cues)}")
    maps = [cues[name] for name in names]
    shape = maps[0].shape
    if len(shape) != 4 or shape[1] != 1 or any(m.shape != shape for m in maps):
        raise ValueError(f"cue maps must all be (B, 1, H, W), got {[tuple(m.shape) for m in maps]}")
    return torch.cat(maps, dim=1)


def _transform(values: np.ndarray, names: Sequence[str], transform: str) -> np.ndarray:
    """``(N, K)`` raw cues to model inputs: pixel cues log-compressed as ``transform`` says
    (:data:`TRANSFORMS`), the others as they are; NaN (an unknown cue) stays NaN."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    out = np.array(values, dtype=np.float64, copy=True)
    for k, name in enumerate(names):
        if name in LOG_OFFSETS:
            column = np.clip(out[:, k], 0.0, None)
            out[:, k] = np.log(column + LOG_OFFSETS[name]) if transform == "log" else np.log1p(column)
    return np.clip(out, -1e6, 1e6)


def isotonic_fit(scores: np.ndarray, labels: np.ndarray, max_knots: int = 256) -> tuple[list[float], list[float]]:
    """Non-decreasing least-squares fit of ``labels`` on ``scores`` (pool-adjacent-violators).

    Args:
        scores: ``(N,)`` real scores.
        labels: ``(N,)`` values in ``[0, 1]`` (here: 1 if the match is within ``τ``).
        max_knots: scores are first pooled into at most this many equal-count bins.

    Returns:
        ``(x, y)``: knots (one per pooled block, at its mean score) with increasing ``x`` and
        increasing ``y``; predict with ``np.interp(score, x, y)`` (constant beyond the ends).
    """
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels, np.float64).ravel()
    if scores.shape != labels.shape or scores.size == 0:
        raise ValueError(f"scores and labels must be equal, non-empty (N,), got {scores.shape} and {labels.shape}")
    order = np.argsort(scores, kind="stable")
    scores, labels = scores[order], labels[order]
    edges = np.unique(np.linspace(0, scores.size, min(max_knots, scores.size) + 1).round().astype(int))
    sums = np.add.reduceat(labels, edges[:-1])
    counts = np.diff(edges).astype(np.float64)
    centres = np.add.reduceat(scores, edges[:-1]) / counts
    # Pool adjacent violators on the bins: a stack of (mean label, weight, weighted sum of centres).
    means: list[float] = []
    weights: list[float] = []
    moments: list[float] = []
    for s, c, x in zip(sums, counts, centres):
        mean, weight, moment = s / c, c, x * c
        while means and means[-1] >= mean:
            mean = (means[-1] * weights[-1] + mean * weight) / (weights[-1] + weight)
            weight += weights.pop()
            moment += moments.pop()
            means.pop()
        means.append(mean)
        weights.append(weight)
        moments.append(moment)
    # One knot per pooled block, at its mean score: the map is strictly increasing between the end
    # knots (few ties, so the confidence still ranks pixels), constant beyond them.
    xs: list[float] = []
    ys: list[float] = []
    for mean, weight, moment in zip(means, weights, moments):
        x = moment / weight
        if not xs or x > xs[-1]:
            xs.append(float(x))
            ys.append(float(mean))
    return xs, ys


def _logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-4, iterations: int = 50) -> np.ndarray:
    """Logistic regression by Newton's method (IRLS); ``x`` ``(N, K)`` standardised; returns ``(K + 1,)``."""
    design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    coef = np.zeros(design.shape[1])
    penalty = ridge * x.shape[0] * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ coef, -30, 30)))
        grad = design.T @ (p - y) + penalty @ coef
        hess = (design * (p * (1 - p))[:, None]).T @ design + penalty + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hess, grad)
        coef -= step
        if np.abs(step).max() < 1e-8:
            break
    return coef


@dataclass
class Calibrator:
    """A fitted map from cues to ``P(EPE < τ)``; plain numbers only, see :meth:`to_dict`.

    Attributes:
        cues: names of the cues it reads, in order (a subset of :data:`CUES`, and of :data:`SEARCH_CUES` for a layer-search part).
        taus: thresholds ``τ`` in px of the target image it was fitted for.
        default_tau: the ``τ`` of ``MatchResult.confidence`` unless another is asked for.
        mean, std: per-cue standardisation of the transformed cues.
        coef: per ``τ``, ``K + 1`` logistic coefficients (last: intercept).
        knots_x, knots_y: per ``τ``, the isotonic map from logistic score to probability.
        info: how it was fitted (photos, pairs, sampling settings, image size); for people, not code.
        refined: whether the flows it was fitted on had the sub-pixel refinement
            (:class:`~diffmatch.refinement.VariationalRefiner`); its confidence describes only
            flows made the same way. Calibrations from before the refinement existed load as ``False``.
        reverse_samples: hypotheses of the reverse pass behind the ``fb_error`` cue (its mean flow is
            checked against the forward one); ``None``: as many as the forward pass, as calibrations
            from before this setting existed were fitted.
        transform: how the cues in pixels are compressed (:data:`TRANSFORMS`): ``log``, ``log(x +
            0.01 px)`` (:data:`LOG_OFFSETS`), or ``log1p``, ``log(1 + x)``, as calibrations from
            before the offsets were fitted (they load as ``log1p``).
        layer_search: the calibration of the pixels the layer search takes
            (:func:`~diffmatch.refinement.layer_search.search_layers`), fitted on those pixels alone,
            for the same :attr:`taus`, from ``variance``, ``init_distance`` and :data:`SEARCH_CUES`;
            ``None``: taken pixels keep the confidence of the match they replaced (calibrations from
            before it existed, or fitted with ``diffmatch calibrate --no-layer-search``).
    """

    cues: tuple[str, ...]
    taus: tuple[float, ...]
    default_tau: float
    mean: list[float]
    std: list[float]
    coef: list[list[float]]
    knots_x: list[list[float]]
    knots_y: list[list[float]]
    info: dict[str, Any] = field(default_factory=dict)
    refined: bool = False
    reverse_samples: int | None = None
    transform: str = "log1p"
    layer_search: Calibrator | None = None

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        count = self.reverse_samples
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"reverse_samples must be None or an integer >= 1, got {count!r}")
        self.cues = tuple(str(c) for c in self.cues)
        self.taus = tuple(float(t) for t in self.taus)
        unknown = [c for c in self.cues if c not in CUES + SEARCH_CUES]
        if not self.cues or unknown:
            raise ValueError(f"cues must be a non-empty subset of {CUES + SEARCH_CUES}, got {self.cues}")
        if not self.taus or float(self.default_tau) not in self.taus:
            raise ValueError(f"default_tau {self.default_tau} must be one of taus {self.taus}")
        k, n = len(self.cues), len(self.taus)
        if len(self.mean) != k or len(self.std) != k:
            raise ValueError(f"mean and std must have {k} entries, got {len(self.mean)} and {len(self.std)}")
        if len(self.coef) != n or any(len(c) != k + 1 for c in self.coef):
            raise ValueError(f"coef must be {n} lists of {k + 1} numbers")
        if len(self.knots_x) != n or len(self.knots_y) != n:
            raise ValueError(f"knots_x and knots_y must have {n} entries (one per tau)")
        for xs, ys in zip(self.knots_x, self.knots_y):
            if len(xs) != len(ys) or not xs or np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) < 0):
                raise ValueError("isotonic knots must be non-empty, with increasing x and non-decreasing y")
        self.default_tau = float(self.default_tau)
        part = self.layer_search
        if part is not None and (part.taus != self.taus or part.layer_search is not None):
            raise ValueError(f"the layer-search part must be fitted for taus {self.taus} and have no part itself")

    @property
    def needs_reverse(self) -> bool:
        """Whether a cue it reads (:data:`REVERSE_CUES`) needs the reverse pass."""
        return any(name in REVERSE_CUES for name in self.cues)

    def tau_index(self, tau: float | None) -> int:
        """Index of ``tau`` (``None``: the default) in :attr:`taus`.

        Raises:
            ValueError: ``tau`` was not fitted.
        """
        tau = self.default_tau if tau is None else float(tau)
        if tau not in self.taus:
            raise ValueError(f"confidence was calibrated for tau in {self.taus} px, not {tau}")
        return self.taus.index(tau)

    def score(self, cues: np.ndarray, tau: float | None = None) -> np.ndarray:
        """The logistic score (log-odds before the isotonic map) of ``(N, K)`` raw cues.

        A NaN cue is unknown (the variance of one hypothesis, :func:`~diffmatch.confidence.cues.variance_cue`) and counts as
        the average of the pixels the calibration was fitted on.
        """
        x = (_transform(cues, self.cues, self.transform) - np.asarray(self.mean)) / np.asarray(self.std)
        x = np.where(np.isnan(x), 0.0, x)
        coef = np.asarray(self.coef[self.tau_index(tau)])
        return x @ coef[:-1] + coef[-1]

    def predict_numpy(self, cues: np.ndarray, tau: float | None = None) -> np.ndarray:
        """``(N,)`` probabilities in ``[0, 1]`` from ``(N, K)`` raw cues in the order of :attr:`cues`."""
        cues = np.asarray(cues, np.float64)
        if cues.ndim != 2 or cues.shape[1] != len(self.cues):
            raise ValueError(f"cues must be (N, {len(self.cues)}), got {cues.shape}")
        i = self.tau_index(tau)
        return np.clip(np.interp(self.score(cues, tau), self.knots_x[i], self.knots_y[i]), 0.0, 1.0)

    def predict(self, cues: dict[str, torch.Tensor], tau: float | None = None) -> torch.Tensor:
        """Confidence ``P(EPE < τ)`` of every pixel.

        Args:
            cues: cue name to ``(B, 1, H, W)`` map (extra cues are ignored).
            tau: threshold in px; ``None``: :attr:`default_tau`.

        Returns:
            ``(B, 1, H, W)`` float32 in ``[0, 1]``, on the cues' device.
        """
        stacked = cue_stack(cues, self.cues)
        b, k, h, w = stacked.shape
        flat = stacked.permute(0, 2, 3, 1).reshape(-1, k).double().cpu().numpy()
        prob = self.predict_numpy(flat, tau)
        return torch.from_numpy(prob).float().view(b, h, w, 1).permute(0, 3, 1, 2).to(stacked.device)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, floats and strings: safe for ``torch.load(weights_only=True)`` and JSON."""
        return {
            "format": _FORMAT,
            "cues": list(self.cues),
            "taus": list(self.taus),
            "default_tau": self.default_tau,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "coef": [[float(v) for v in c] for c in self.coef],
            "knots_x": [[float(v) for v in xs] for xs in self.knots_x],
            "knots_y": [[float(v) for v in ys] for ys in self.knots_y],
            "info": dict(self.info),
            "refined": bool(self.refined),
            "reverse_samples": self.reverse_samples,
            "transform": self.transform,
            "layer_search": None if self.layer_search is None else self.layer_search.to_dict(),
        }


def calibrator_from_dict(data: dict[str, Any]) -> Calibrator:
    """Rebuild a :class:`Calibrator` from :meth:`Calibrator.to_dict` output.

    Raises:
        ValueError: not a calibration dict, or inconsistent contents.
    """
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("not a diffmatch calibration (missing format tag)")
    part = data.get("layer_search")
    try:
        return Calibrator(
            cues=tuple(data["cues"]),
            taus=tuple(data["taus"]),
            default_tau=data["default_tau"],
            mean=list(data["mean"]),
            std=list(data["std"]),
            coef=[list(c) for c in data["coef"]],
            knots_x=[list(x) for x in data["knots_x"]],
            knots_y=[list(y) for y in data["knots_y"]],
            info=dict(data.get("info", {})),
            refined=bool(data.get("refined", False)),
            reverse_samples=data.get("reverse_samples"),
            transform=data.get("transform", "log1p"),
            layer_search=None if part is None else calibrator_from_dict(part),
        )
    except KeyError as err:
        raise ValueError(f"calibration lacks {err}") from None


def fit_calibrator(
    cues: np.ndarray,
    errors: np.ndarray,
    names: Sequence[str] = CUES,
    taus: Sequence[float] = DEFAULT_TAUS,
    default_tau: float = 3.0,
    info: dict[str, Any] | None = None,
    refined: bool = False,
    reverse_samples: int | None = None,
    transform: str = "log",
) -> Calibrator:
    """Fit a :class:`Calibrator` on pixels with known end-point error.

    Args:
        cues: ``(N, K)`` raw cues of the pixels, columns in the order of ``names``.
        errors: ``(N,)`` EPE in px of the same pixels.
        names: cue names (subset of :data:`CUES` and :data:`SEARCH_CUES`).
        taus: thresholds in px; one logistic + isotonic map each.
        default_tau: the ``τ`` :attr:`MatchResult.confidence` uses by default.
        info: free-form description stored with it.
        refined: the flows had the sub-pixel refinement (see :attr:`Calibrator.refined`).
        reverse_samples: the reverse pass's hypotheses behind ``fb_error`` (see
            :attr:`Calibrator.reverse_samples`).
        transform: how the cues in pixels are compressed (:data:`TRANSFORMS`; see
            :attr:`Calibrator.transform`).

    Raises:
        ValueError: shapes disagree, values are not finite, a ``τ`` has only one class, or an
            unknown ``transform``.
    """
    cues = np.asarray(cues, np.float64)
    errors = np.asarray(errors, np.float64).ravel()
    names = tuple(names)
    if cues.ndim != 2 or cues.shape != (errors.size, len(names)):
        raise ValueError(f"cues must be (N, {len(names)}) with N = {errors.size} errors, got {cues.shape}")
    if not (np.isfinite(cues).all() and np.isfinite(errors).all()):
        raise ValueError("cues and errors must be finite")
    x = _transform(cues, names, transform)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    x = (x - mean) / std
    coefs, knots_x, knots_y = [], [], []
    for tau in taus:
        labels = (errors < tau).astype(np.float64)
        if labels.min() == labels.max():
            raise ValueError(f"at tau = {tau} px every pixel is {'correct' if labels[0] else 'wrong'}; need both")
        coef = _logistic_fit(x, labels)
        xs, ys = isotonic_fit(x @ coef[:-1] + coef[-1], labels)
        coefs.append(coef.tolist())
        knots_x.append(xs)
        knots_y.append(ys)
    return Calibrator(
        cues=names,
        taus=tuple(float(t) for t in taus),
        default_tau=default_tau,
        mean=mean.tolist(),
        std=std.tolist(),
        coef=coefs,
        knots_x=knots_x,
        knots_y=knots_y,
        info=dict(info or {}),
        refined=refined,
        reverse_samples=reverse_samples,
        transform=transform,
    )


def logistic_loss(prob: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` in ``{0, 1}`` under ``prob`` (clipped away from 0 and 1)."""
    prob = np.clip(np.asarray(prob, np.float64), 1e-6, 1 - 1e-6)
    labels = np.asarray(labels, np.float64)
    return float(-np.mean(labels * np.log(prob) + (1 - labels) * np.log(1 - prob)))

