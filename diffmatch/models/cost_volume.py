"""Matching costs and the flows read from them.

All flows follow the project convention: on the target grid, ``target(x) ≈ source(x + flow(x))``,
in pixels of the feature maps, channel 0 = x, ``(B, 2, H, W)``; ``align_corners=False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from diffmatch.features.base import l2_normalize
from diffmatch.geometry import check_flow, coords_grid, pixel_to_normalized, warp

__all__ = [
    "global_correlation",
    "soft_argmax_flow",
    "argmax_flow",
    "local_correlation",
    "local_feature_correlation",
]


def _official_normalize(features: torch.Tensor) -> torch.Tensor:
    # The official build_local_corr_sr's arithmetic: the epsilon is added to the norm, not a floor.
    return features / (features.norm(dim=1, keepdim=True) + 1e-5)


def _check_pair(source: torch.Tensor, target: torch.Tensor) -> None:
    if source.ndim != 4 or target.ndim != 4:
        raise ValueError(
            f"features must be (B, C, H, W), got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    if source.shape[:2] != target.shape[:2]:
        raise ValueError(f"feature batch/channels differ: {tuple(source.shape)} vs {tuple(target.shape)}")


def global_correlation(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every target position with every source position (paper Eq. 8).

    Args:
        source: ``(B, C, Hs, Ws)`` source features.
        target: ``(B, C, Ht, Wt)`` target features.

    Returns:
        ``(B, Ht * Wt, Hs * Ws)`` correlation; row ``i`` holds target pixel ``i``'s similarities.
    """
    _check_pair(source, target)
    src = rearrange(l2_normalize(source), "b c h w -> b c (h w)")
    tgt = rearrange(l2_normalize(target), "b c h w -> b (h w) c")
    return tgt @ src


