"""The census matching cost the layer search ranks flows by.

:func:`census_transform` turns an image into bits (is each of 16 neighbours brighter than the
pixel?), which brightness and contrast changes leave alone. :func:`matching_cost` scores how badly a
flow carries the source onto the target: the share of bits that differ between the target's census
and the source's census warped by the flow (bilinearly), averaged over a window. :func:`aligned_cost`
takes the census after the source is warped, which follows the flow's local rotation.

The search scores many flows against the same two images, so it packs each census once into one
integer per pixel (:func:`pack_census`) and scores with :func:`packed_matching_cost`: a bilinear warp of
bits, compared with bits that are each 0 or 1, costs the interpolation weights times the Hamming
distances of the four neighbouring codes, which is one table look-up per corner instead of a warp of
16 channels. The two give the same numbers (to float rounding); the packed one is about twice as fast.

Flow convention: on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels, channel 0 = x.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from diffmatch.geometry import warp

__all__ = [
    "CENSUS_REACH",
    "PackedCensus",
    "aligned_cost",
    "census_transform",
    "matching_cost",
    "pack_census",
    "packed_matching_cost",
]

CENSUS_REACH = 4  # px: how far from a pixel the census reads (the 3x3 blur and the default radius 3)
_MAX_BITS = 48  # bits a packed code holds (16 per table look-up)
_POPCOUNT: dict[torch.device, torch.Tensor] = {}  # the number of set bits of every 16-bit code, per device


class PackedCensus(NamedTuple):
    """A census with each pixel's bits packed into one integer (:func:`pack_census`).

    Attributes:
        codes: ``(B, H, W)`` int64, bit ``k`` is the ``k``-th neighbour's comparison.
        bits: how many bits each code has (the census's ``K``).
    """

    codes: torch.Tensor
    bits: int


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


def pack_census(census: torch.Tensor) -> PackedCensus:
    """``census`` ``(B, K, H, W)`` of 0/1 (:func:`census_transform`, ``K <= 48``) as one integer per pixel."""
    if census.ndim != 4 or not 1 <= census.shape[1] <= _MAX_BITS:
        raise ValueError(f"census must be (B, K, H, W) with 1 <= K <= {_MAX_BITS}, got {tuple(census.shape)}")
    bits = census > 0.5
    codes = torch.zeros_like(bits[:, 0], dtype=torch.int64)
    for k in range(census.shape[1]):
        codes |= bits[:, k].to(torch.int64) << k
    return PackedCensus(codes, census.shape[1])


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
        ``(B, 1, Ht, Wt)`` in ``[0, 1]``: the share of census bits that differ (the source's bits
        warped bilinearly), averaged over the window; a match outside the source counts as 0.5 (a
        coin toss).
    """
    if source_census.shape[1] != target_census.shape[1]:
        raise ValueError(f"the censuses differ in bits: {source_census.shape[1]} and {target_census.shape[1]}")
    return packed_matching_cost(pack_census(source_census), pack_census(target_census), flow, window)


def packed_matching_cost(source: PackedCensus, target: PackedCensus, flow: torch.Tensor, window: int) -> torch.Tensor:
    """:func:`matching_cost` of packed censuses (:func:`pack_census`), the same numbers, faster.

    Args:
        source: the source's packed census, ``codes`` ``(B, Hs, Ws)``.
        target: the target's, ``codes`` ``(B, Ht, Wt)``.
        flow: ``(B, 2, Ht, Wt)`` on the target grid, ``target(x) ≈ source(x + flow(x))``, px.
        window: odd side of the averaging window.

    Returns:
        ``(B, 1, Ht, Wt)`` in ``[0, 1]``, as :func:`matching_cost`.
    """
    if source.bits != target.bits:
        raise ValueError(f"the censuses differ in bits: {source.bits} and {target.bits}")
    b, _, ht, wt = flow.shape
    hs, ws = source.codes.shape[-2:]
    rows = torch.arange(ht, device=flow.device, dtype=flow.dtype).view(1, -1, 1)
    cols = torch.arange(wt, device=flow.device, dtype=flow.dtype).view(1, 1, -1)
    x, y = cols + flow[:, 0], rows + flow[:, 1]
    inside = (x >= -0.5) & (x <= ws - 0.5) & (y >= -0.5) & (y <= hs - 0.5)
    # Bilinear as grid_sample samples with zero padding: the four neighbouring codes, a code outside
    # the source being 0. A zero border around the codes holds them; a match farther out is a coin
    # toss anyway (``inside``), so its clamped neighbours do not matter.
    codes = F.pad(source.codes, (1, 1, 1, 1)).reshape(b, -1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0 = x0.long().clamp(-1, ws - 1) + 1
    y0 = y0.long().clamp(-1, hs - 1) + 1
    index = (y0 * (ws + 2) + x0).reshape(b, -1)
    total = torch.zeros_like(x)
    for step, weight in ((0, (1 - fx) * (1 - fy)), (1, fx * (1 - fy)), (ws + 2, (1 - fx) * fy), (ws + 3, fx * fy)):
        differ = torch.gather(codes, 1, index + step).view(b, ht, wt) ^ target.codes
        total += weight * _popcount(differ, source.bits)
    return _window_mean((total / source.bits)[:, None], inside, window)


def aligned_cost(source: torch.Tensor, target_census: torch.Tensor, flow: torch.Tensor, window: int) -> torch.Tensor:
    """:func:`matching_cost` with the census taken after the source is warped onto the target's grid.

    The comparison then follows the flow's local rotation and scale: under a 55° in-plane rotation
    the right flow costs about 0.3 by :func:`matching_cost`, as much as a wrong plane, and near 0 by
    this one. Its bits are not softened by the warp's interpolation, so on strongly corrupted images
    chance wins more often by it (the search lost under ImageNet-C when it ranked by it); the search
    uses it as a veto (:func:`~diffmatch.refinement.layer_search.search_layers`).

    Args:
        source: ``(B, 1, Hs, Ws)`` grey or ``(B, 3, Hs, Ws)`` RGB source image in ``[0, 1]``.
        target_census, flow, window: as :func:`matching_cost`.

    Returns:
        ``(B, 1, Ht, Wt)`` in ``[0, 1]``, as :func:`matching_cost`.
    """
    grey = source.mean(1, keepdim=True) if source.shape[1] == 3 else source
    warped, inside = warp(grey, flow)
    return _window_mean((census_transform(warped) - target_census).abs().mean(1, keepdim=True), inside, window)


def _popcount(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The number of set bits of each of the ``codes`` (``bits`` wide), as float."""
    table = _POPCOUNT.get(codes.device)
    if table is None:
        table = torch.tensor([bin(i).count("1") for i in range(1 << 16)], dtype=torch.float32, device=codes.device)
        _POPCOUNT[codes.device] = table
    count = table[codes & 0xFFFF]
    for shift in range(16, bits, 16):
        count = count + table[(codes >> shift) & 0xFFFF]
    return count


def _window_mean(cost: torch.Tensor, inside: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, 1, H, W)`` per-pixel cost with 0.5 where the match left the source, averaged over a
    ``window`` × ``window`` box (near the border, over the part of the box inside the image)."""
    cost = torch.where(inside[:, None], cost, torch.full_like(cost, 0.5))
    return _box_mean(_box_mean(cost, 3, window), 2, window)


def _box_mean(values: torch.Tensor, dim: int, window: int) -> torch.Tensor:
    """The mean of ``values`` over ``window`` neighbours along ``dim`` (centred; fewer at the ends),
    from running sums (in float64, so the differences of long sums keep float32's precision): the
    same cost whatever the window, where a pooling adds ``window`` numbers per pixel."""
    size, half = values.shape[dim], window // 2
    sums = torch.cumsum(values.double(), dim)
    # Running sums padded so that every window is one difference: ``half + 1`` zeros before (a window
    # that starts before the first value) and the total ``half`` times after (one that ends after the last).
    before = torch.zeros_like(sums.narrow(dim, 0, 1)).expand(*[half + 1 if d == dim else -1 for d in range(values.ndim)])
    after = sums.narrow(dim, size - 1, 1).expand(*[half if d == dim else -1 for d in range(values.ndim)])
    sums = torch.cat((before, sums, after), dim)
    totals = sums.narrow(dim, window, size) - sums.narrow(dim, 0, size)
    index = torch.arange(size, device=values.device)
    count = ((index + half + 1).clamp(max=size) - (index - half).clamp(min=0)).to(torch.float64)
    shape = [1] * values.ndim
    shape[dim] = size
    return (totals / count.view(shape)).to(values.dtype)
