"""The per-pixel cues a calibrated confidence is computed from, taken from one run of a model.

Flow convention: flows live on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels,
channel 0 = x; tensors ``(B, 2, H, W)``.

:func:`match_with_cues` runs a :class:`~diffmatch.model.DiffMatch` (or a cascade) exactly as its
``forward`` does, and keeps what ``forward`` throws away: the local cost around ``F_init``, and,
optionally, a reverse pass (source matched to target) that reuses the same features, so the
forward–backward check costs one more sampling run but no second feature extraction. The cues are
those of :data:`diffmatch.confidence.CUES`, each ``(B, 1, Ht, Wt)``. With a ``refiner``
(:class:`~diffmatch.refinement.VariationalRefiner`), every hypothesis is refined before the cues are
taken, and so is the reverse pass's flow, so the cues describe the refined result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffmatch.diffusion import Generators
from diffmatch.geometry import forward_backward_consistency
from diffmatch.model import Condition, DiffMatch
from diffmatch.refinement import VariationalRefiner
from diffmatch.result import MatchResult
from diffmatch.upsampler import CascadeDiffMatch, _split_generators

__all__ = ["match_with_cues"]


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
) -> tuple[MatchResult, dict[str, torch.Tensor]]:
    """``model(source, target, ...)`` plus the confidence cues of every target pixel.

    The returned result equals ``model(source, target, num_samples, num_steps, eta, generator)``
    (same draws from ``generator``), refined by ``refiner`` when one is given; the reverse pass,
    when asked for, draws afterwards.

    Args:
        model: a stage-1 :class:`DiffMatch` or a :class:`~diffmatch.upsampler.CascadeDiffMatch`.
        source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
        target: ``(B, 3, Ht, Wt)`` RGB in ``[0, 1]``.
        num_samples: hypotheses ``N``.
        num_steps: DDIM steps (``None``: the model's default).
        eta: DDIM eta.
        generator: a generator, one per item, or ``None``.
        reverse: also match ``source`` to ``target`` for the ``fb_error`` cue.
        refiner: refine every hypothesis (and the reverse flow) at full resolution; ``None``: as
            ``forward`` returns them.

    Returns:
        ``(result, cues)``: the :class:`MatchResult` (flow on the target grid, px) and a dict with
        ``variance`` (px²), ``init_distance`` (px), ``cost_peak`` (cosine similarity) and, with
        ``reverse``, ``fb_error`` (px), each ``(B, 1, Ht, Wt)``.
    """
    num_steps = model.default_steps() if num_steps is None else num_steps
    feats = model.extract(source, target)
    maps_s, maps_t = model._cost_maps(feats[0]), model._cost_maps(feats[1])
    cond = model.condition_from_maps(maps_s, maps_t, feats)
    size_t, size_s = tuple(target.shape[-2:]), tuple(source.shape[-2:])
    result = _run(model, cond, size_t, size_s, num_samples, num_steps, eta, generator)
    if refiner is not None:
        result = refiner.refine_result(source, target, result)
    init = result.init_flow if result.init_flow is not None else result.flow
    cues = {
        "variance": result.uncertainty,
        "init_distance": (result.flow - init).norm(dim=1, keepdim=True),
        "cost_peak": _cost_peak(model, cond, maps_s, maps_t, size_t),
    }
    if reverse:
        cond_bw = model.condition_from_maps(maps_t, maps_s, (feats[1], feats[0]))
        backward = _run(model, cond_bw, size_s, size_t, num_samples, num_steps, eta, _derived(generator)).flow
        if refiner is not None:
            backward = refiner(target, source, backward)
        cues["fb_error"] = forward_backward_consistency(result.flow, backward)[1].unsqueeze(1)
    return result, cues


def _run(
    model: DiffMatch,
    cond: Condition,
    size_t: tuple[int, int],
    size_s: tuple[int, int],
    num_samples: int,
    num_steps: int,
    eta: float,
    generator: Generators,
) -> MatchResult:
    # The sampling half of DiffMatch.forward / CascadeDiffMatch.forward, on a given condition.
    if isinstance(model, CascadeDiffMatch):
        stage1_gen, stage2_gen = _split_generators(generator, cond.init_flow.shape[0])
        coarse = model.sample_normalized(cond, num_samples, num_steps, eta, stage1_gen)
        return model.upsample(cond.features, coarse, size_t, size_s, num_steps, eta, stage2_gen)
    samples = model.sample_normalized(cond, num_samples, num_steps, eta, generator)
    b, n = samples.shape[:2]
    samples_px = model.from_cost_grid(samples.flatten(0, 1), size_t, size_s).view(b, n, 2, *size_t)
    return MatchResult.from_samples(samples_px, init_flow=model.from_cost_grid(cond.init_flow, size_t, size_s))


def _cost_peak(
    model: DiffMatch,
    cond: Condition,
    maps_s: list[torch.Tensor],
    maps_t: list[torch.Tensor],
    size_t: tuple[int, int],
) -> torch.Tensor:
    """Largest cost around ``F_init`` (the whole global cost without a local cost), at the target's size."""
    c = model.config.cost_size
    if cond.local_cost is not None:
        peak = cond.local_cost.amax(dim=1, keepdim=True)
    else:
        peak = model.correlation(maps_s, maps_t).amax(dim=2).view(-1, 1, c, c)
    return F.interpolate(peak, size=size_t, mode="bilinear", align_corners=False)


def _derived(generator: Generators) -> Generators:
    """Fresh generators seeded from ``generator`` (one per item), for the reverse pass."""
    if generator is None:
        return None
    gens = generator if isinstance(generator, list) else [generator]
    derived = [
        torch.Generator(device=g.device).manual_seed(int(torch.randint(0, 2**62, (), generator=g, device=g.device)))
        for g in gens
    ]
    return derived if isinstance(generator, list) else derived[0]
