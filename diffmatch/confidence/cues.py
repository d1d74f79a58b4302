"""The per-pixel cues a calibrated confidence is computed from, taken from one run of a model.

Flow convention: flows live on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels,
channel 0 = x; tensors ``(B, 2, H, W)``.

:func:`match_with_cues` runs :meth:`DiffMatch.run <diffmatch.models.diffmatch.DiffMatch.run>`, the
one path ``forward`` takes too, and keeps what ``forward`` throws away: the local cost around
``F_init``, and, optionally, the reverse pass (source matched to target) that reuses the same
features, so the forward–backward check costs one more sampling run but no second feature extraction. The cues are
those of :data:`diffmatch.confidence.CUES`, each ``(B, 1, Ht, Wt)``. With a ``refiner``
(:class:`~diffmatch.refinement.VariationalRefiner`), every hypothesis is refined before the cues are
taken, and so is the reverse pass's flow, so the cues describe the refined result.

:func:`local_mean` gives ``local_variance`` and ``local_fb_error``: the variance of three
hypotheses is a rough estimate at any one pixel, and wrong matches come in patches, so its mean over
a small window ranks the errors of an image better than the pixel's own on clean and corrupted
pairs, and about as well on 3D scenes (AUSE-EPE on photos the calibration never saw, docs/confidence.md,
"Local cues").
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F

from diffmatch.geometry import flow_magnitude, forward_backward_consistency
from diffmatch.models.diffmatch import Condition, DiffMatch
from diffmatch.models.diffusion import Generators
from diffmatch.refinement import VariationalRefiner
from diffmatch.result import MatchResult

__all__ = ["local_mean", "local_window", "match_with_cues", "search_cues", "variance_cue"]


def variance_cue(result: MatchResult) -> torch.Tensor:
    """The ``variance`` cue, ``(B, 1, H, W)`` px²: the hypotheses' variance, or NaN, unknown, for one
    hypothesis (whose variance is 0 everywhere, which a calibration fitted on several reads as
    certainty; :meth:`Calibrator.score <diffmatch.confidence.Calibrator.score>` counts it as average)."""
    if result.samples.shape[1] > 1:
        return result.uncertainty
    return torch.full_like(result.uncertainty, float("nan"))


def local_window(height: int, width: int) -> int:
    """Side of :func:`local_mean`'s window for an image: odd, about a 64th of the larger side (5 px at 240, 9 at 512)."""
    return 2 * round(max(height, width) / 128) + 1


def local_mean(cue: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """``expm1`` of the mean of ``log1p(cue)`` over a ``size x size`` window around each pixel.

    A mean in the log domain, so that one outlier does not swamp its neighbours; the border is
    padded by replication. ``cue``: ``(B, 1, H, W)``, non-negative (px or px²); ``size``: odd, or
    ``None`` for :func:`local_window`. Returns the same shape and unit.
    """
    size = local_window(*cue.shape[-2:]) if size is None else size
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the window must be an odd number of pixels, got {size}")
    pad = size // 2
    logged = F.pad(torch.log1p(cue.clamp_min(0)), (pad, pad, pad, pad), mode="replicate")
    return torch.expm1(F.avg_pool2d(logged, size, stride=1))


@torch.no_grad()
def match_with_cues(
    model: DiffMatch,
    source: torch.Tensor,
    target: torch.Tensor,
    num_samples: int = 3,
    num_steps: int | None = None,
    eta: float = 0.0,
    generator: Generators = None,
    reverse: bool = True,
    refiner: VariationalRefiner | None = None,
    reverse_samples: int | None = None,
    local: Collection[str] | None = None,
) -> tuple[MatchResult, dict[str, torch.Tensor]]:
    """``model(source, target, ...)`` plus the confidence cues of every target pixel.

    The returned result equals ``model(source, target, num_samples, num_steps, eta, generator)``
    (same draws from ``generator``), refined by ``refiner`` when one is given; the reverse pass,
    when asked for, draws afterwards.

    Args:
        model: a :class:`DiffMatch` (with or without an upsampler).
        source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
        target: ``(B, 3, Ht, Wt)`` RGB in ``[0, 1]``.
        num_samples: hypotheses ``N``.
        num_steps: DDIM steps (``None``: the model's default).
        eta: DDIM eta.
        generator: a generator, one per item, or ``None``.
        reverse: also match ``source`` to ``target`` for the ``fb_error`` cue.
        refiner: refine every hypothesis (and the reverse flow) at full resolution; ``None``: as
            ``forward`` returns them.
        reverse_samples: hypotheses of the reverse pass, whose mean flow the check reads (``None``:
            ``num_samples``; a calibration says which it was fitted with,
            :attr:`~diffmatch.confidence.Calibrator.reverse_samples`).
        local: which windowed cues to compute (``local_variance``, ``local_fb_error``; about 13 ms
            each at 512² on 2 CPU cores); ``None``: both. A calibration passes the cues it reads.

    Returns:
        ``(result, cues)``: the :class:`MatchResult` (flow on the target grid, px) and a dict with
        ``variance`` (px²), ``init_distance`` (px), ``cost_peak`` (cosine similarity),
        ``local_variance`` (px², :func:`local_mean`) and, with ``reverse``, ``fb_error`` and
        ``local_fb_error`` (px), each ``(B, 1, Ht, Wt)``; of the windowed cues only those in ``local``.
    """
    run = model.run(source, target, num_samples, num_steps, eta, generator, reverse, reverse_samples)
    result = run.result
    if refiner is not None:
        result = refiner.refine_result(source, target, result)
    init = result.init_flow if result.init_flow is not None else result.flow
    cues = {
        "variance": variance_cue(result),
        "init_distance": flow_magnitude(result.flow - init, keepdim=True),
        "cost_peak": _cost_peak(model, run.condition, tuple(target.shape[-2:])),
    }
    if local is None or "local_variance" in local:
        cues["local_variance"] = local_mean(cues["variance"])
    if run.reverse is not None:
        backward = run.reverse.flow
        if refiner is not None:
            backward = refiner(target, source, backward)
        cues["fb_error"] = forward_backward_consistency(result.flow, backward)[1].unsqueeze(1)
        if local is None or "local_fb_error" in local:
            cues["local_fb_error"] = local_mean(cues["fb_error"])
    return result, cues


def search_cues(result: MatchResult, costs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The cues of a layer-searched result, for :attr:`Calibrator.layer_search
    <diffmatch.confidence.Calibrator.layer_search>`.

    Args:
        result: the result :func:`~diffmatch.refinement.layer_search.search_layers` returned (its
            flow on the target grid, px, ``(B, 2, Ht, Wt)``, and ``init_flow``).
        costs: what decided the take, as it returned them (``census_cost``, ``census_margin``,
            ``distinctness``, each ``(B, 1, Ht, Wt)``).

    Returns:
        ``costs`` plus ``variance`` (px²) and ``init_distance`` (px, measured from the new flow).
    """
    init = result.init_flow if result.init_flow is not None else result.flow
    return {**costs, "variance": variance_cue(result), "init_distance": flow_magnitude(result.flow - init, keepdim=True)}


def _cost_peak(model: DiffMatch, cond: Condition, size_t: tuple[int, int]) -> torch.Tensor:
    """Largest cost around ``F_init`` (the whole global cost without a local cost), at the target's size."""
    c = model.config.cost_size
    if cond.local_cost is not None:
        peak = cond.local_cost.amax(dim=1, keepdim=True)
    else:
        peak = model.correlation(*cond.cost_maps).amax(dim=2).view(-1, 1, c, c)
    return F.interpolate(peak, size=size_t, mode="bilinear", align_corners=False)
