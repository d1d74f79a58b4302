"""Two-pass matching for large viewpoint changes (PDC-Net's "H" inference mode, done with DiffMatch).

Pass 1 matches the pair as it is. Where it finds little it trusts (its mean calibrated confidence
below :attr:`TwoPassConfig.rotation_below`, as on a large in-plane rotation, which the model's
features do not follow), the source is also matched rotated about its centre by each of
:attr:`TwoPassConfig.rotations`, and the most confident of these tries takes pass 1's place when it
beats it by :attr:`TwoPassConfig.rotation_margin`. A homography is fitted (MAGSAC++) to the kept
pass's most confident matches; when it moves the image a lot (:attr:`TwoPassConfig.min_motion`) and
explains enough of them (:attr:`TwoPassConfig.min_inliers`), and optionally of matches the
calibrated confidence expects to be mostly right (:attr:`TwoPassConfig.min_confidence`), the source
is warped by it onto the target's frame, so that what remains is a small motion, and pass 2 matches
the warped source to the target. Pass 2's flow ``f2`` points into the warped source; through the
homography ``H`` (target pixels → source pixels) it becomes a flow into the source,
``f(x) = H(x + f2(x)) - x``. Each pixel keeps the pass whose match is more confident (the calibrated
confidence, or the smaller variance without one), and only where pass 2's match lands inside the
source.

Flow convention: on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels, channel 0 = x.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from diffmatch.geometry import coords_grid, flow_magnitude, homography_to_flow, warp
from diffmatch.geometry.estimation import estimate_homography
from diffmatch.result import MatchResult

__all__ = [
    "TwoPassConfig",
    "compose_with_homography",
    "concatenate_results",
    "match_two_pass",
    "rotation_homography",
]

Matcher = Callable[[torch.Tensor, torch.Tensor], MatchResult]


@dataclass(frozen=True)
class TwoPassConfig:
    """When and how the second pass runs.

    Attributes:
        num_matches: pass 1's most confident matches the homography is fitted to.
        threshold: MAGSAC++'s inlier threshold in source pixels.
        min_inliers: the share of those matches the homography must explain, or pass 2 is skipped
            (a scene far from one plane: warping it by one homography tears it apart).
        min_motion: the homography's mean displacement over the target, as a share of the target's
            larger side, below which pass 2 is skipped (pass 1 already saw a small motion).
        min_confidence: the mean calibrated confidence of those matches (the share of them expected
            right) below which pass 2 is skipped: images with nothing in common, such as two noise
            images (0.26), give a homography fitted to guesses, and pass 2 costs time for nothing.
            Off by default (0): strongly corrupted pairs with a large motion (fog, frost) score as
            low and still gain from pass 2 (ImageNet-C hard pairs: 8.47 px with the test off, 9.14
            with 0.5). Results without a confidence skip this test.
        rotations: in-plane angles in degrees (positive: clockwise on screen, the image y axis
            pointing down) at which the source is matched again when pass 1's mean confidence is
            below ``rotation_below``; the most confident pass, if it beats pass 1, replaces it.
            The model follows rotations of about ±30° by itself, so ±45° cover about 15–75°
            (README, "Two-pass matching"). Add 90, -90 and 180 for photos that may be on their side
            or upside down (each costs a pass where the search runs).
        rotation_below: pass 1's mean calibrated confidence over the target below which the
            rotations are tried (0: never). On training photos, pass 1 scored 0.57–0.97 on stereo
            scene pairs, 0.38–0.95 on synthetic pairs and 0.18–0.79 on wide orbits; on the held-out
            in-plane rotations of 40–60° that it did not follow, 0.01–0.28. Results without a
            confidence skip the search.
        rotation_margin: how much higher a rotated pass's mean confidence must be than pass 1's
            to replace it. Where nothing matches (wide orbits that pass 1 got wrong), every try
            scores about as low as pass 1 (a best try of 0.010 against pass 1's 0.006) and the
            winner is a guess; a rotation the search finds scores 0.4–0.7 against 0.01–0.28.
    """

    num_matches: int = 5000
    threshold: float = 3.0
    min_inliers: float = 0.5
    min_motion: float = 0.1
    min_confidence: float = 0.0
    rotations: tuple[float, ...] = (45.0, -45.0)
    rotation_below: float = 0.35
    rotation_margin: float = 0.1

    def __post_init__(self) -> None:
        if self.num_matches < 4 or self.threshold <= 0:
            raise ValueError(f"num_matches must be >= 4 and threshold > 0, got {self.num_matches}, {self.threshold}")
        if not 0.0 <= self.min_inliers <= 1.0 or self.min_motion < 0:
            raise ValueError(f"min_inliers must be in [0, 1] and min_motion >= 0, got {self.min_inliers}, {self.min_motion}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 <= self.rotation_below <= 1.0 or not 0.0 <= self.rotation_margin <= 1.0:
            raise ValueError(
                f"rotation_below and rotation_margin must be in [0, 1], got {self.rotation_below}, {self.rotation_margin}"
            )
        angles = tuple(float(a) for a in self.rotations)
        if not all(math.isfinite(a) for a in angles):
            raise ValueError(f"rotations must be finite angles in degrees, got {self.rotations}")
        object.__setattr__(self, "rotations", angles)


def rotation_homography(
    angle: float, target_size: tuple[int, int], source_size: tuple[int, int]
) -> torch.Tensor:
    """``(3, 3)`` float64 homography, target pixels → source pixels, of a rotation by ``angle`` degrees
    about the images' centres (positive: clockwise on screen, the image y axis pointing down)."""
    (ht, wt), (hs, ws) = target_size, source_size
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    from_target = torch.tensor([[1.0, 0.0, -(wt - 1) / 2], [0.0, 1.0, -(ht - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    rotate = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    to_source = torch.tensor([[1.0, 0.0, (ws - 1) / 2], [0.0, 1.0, (hs - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return to_source @ rotate @ from_target


def compose_with_homography(flow: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """Flow into the source from a flow into the source warped by ``homography``.

    Args:
        flow: ``(..., 2, H, W)`` flow on the target grid into the warped source (which has the
            target's size): ``target(x) ≈ warped(x + flow(x))``.
        homography: ``(3, 3)`` target pixels → source pixels; ``warped(p) = source(H p)``.

    Returns:
        ``(..., 2, H, W)`` flow into the source: ``H(x + flow(x)) - x``.
    """
    h, w = flow.shape[-2:]
    grid = coords_grid(1, h, w, flow.device, torch.float64)[0]
    points = grid + flow.double()
    ones = torch.ones_like(points[..., :1, :, :])
    mapped = torch.einsum("ij,...jhw->...ihw", homography.double().to(flow.device), torch.cat((points, ones), -3))
    z = mapped[..., 2:, :, :]
    z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    return (mapped[..., :2, :, :] / z - grid).to(flow.dtype)


def _match_warped(
    match: Matcher, source: torch.Tensor, target: torch.Tensor, homography: torch.Tensor
) -> tuple[MatchResult, MatchResult, torch.Tensor]:
    """Match ``target`` to ``source`` warped by ``homography`` (target pixels → source pixels).

    Returns:
        ``(raw, composed, inside)``: the pass as matched (flows into the warped source), the same
        pass with its hypotheses and ``init_flow`` composed into flows into ``source`` (confidence
        kept), and ``(1, H, W)`` where its match lands inside ``source``.
    """
    to_source = homography_to_flow(homography.to(torch.float64), tuple(target.shape[-2:])).to(target.dtype)
    warped, _ = warp(source, to_source.to(source.device))
    raw = match(warped.clamp(0, 1), target)
    composed = MatchResult.from_samples(compose_with_homography(raw.samples, homography))
    if raw.init_flow is not None:
        composed.init_flow = compose_with_homography(raw.init_flow, homography)
    composed.confidence, composed.confidence_tau = raw.confidence, raw.confidence_tau
    hs, ws = source.shape[-2:]
    landing = coords_grid(1, *target.shape[-2:], composed.flow.device, composed.flow.dtype) + composed.flow
    inside = (landing[:, 0] >= -0.5) & (landing[:, 0] <= ws - 0.5) & (landing[:, 1] >= -0.5) & (landing[:, 1] <= hs - 0.5)
    return raw, composed, inside


def _search_rotations(
    search: Matcher, source: torch.Tensor, target: torch.Tensor, first: MatchResult, config: TwoPassConfig
) -> MatchResult:
    """Pass 1, or the most confident of the passes on the source rotated by ``config.rotations`` where
    it beats pass 1 by ``config.rotation_margin``."""
    if not config.rotations or first.confidence is None or float(first.confidence.mean()) >= config.rotation_below:
        return first
    best, best_score = first, float(first.confidence.mean()) + config.rotation_margin
    for angle in config.rotations:
        homography = rotation_homography(angle, tuple(target.shape[-2:]), tuple(source.shape[-2:]))
        raw, composed, _ = _match_warped(search, source, target, homography)
        score = float(raw.confidence.mean()) if raw.confidence is not None else -math.inf
        if score > best_score:
            best, best_score = composed, score
    return best


def _weights(result: MatchResult) -> torch.Tensor:
    """``(B, 1, H, W)``: higher is a better match (the calibrated confidence, else minus the variance)."""
    return result.confidence if result.confidence is not None else -result.uncertainty


def _fit(result: MatchResult, source_size: tuple[int, int], config: TwoPassConfig) -> torch.Tensor | None:
    """Pass 1's homography, or ``None`` when pass 2 should not run."""
    if config.min_confidence > 0 and result.confidence is not None:
        confidence = result.confidence.flatten()
        expected_right = confidence.topk(min(config.num_matches, confidence.numel())).values.mean()
        if float(expected_right) < config.min_confidence:
            return None
    try:
        # A fixed generator: ties among equally confident matches are broken the same way every time.
        estimate = estimate_homography(
            result,
            num=config.num_matches,
            mode="top_k",
            threshold=config.threshold,
            source_size=source_size,
            generator=torch.Generator().manual_seed(0),
        )
    except ValueError:
        return None
    if estimate.inliers.mean() < config.min_inliers:
        return None
    homography = torch.from_numpy(estimate.matrix)
    h, w = result.flow.shape[-2:]
    motion = flow_magnitude(homography_to_flow(homography, (h, w))).mean()
    if not torch.isfinite(motion) or float(motion) < config.min_motion * max(h, w):
        return None
    if not np.isfinite(estimate.matrix).all() or np.linalg.det(estimate.matrix) <= 0:  # a mirror: no view change
        return None
    return homography


def match_two_pass(
    match: Matcher,
    source: torch.Tensor,
    target: torch.Tensor,
    config: TwoPassConfig | None = None,
    search: Matcher | None = None,
) -> tuple[MatchResult, list[bool]]:
    """Match with a second pass on the source warped by pass 1's homography, where that helps.

    Args:
        match: matches a batch of one, ``(1, 3, Hs, Ws)`` source and ``(1, 3, Ht, Wt)`` target images in
            ``[0, 1]``, to a :class:`MatchResult` (e.g. a bound :meth:`DiffMatcher.match`).
        source: ``(B, 3, Hs, Ws)`` images in ``[0, 1]``.
        target: ``(B, 3, Ht, Wt)`` images.
        config: the pass-2 rule (``None``: :class:`TwoPassConfig` defaults).
        search: matches the rotation search's tries (``None``: ``match``); :class:`DiffMatcher`
            gives one that draws from a copy of its generator, so that the passes after the search
            draw the same noise whether it ran or not.

    Returns:
        ``(result, used)``: the combined result (``flow`` ``(B, 2, Ht, Wt)`` into the source, its
        hypotheses, variance, ``init_flow`` and ``confidence`` taken per pixel from the pass kept
        there), and per pair whether pass 2 ran.
    """
    config = config if config is not None else TwoPassConfig()
    results, used = [], []
    for src, tgt in zip(source, target):
        src, tgt = src[None], tgt[None]
        first = _search_rotations(search or match, src, tgt, match(src, tgt), config)
        homography = _fit(first, tuple(src.shape[-2:]), config)
        if homography is None:
            results.append(first)
            used.append(False)
            continue
        raw, second, inside = _match_warped(match, src, tgt, homography)
        take = (_weights(raw) > _weights(first)) & inside[:, None]
        combined = MatchResult.from_samples(torch.where(take[:, None], second.samples, first.samples))
        if first.init_flow is not None and second.init_flow is not None:
            combined.init_flow = torch.where(take, second.init_flow, first.init_flow)
        if first.confidence is not None and second.confidence is not None:
            combined.confidence = torch.where(take, second.confidence, first.confidence)
            combined.confidence_tau = first.confidence_tau
        results.append(combined)
        used.append(True)
    return concatenate_results(results), used


def concatenate_results(results: list[MatchResult]) -> MatchResult:
    """One result for a batch from per-pair results (hypotheses, ``init_flow`` and ``confidence`` kept)."""
    if len(results) == 1:
        return results[0]
    out = MatchResult.from_samples(torch.cat([r.samples for r in results]))
    if all(r.init_flow is not None for r in results):
        out.init_flow = torch.cat([r.init_flow for r in results])
    if all(r.confidence is not None for r in results):
        out.confidence = torch.cat([r.confidence for r in results])
        out.confidence_tau = results[0].confidence_tau
    return out
