"""Layer search: per-pixel homography candidates for scenes whose layers move apart.

On wide baselines a foreground layer can move far from the background (parallax), and a whole
layer, or a repetitive or textureless background, is then matched wrongly by every pass: the
U-Net's flow stays near the motion of its surroundings. The model's own global cost often still
holds the right matches there. The layer search reads them and offers them back:

1. ``F_init`` is taken both ways (the hard argmax of the model's global cost, target → source and
   source → target); the matches of a sparse grid that survive the round trip are kept.
2. Homographies are fitted to them one after another (MAGSAC++), each to the matches the ones before
   left unexplained: the planes of the scene, one per layer, as far as the cost sees them. With a
   calibrated confidence, the same is done with the result's own confident matches
   (:func:`confident_homographies`): the planes the matcher already found somewhere, offered to the
   pixels of those planes it matched wrongly (on the scenes benchmark's `wide` level they cover most
   of the wrong pixels of several pairs, where the global cost's planes do not).
3. Each homography's flow is a candidate at every pixel. Every candidate, and the matcher's own
   flow, is scored by how well it carries the source onto the target: the absolute difference of the
   census transforms (robust to brightness and contrast), averaged over a window.
4. A pixel takes the best candidate only where it beats the matcher's own flow by a clear margin
   (:attr:`LayerSearchConfig.ratio`), and where the window pins the candidate down: moved by half a
   window, it must cost clearly more (:attr:`LayerSearchConfig.distinct`), which a washed-out or noisy
   window does not; and where it also beats the matcher's own flow with the census taken after the
   source is warped onto the target's grid (:func:`aligned_cost`), which a plane that won only
   because the flow turns the image (an in-plane rotation) does not. The refinement then brings the
   flow there to sub-pixel precision.

Elsewhere the result is left exactly as it was. Where a candidate is taken, every hypothesis moves by
the same amount, so the pixel keeps the variance of the match it replaced. Its confidence is no
longer the replaced match's either: :func:`search_layers` returns what decided the take (the census
cost, its margin over the matcher's own flow, and the distinctness), and a calibration that has a
part for taken pixels (:attr:`Calibrator.layer_search <diffmatch.confidence.Calibrator.layer_search>`,
fitted by ``diffmatch calibrate``) gives them their own; :class:`~diffmatch.matcher.DiffMatcher`
does this. With a calibration that lacks it, taken pixels keep the replaced match's confidence.

:class:`~diffmatch.matcher.DiffMatcher` runs it by default (``layer_search=False`` leaves it out).
The census cost is blind where an image is strongly corrupted (fog, frost, snow, noise); without the
distinctness check (``distinct=0``) the search takes wrong planes there and loses under ImageNet-C;
with it most of that loss is gone and so is part of the gain on wide scenes. README, "Layer search",
has the numbers of both.

Flow convention: on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels, channel 0 = x.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from diffmatch.geometry import coords_grid, homography_to_flow, warp
from diffmatch.refinement.census import (
    CENSUS_REACH,
    PackedCensus,
    aligned_cost,
    census_transform,
    pack_census,
    packed_matching_cost,
)
from diffmatch.result import MatchResult

__all__ = [
    "LayerSearchConfig",
    "confident_homographies",
    "layer_homographies",
    "search_layers",
]

RawFlows = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Refine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LayerSearchConfig:
    """When the layer search runs and how it decides (defaults chosen on scenes made from training
    photos, README "Layer search").

    Sizes are shares of the target's larger side, so that the search behaves the same at any
    resolution (the values in brackets are at 512 px).

    Attributes:
        below: the result's mean calibrated confidence under which the search runs; 1 (the
            default): every pair, with or without a confidence (a result without one is searched
            only at 1). Searching every pair gained at every level of scenes made from training
            photos, the confident small-baseline pairs included (README, "Layer search").
        max_layers: homographies fitted at most to ``F_init`` (0: none, the confident matches' planes only).
        min_support: matches a homography must explain to become a candidate.
        stride: the grid of ``F_init`` matches (1/128: every 4 px).
        cycle: a match is kept when the round trip through the reverse ``F_init`` comes back within
            this distance (1/64: 8 px, a cell of the model's cost grid).
        threshold: MAGSAC++'s inlier threshold in source pixels (1/64: 8 px).
        window: side of the window the matching cost is averaged over (1/16: 33 px), odd.
        ratio: a candidate replaces the matcher's flow where its windowed cost is below this share of
            the flow's own.
        confident_layers: homographies fitted at most to the result's own confident matches
            (:func:`confident_homographies`; 0: none, the global cost's planes only).
        confident_above: the calibrated confidence a match needs to be one of those.
        rounds: how many times :class:`~diffmatch.matcher.DiffMatcher` searches (2, the default):
            after the first search, with every plane, it searches again with the planes of the
            searched result's confident matches alone (the taken pixels with their own confidence), as
            long as pixels are taken. The second round's planes come from more of each layer (what
            the first round fixed), and it gave a better flow on scenes and synthetic pairs of the
            training photos and the held-out ones alike; it looked like a worse pose only under a
            single RANSAC seed (README, "Layer search"). :func:`search_layers` itself searches once.
        distinct: and only where the window pins the candidate down: moving it by half a window in
            each of the four directions must raise its cost by more than this (a share of census
            bits; 0 turns the check off). Fog, frost, snow and noise leave windows that any nearby
            flow matches about as well, and there a plane won by chance; with the check, corrupted
            pairs made from training photos no longer lose (README "Layer search").
    """

    below: float = 1.0
    max_layers: int = 8
    confident_layers: int = 3
    confident_above: float = 0.8
    rounds: int = 2
    min_support: int = 20
    stride: float = 1 / 128
    cycle: float = 1 / 64
    threshold: float = 1 / 64
    window: float = 1 / 16
    ratio: float = 0.95
    distinct: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.below <= 1.0 or not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"below must be in [0, 1] and ratio in (0, 1], got {self.below}, {self.ratio}")
        if not 0.0 <= self.distinct < 1.0:
            raise ValueError(f"distinct is a share of census bits in [0, 1), got {self.distinct}")
        if self.confident_layers < 0 or not 0.0 <= self.confident_above < 1.0:
            raise ValueError(
                f"confident_layers must be >= 0 and confident_above in [0, 1), got {self.confident_layers}, {self.confident_above}"
            )
        if self.max_layers < 0 or self.min_support < 4 or self.rounds < 1:
            raise ValueError(
                f"max_layers must be >= 0, min_support >= 4 and rounds >= 1, got {self.max_layers}, {self.min_support}, {self.rounds}"
            )
        shares = {"stride": self.stride, "cycle": self.cycle, "threshold": self.threshold, "window": self.window}
        bad = [f"{name}={value}" for name, value in shares.items() if not 0.0 < value <= 1.0]
        if bad:
            raise ValueError(f"stride, cycle, threshold and window are shares of the image side in (0, 1], got {', '.join(bad)}")

    def pixels(self, size: tuple[int, int]) -> tuple[int, float, float, int]:
        """``(stride, cycle, threshold, window)`` in pixels for an image of ``size`` ``(H, W)``."""
        side = max(size)
        window = max(3, round(self.window * side)) | 1
        return max(1, round(self.stride * side)), self.cycle * side, self.threshold * side, window


def _distinctness(
    source: PackedCensus, target: PackedCensus, flow: torch.Tensor, cost: torch.Tensor, window: int, where: torch.Tensor
) -> torch.Tensor:
    """``(B, 1, Ht, Wt)``: how much the cheapest of ``flow`` moved by half a window (left, right, up,
    down) costs more than ``flow`` itself (``cost``); near 0 where the window's texture does not pin
    the match down. Measured at the pixels of ``where`` (``(B, 1, Ht, Wt)`` bool), 0 elsewhere: the
    costs are taken only over the box that holds their windows."""
    distinct = torch.zeros_like(cost)
    if not bool(where.any()):
        return distinct
    half = window // 2
    box = _box_around(where, half)
    part = PackedCensus(target.codes[:, box[2], box[3]], target.bits)
    shifted = []
    for dx, dy in ((half, 0), (-half, 0), (0, half), (0, -half)):
        offset = _corner(box, flow) + torch.tensor([dx, dy], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
        shifted.append(packed_matching_cost(source, part, flow[box] + offset, window))
    distinct[box] = torch.stack(shifted).amin(0) - cost[box]
    return torch.where(where, distinct, torch.zeros_like(distinct))


def _aligned_better(
    source: torch.Tensor, target_census: torch.Tensor, flow: torch.Tensor, own: torch.Tensor, window: int, where: torch.Tensor
) -> torch.Tensor:
    """``(B, 1, Ht, Wt)`` bool: where ``flow`` costs less than the matcher's ``own`` flow by :func:`aligned_cost`,
    measured at the pixels of ``where`` (False elsewhere), over the box that holds their windows
    and the census's reach (:data:`CENSUS_REACH`)."""
    better = torch.zeros_like(where)
    if not bool(where.any()):
        return better
    box = _box_around(where, window // 2 + CENSUS_REACH)
    corner, grey, part = _corner(box, flow), source.mean(1, keepdim=True), target_census[box]
    better[box] = aligned_cost(grey, part, flow[box] + corner, window) < aligned_cost(grey, part, own[box] + corner, window)
    return better & where


def _corner(box: tuple[slice, slice, slice, slice], like: torch.Tensor) -> torch.Tensor:
    """``(1, 2, 1, 1)`` ``(x, y)`` of ``box``'s top-left pixel: added to a flow on the box's grid, it
    gives the same matches as on the whole target's grid (a part of the target is costed this way)."""
    return torch.tensor([box[3].start, box[2].start], dtype=like.dtype, device=like.device).view(1, 2, 1, 1)


def _box_around(mask: torch.Tensor, margin: int) -> tuple[slice, slice, slice, slice]:
    """The index of the smallest box of a ``(B, 1, H, W)`` ``mask``'s pixels grown by ``margin``, in the image."""
    rows = mask.flatten(0, 2).any(1).nonzero()[:, 0]
    cols = mask.flatten(0, 2).any(0).nonzero()[:, 0]
    height, width = mask.shape[-2:]
    return (
        slice(None),
        slice(None),
        slice(max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + margin + 1)),
        slice(max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + margin + 1)),
    )


def _planes_one_after_another(
    target: np.ndarray, source: np.ndarray, threshold: float, most: int, support: int
) -> list[np.ndarray]:
    """Up to ``most`` homographies (MAGSAC++, ``threshold`` source px), each fitted to the ``(K, 2)`` matches
    ``target`` → ``source`` the ones before left unexplained and explaining at least ``support`` of them."""
    homographies: list[np.ndarray] = []
    while len(target) >= support and len(homographies) < most:
        matrix, mask = cv2.findHomography(target, source, cv2.USAC_MAGSAC, threshold, maxIters=5000)
        if matrix is None or mask is None:
            break
        explained = mask.ravel().astype(bool)
        if explained.sum() < support:
            break
        if np.isfinite(matrix).all():
            homographies.append(matrix)
        target, source = target[~explained], source[~explained]
    return homographies


def layer_homographies(
    forward: torch.Tensor, backward: torch.Tensor, config: LayerSearchConfig | None = None
) -> list[np.ndarray]:
    """The planes the model's global cost sees: homographies fitted one after another to ``F_init``.

    Args:
        forward: ``(2, Ht, Wt)`` ``F_init`` target → source (``target(x) ≈ source(x + flow(x))``, px).
        backward: ``(2, Hs, Ws)`` ``F_init`` source → target.
        config: sizes and limits (``None``: :class:`LayerSearchConfig` defaults).

    Returns:
        ``(3, 3)`` float64 homographies, target pixels → source pixels, the best supported first.
    """
    config = config if config is not None else LayerSearchConfig()
    stride, cycle, threshold, _ = config.pixels(tuple(forward.shape[-2:]))
    grid = coords_grid(1, *forward.shape[-2:], forward.device, forward.dtype)[0]
    landing = grid + forward
    back, inside = warp(backward[None], forward[None])
    error = (forward + back[0]).norm(dim=0)
    keep = (inside[0] & (error < cycle))[::stride, ::stride]
    target = grid[:, ::stride, ::stride][:, keep].T.double().cpu().numpy()
    source = landing[:, ::stride, ::stride][:, keep].T.double().cpu().numpy()
    return _planes_one_after_another(target, source, threshold, config.max_layers, config.min_support)


_CONFIDENT_MATCHES = 5000  # confident matches the planes are fitted to at most (an even subsample)
_CONFIDENT_SUPPORT = 50  # matches a plane of confident matches must explain


def confident_homographies(result: MatchResult, config: LayerSearchConfig | None = None) -> list[np.ndarray]:
    """The planes of the result's own confident matches: homographies fitted one after another (MAGSAC++).

    Args:
        result: a batch-of-one match (flow ``(1, 2, Ht, Wt)``, ``target(x) ≈ source(x + flow(x))``, px)
            with a calibrated ``confidence``; without one there are none.
        config: :attr:`LayerSearchConfig.confident_layers`, :attr:`LayerSearchConfig.confident_above` and
            the inlier threshold (``None``: :class:`LayerSearchConfig` defaults).

    Returns:
        Up to ``confident_layers`` ``(3, 3)`` float64 homographies, target pixels → source pixels, each
        explaining at least 50 of the (at most 5000, an even subsample) matches the ones before left.
    """
    config = config if config is not None else LayerSearchConfig()
    if result.confidence is None or config.confident_layers == 0:
        return []
    _, _, threshold, _ = config.pixels(tuple(result.flow.shape[-2:]))
    grid = coords_grid(1, *result.flow.shape[-2:], result.flow.device, result.flow.dtype)[0]
    sure = result.confidence[0, 0] > config.confident_above
    target = grid[:, sure].T.double().cpu().numpy()
    source = (grid + result.flow[0])[:, sure].T.double().cpu().numpy()
    step = max(1, len(target) // _CONFIDENT_MATCHES)
    target, source = target[::step], source[::step]
    return _planes_one_after_another(target, source, threshold, config.confident_layers, _CONFIDENT_SUPPORT)


def search_layers(
    result: MatchResult,
    source: torch.Tensor,
    target: torch.Tensor,
    raw_flows: RawFlows,
    refine: Refine | None = None,
    config: LayerSearchConfig | None = None,
) -> tuple[MatchResult, torch.Tensor, dict[str, torch.Tensor]]:
    """``result`` with the pixels a layer homography matches clearly better taken from it.

    Args:
        result: a batch-of-one match of ``target`` to ``source`` (flow ``(1, 2, Ht, Wt)``).
        source: ``(1, 3, Hs, Ws)`` RGB in ``[0, 1]``.
        target: ``(1, 3, Ht, Wt)``.
        raw_flows: ``raw_flows(source, target)`` gives the model's ``F_init`` both ways: of the
            target into the source ``(1, 2, Ht, Wt)`` and of the source into the target ``(1, 2, Hs, Ws)``
            (e.g. :meth:`DiffMatch.global_flows <diffmatch.models.diffmatch.DiffMatch.global_flows>`).
        refine: ``refine(source, target, flow)`` brings a ``(1, 2, Ht, Wt)`` flow to sub-pixel
            precision where candidates were taken (``None``: no refinement).
        config: when and how (``None``: :class:`LayerSearchConfig` defaults).

    Returns:
        ``(result, taken, costs)``: the new result (the same object when nothing changed), the
        ``(1, 1, Ht, Wt)`` bool mask of the pixels taken from a candidate, and, when some pixel was
        taken, what decided it, each ``(1, 1, Ht, Wt)``: ``census_cost`` (the best flow's windowed
        cost, before the refinement) and ``census_margin`` (the matcher's own flow's cost minus it)
        at every pixel, and ``distinctness`` (:attr:`LayerSearchConfig.distinct`'s measure) where
        the best flow passed the ratio test (0 elsewhere); empty when nothing was taken. A
        calibration reads them to give taken pixels their own confidence
        (:attr:`Calibrator.layer_search <diffmatch.confidence.Calibrator.layer_search>`).
    """
    config = config if config is not None else LayerSearchConfig()
    if result.flow.shape[0] != 1:
        raise ValueError(f"search_layers matches one pair at a time, got a batch of {result.flow.shape[0]}")
    nothing = torch.zeros_like(result.flow[:, :1], dtype=torch.bool)
    if config.below < 1.0 and (result.confidence is None or float(result.confidence.mean()) >= config.below):
        return result, nothing, {}
    size = tuple(target.shape[-2:])
    homographies = []
    if config.max_layers > 0:
        forward, backward = raw_flows(source, target)
        homographies = layer_homographies(forward[0], backward[0], config)
    homographies += confident_homographies(result, config)
    if not homographies:
        return result, nothing, {}
    _, _, _, window = config.pixels(size)
    target_census = census_transform(target)
    source_codes, target_codes = pack_census(census_transform(source)), pack_census(target_census)
    own = packed_matching_cost(source_codes, target_codes, result.flow, window)
    best_cost, best_flow = own, result.flow
    for matrix in homographies:
        candidate = homography_to_flow(torch.from_numpy(matrix), size).to(result.flow)
        cost = packed_matching_cost(source_codes, target_codes, candidate, window)
        better = cost < best_cost
        best_cost = torch.where(better, cost, best_cost)
        best_flow = torch.where(better, candidate, best_flow)
    taken = best_cost < config.ratio * own
    if not bool(taken.any()):
        return result, nothing, {}
    distinctness = _distinctness(source_codes, target_codes, best_flow, best_cost, window, taken)
    if config.distinct > 0:
        taken &= distinctness > config.distinct
    if bool(taken.any()):
        # The veto: with the census taken on the grid of each flow, the plane must beat the matcher's
        # own flow too (it does not where the flow turns the image and the own flow was right).
        taken = _aligned_better(source, target_census, best_flow, result.flow, window, taken)
    if not bool(taken.any()):
        return result, nothing, {}
    flow = torch.where(taken, best_flow, result.flow)
    if refine is not None:
        flow = torch.where(taken, refine(source, target, flow), flow)
    shift = torch.where(taken, flow - result.flow, torch.zeros_like(flow))
    searched = MatchResult.from_samples(result.samples + shift[:, None], init_flow=result.init_flow)
    searched.confidence, searched.confidence_tau = result.confidence, result.confidence_tau
    costs = {"census_cost": best_cost, "census_margin": own - best_cost, "distinctness": distinctness}
    return searched, taken, costs