def _source_coords(source_size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    hs, ws = source_size
    return rearrange(coords_grid(1, hs, ws, like.device, like.dtype), "1 c h w -> (h w) c")


def soft_argmax_flow(
    correlation: torch.Tensor,
    target_size: tuple[int, int],
    source_size: tuple[int, int],
    temperature: float = 0.02,
) -> torch.Tensor:
    """Initial flow as the soft-argmax of the correlation (the paper's F_init).

    Each target pixel's match is the softmax(correlation / temperature)-weighted mean of the source
    pixel coordinates.

    Args:
        correlation: ``(B, Ht * Wt, Hs * Ws)`` from :func:`global_correlation`.
        target_size: ``(Ht, Wt)``.
        source_size: ``(Hs, Ws)``.
        temperature: softmax temperature on cosine similarities; smaller is closer to a hard argmax.

    Returns:
        ``(B, 2, Ht, Wt)`` flow in feature pixels, ``target(x) ≈ source(x + flow(x))``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    ht, wt = target_size
    prob = torch.softmax(correlation / temperature, dim=-1)
    match = prob @ _source_coords(source_size, correlation)  # (B, HtWt, 2)
    match = rearrange(match, "b (h w) c -> b c h w", h=ht, w=wt)
    return match - coords_grid(correlation.shape[0], ht, wt, correlation.device, correlation.dtype)


def argmax_flow(
    correlation: torch.Tensor, target_size: tuple[int, int], source_size: tuple[int, int]
) -> torch.Tensor:
    """Initial flow as the hard argmax of the correlation (what the official DiffMatch code does).

    Same arguments and return value as :func:`soft_argmax_flow`.
    """
    ht, wt = target_size
    best = correlation.argmax(dim=-1)  # (B, HtWt)
    match = _source_coords(source_size, correlation)[best]  # (B, HtWt, 2)
    match = rearrange(match, "b (h w) c -> b c h w", h=ht, w=wt)
    return match - coords_grid(correlation.shape[0], ht, wt, correlation.device, correlation.dtype)


def _window_offsets(radius: int, x_major: bool, like: torch.Tensor) -> torch.Tensor:
    """``(2, K)`` window offsets ``(dx, dy)`` over ``[-R, R]²``; ``x_major``: ``dx`` is the slow index."""
    steps = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
    slow, fast = torch.meshgrid(steps, steps, indexing="ij")
    dx, dy = (slow, fast) if x_major else (fast, slow)
    return torch.stack((dx.flatten(), dy.flatten()))


def local_correlation(
    correlation: torch.Tensor,
    flow: torch.Tensor,
    source_size: tuple[int, int],
    radius: int = 4,
    x_major: bool = False,
) -> torch.Tensor:
    """Local cost: the correlation in a ``(2R+1)²`` window around each target pixel's match.

    For target pixel ``x`` with match ``p = x + flow(x)`` in the source, channel ``k`` holds the
    correlation of ``x`` with source position ``p + d_k`` (bilinear, zero outside the source), where
    the offsets ``d_k = (dx, dy)`` run over ``[-R, R]²``, ``dy`` the slow index (or ``dx`` with
    ``x_major``, the order of the official code's ``local_Corr``). Sampling
    the correlation volume is cheap, and for cosine correlation it equals correlating with
    bilinearly sampled normalised features, since both are linear in the source features.

    Args:
        correlation: ``(B, Ht * Wt, Hs * Ws)`` from :func:`global_correlation`.
        flow: ``(B, 2, Ht, Wt)`` flow in source feature pixels, ``target(x) ≈ source(x + flow(x))``.
        source_size: ``(Hs, Ws)``.
        radius: window radius ``R``.
        x_major: channel order with ``dx`` as the slow index (official DiffMatch).

    Returns:
        ``(B, (2R+1)², Ht, Wt)`` local cost.
    """
    check_flow(flow)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    b, _, ht, wt = flow.shape
    hs, ws = source_size
    if correlation.shape != (b, ht * wt, hs * ws):
        raise ValueError(f"correlation must be (B, Ht*Wt, Hs*Ws) = {(b, ht * wt, hs * ws)}, got {tuple(correlation.shape)}")
    offsets = _window_offsets(radius, x_major, flow).view(1, 2, -1, 1)  # (1, 2, K, 1)
    centres = rearrange(coords_grid(b, ht, wt, flow.device, flow.dtype) + flow, "b c h w -> (b h w) c 1 1")
    grid = pixel_to_normalized(centres + offsets, (hs, ws))  # (B*Ht*Wt, 2, K, 1)
    volume = rearrange(correlation, "b n (h w) -> (b n) 1 h w", h=hs, w=ws)
    sampled = F.grid_sample(volume, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros", align_corners=False)
    return rearrange(sampled, "(b h w) 1 k 1 -> b k h w", b=b, h=ht, w=wt)


def local_feature_correlation(
    source: torch.Tensor,
    target: torch.Tensor,
    flow: torch.Tensor,
    radius: int = 4,
    x_major: bool = False,
    normalize_after_sampling: bool = False,
) -> torch.Tensor:
    """Local cost computed from features, without a global volume: memory ``O(B C H W)``.

    Equals ``local_correlation(global_correlation(source, target), flow, source_size, radius)`` (the
    stage-1 cost), but loops over the ``(2R+1)²`` offsets with one ``grid_sample`` of the
    L2-normalised source features each, so it works at 256² where a global volume (``256⁴`` entries)
    cannot be built. Channel ``k`` holds the cosine similarity of target pixel ``x`` with the source at
    ``x + flow(x) + d_k`` (bilinear, zero outside the source), offsets ``d_k = (dx, dy)`` over
    ``[-R, R]²``, ``dy`` the slow index (``dx`` with ``x_major``).

    With ``normalize_after_sampling`` the source features are sampled first and the samples
    L2-normalised, both as ``x / (|x| + 1e-5)`` (the official stage-2 cost, ``build_local_corr_sr``);
    between pixels this differs from sampling normalised features.

    Args:
        source: ``(B, C, Hs, Ws)`` source features.
        target: ``(B, C, Ht, Wt)`` target features.
        flow: ``(B, 2, Ht, Wt)`` flow in source feature pixels, ``target(x) ≈ source(x + flow(x))``.
        radius: window radius ``R``.
        x_major: channel order with ``dx`` as the slow index (official DiffMatch).
        normalize_after_sampling: L2-normalise the sampled source features instead of the map.

    Returns:
        ``(B, (2R+1)², Ht, Wt)`` local cost.
    """
    check_flow(flow)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if source.ndim != 4 or target.ndim != 4 or source.shape[:2] != target.shape[:2]:
        raise ValueError(f"features must be (B, C, H, W) alike, got {tuple(source.shape)} and {tuple(target.shape)}")
    if flow.shape[0] != target.shape[0] or flow.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"flow must be (B, 2, Ht, Wt) = {(target.shape[0], 2, *target.shape[-2:])}, got {tuple(flow.shape)}")
    src = source if normalize_after_sampling else l2_normalize(source)
    tgt = _official_normalize(target) if normalize_after_sampling else l2_normalize(target)
    costs = []
    for dx, dy in _window_offsets(radius, x_major, flow).t():
        sampled = warp(src, flow + torch.stack((dx, dy)).view(1, 2, 1, 1))[0]
        if normalize_after_sampling:
            sampled = _official_normalize(sampled)
        costs.append((sampled * tgt).sum(1))
    return torch.stack(costs, dim=1)
