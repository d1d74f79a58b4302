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
import torch.nn.functional as F

from diffmatch.geometry import coords_grid, homography_to_flow, warp
from diffmatch.result import MatchResult

__all__ = [
    "LayerSearchConfig",
    "aligned_cost",
    "census_transform",
    "confident_homographies",
    "layer_homographies",
    "matching_cost",
    "search_layers",
]

RawFlow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
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


def census_transform(image: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Sparse census transform: is each of 16 neighbours brighter than the pixel?

    Args:
        image: ``(B, 3, H, W)`` RGB or ``(B, 1, H, W)`` grey in ``[0, 1]``.
        radius: the neighbours lie on the grid ``{-radius, -radius + 2, ..., radius}²`` (odd radius).

    Returns:
        ``(B, K, H, W)`` float in ``{0, 1}``, ``K = (radius + 1)²``; borders replicate the edge.
    """
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must be (B, 1 or 3, H, W), got {tuple(image.shape)}")
    if radius < 1 or radius % 2 == 0:
        raise ValueError(f"radius must be odd and >= 1, got {radius}")
    grey = image.mean(1, keepdim=True) if image.shape[1] == 3 else image
    grey = F.avg_pool2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # 3x3 blur against noise
    padded = F.pad(grey, (radius,) * 4, mode="replicate")
    h, w = grey.shape[-2:]
    offsets = range(0, 2 * radius + 1, 2)
    return torch.cat([(padded[..., y : y + h, x : x + w] > grey).float() for y in offsets for x in offsets], 1)


def matching_cost(
    source_census: torch.Tensor, target_census: torch.Tensor, flow: torch.Tensor, window: int
) -> torch.Tensor:
    """How badly ``flow`` carries the source onto the target: the windowed census difference.

    The census is taken in the source's own frame and then warped, which is what the search ranks
    candidates by (its settings were chosen with it); it compares neighbours in the source's
    directions, so where the flow turns the image it is unreliable, and :func:`aligned_cost` checks it.

    Args:
        source_census: ``(B, K, Hs, Ws)`` :func:`census_transform` of the source.
        target_census: ``(B, K, Ht, Wt)`` of the target.
        flow: ``(B, 2, Ht, Wt)`` on the target grid, ``target(x) ≈ source(x + flow(x))``, px.
        window: odd side of the averaging window.

    Returns:
        ``(B, 1, Ht, Wt)`` in ``[0, 1]``: the share of census bits that differ, averaged over the
        window; a match outside the source counts as 0.5 (a coin toss).
    """
    warped, inside = warp(source_census, flow)
    return _window_mean((warped - target_census).abs().mean(1, keepdim=True), inside, window)


def aligned_cost(source: torch.Tensor, target_census: torch.Tensor, flow: torch.Tensor, window: int) -> torch.Tensor:
    """:func:`matching_cost` with the census taken after the source is warped onto the target's grid.

    The comparison then follows the flow's local rotation and scale: under a 55° in-plane rotation
    the right flow costs about 0.3 by :func:`matching_cost`, as much as a wrong plane, and near 0 by
    this one. Its bits are not softened by the warp's interpolation, so on strongly corrupted images
    chance wins more often by it (the search lost under ImageNet-C when it ranked by it); the search
    uses it as a veto (:func:`search_layers`).

    Args:
        source: ``(B, 1, Hs, Ws)`` grey or ``(B, 3, Hs, Ws)`` RGB source image in ``[0, 1]``.
        target_census, flow, window: as :func:`matching_cost`.

    Returns:
        ``(B, 1, Ht, Wt)`` in ``[0, 1]``, as :func:`matching_cost`.
    """
    grey = source.mean(1, keepdim=True) if source.shape[1] == 3 else source
    warped, inside = warp(grey, flow)
    return _window_mean((census_transform(warped) - target_census).abs().mean(1, keepdim=True), inside, window)


def _window_mean(cost: torch.Tensor, inside: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, 1, H, W)`` per-pixel cost with 0.5 where the match left the source, averaged over a window."""
    cost = torch.where(inside[:, None], cost, torch.full_like(cost, 0.5))
    # A box mean as two 1D means (the same numbers as one 2D mean, border windows included: each is a
    # rectangle), 2k instead of k² additions per pixel.
    half = window // 2
    cost = F.avg_pool2d(cost, (1, window), stride=1, padding=(0, half), count_include_pad=False)
    return F.avg_pool2d(cost, (window, 1), stride=1, padding=(half, 0), count_include_pad=False)


def _distinctness(
    source_census: torch.Tensor, target_census: torch.Tensor, flow: torch.Tensor, cost: torch.Tensor, window: int
) -> torch.Tensor:
    """``(B, 1, Ht, Wt)``: how much the cheapest of ``flow`` moved by half a window (left, right, up,
    down) costs more than ``flow`` itself (``cost``); near 0 where the window's texture does not pin
    the match down."""
    half = window // 2
    shifted = []
    for dx, dy in ((half, 0), (-half, 0), (0, half), (0, -half)):
        offset = torch.tensor([dx, dy], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
        shifted.append(matching_cost(source_census, target_census, flow + offset, window))
    return torch.stack(shifted).amin(0) - cost


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
    raw_flow: RawFlow,
    refine: Refine | None = None,
    config: LayerSearchConfig | None = None,
) -> tuple[MatchResult, torch.Tensor, dict[str, torch.Tensor]]:
    """``result`` with the pixels a layer homography matches clearly better taken from it.

    Args:
        result: a batch-of-one match of ``target`` to ``source`` (flow ``(1, 2, Ht, Wt)``).
        source: ``(1, 3, Hs, Ws)`` RGB in ``[0, 1]``.
        target: ``(1, 3, Ht, Wt)``.
        raw_flow: ``raw_flow(a, b)`` gives the model's ``F_init`` of ``b`` into ``a``, ``(1, 2, Hb, Wb)``
            (e.g. :meth:`DiffMatch.global_flow <diffmatch.models.diffmatch.DiffMatch.global_flow>`).
        refine: ``refine(source, target, flow)`` brings a ``(1, 2, Ht, Wt)`` flow to sub-pixel
            precision where candidates were taken (``None``: no refinement).
        config: when and how (``None``: :class:`LayerSearchConfig` defaults).

    Returns:
        ``(result, taken, costs)``: the new result (the same object when nothing changed), the
        ``(1, 1, Ht, Wt)`` bool mask of the pixels taken from a candidate, and, when some pixel was
        taken, what decided it at every pixel, each ``(1, 1, Ht, Wt)``: ``census_cost`` (the best
        flow's windowed cost, before the refinement), ``census_margin`` (the matcher's own flow's
        cost minus it) and ``distinctness`` (:attr:`LayerSearchConfig.distinct`'s measure); empty
        when nothing was taken. A calibration reads them to give taken pixels their own confidence
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
        homographies = layer_homographies(raw_flow(source, target)[0], raw_flow(target, source)[0], config)
    homographies += confident_homographies(result, config)
    if not homographies:
        return result, nothing, {}
    _, _, _, window = config.pixels(size)
    source_census, target_census = census_transform(source), census_transform(target)
    own = matching_cost(source_census, target_census, result.flow, window)
    best_cost, best_flow = own, result.flow
    for matrix in homographies:
        candidate = homography_to_flow(torch.from_numpy(matrix), size).to(result.flow)
        cost = matching_cost(source_census, target_census, candidate, window)
        better = cost < best_cost
        best_cost = torch.where(better, cost, best_cost)
        best_flow = torch.where(better, candidate, best_flow)
    taken = best_cost < config.ratio * own
    if not bool(taken.any()):
        return result, nothing, {}
    distinctness = _distinctness(source_census, target_census, best_flow, best_cost, window)
    if config.distinct > 0:
        taken &= distinctness > config.distinct
    if bool(taken.any()):
        # The veto: with the census taken on the grid of each flow, the plane must beat the matcher's
        # own flow too (it does not where the flow turns the image and the own flow was right).
        grey = source.mean(1, keepdim=True)
        taken &= aligned_cost(grey, target_census, best_flow, window) < aligned_cost(grey, target_census, result.flow, window)
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
