"""Sanity pairs with exact ground truth made from one photo: identical, shifted, rotated and zoomed.

A matcher that a user would keep must get these easy cases nearly right (issue #15's goals for the
default model: identical images under 0.5 px mean flow, a 20 px shift under 1.5 px mean error, a 10°
rotation with 1.1× zoom under 3 px). :func:`sanity_pairs` builds them and :func:`sanity_errors`
scores any :class:`~diffmatch.evaluation.baselines.Method` on them; ``scripts/sanity_check.py`` prints the table
and ``tests/test_default_model.py`` checks the bundled model with the same pairs.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x; tensors
are ``(B, 2, H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from diffmatch.errors import InputError
from diffmatch.evaluation.baselines import Method
from diffmatch.geometry import coords_grid, flow_magnitude

__all__ = ["SANITY_CASES", "SanityPair", "sanity_pairs", "sanity_errors"]

# Case name -> (shift in px along x, rotation in degrees, zoom factor).
SANITY_CASES: dict[str, tuple[float, float, float]] = {
    "identical": (0.0, 0.0, 1.0),
    "shift20": (20.0, 0.0, 1.0),
    "rot10_zoom1.1": (0.0, 10.0, 1.1),
}
# Pixels this close to where the target has no source content are left out of the error.
_MARGIN = 20


@dataclass
class SanityPair:
    """One sanity pair: ``source``/``target`` ``(1, 3, H, W)`` in ``[0, 1]``, ``flow`` ``(1, 2, H, W)``
    ground truth (``target(x) = source(x + flow(x))``, px) and ``mask`` ``(1, H, W)``, where it is scored."""

    name: str
    source: torch.Tensor
    target: torch.Tensor
    flow: torch.Tensor
    mask: torch.Tensor


def _target_to_source(size: tuple[int, int], shift: float, degrees: float, zoom: float) -> np.ndarray:
    """``(2, 3)`` affine map from target to source pixels: a shift along x, or a rotation by
    ``degrees`` with a ``zoom``-fold magnification about the image centre."""
    h, w = size
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    a = math.radians(degrees)
    linear = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / zoom
    offset = centre - linear @ centre + np.array([shift, 0.0])
    return np.concatenate((linear, offset[:, None]), axis=1)


def sanity_pairs(image: np.ndarray) -> list[SanityPair]:
    """The :data:`SANITY_CASES` pairs of one photo, at its own size.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, at least 64 px on each side.

    Returns:
        One :class:`SanityPair` per case; the source is ``image`` itself and the target is rendered
        from it by the case's exact affine map (bilinear, pixel centres at integers), so the ground
        truth is exact wherever the mask is set.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 64:
        raise InputError(f"image must be (H, W, 3) uint8 with both sides >= 64, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    source = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    grid = coords_grid(1, h, w, dtype=torch.float64)[0].numpy()  # (2, H, W)
    pairs = []
    for name, (shift, degrees, zoom) in SANITY_CASES.items():
        matrix = _target_to_source((h, w), shift, degrees, zoom)
        target = cv2.warpAffine(
            image, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT
        )
        mapped = np.einsum("ij,jhw->ihw", matrix[:, :2], grid) + matrix[:, 2, None, None]
        # Scored where the match lies in the source, a margin away from any side that moved.
        moved = bool(degrees) or zoom != 1.0
        mx = _MARGIN if shift or moved else 0
        my = _MARGIN if moved else 0
        inside = (mapped[0] >= mx) & (mapped[0] <= w - 1 - mx) & (mapped[1] >= my) & (mapped[1] <= h - 1 - my)
        pairs.append(
            SanityPair(
                name=name,
                source=source,
                target=torch.from_numpy(target).permute(2, 0, 1)[None].float() / 255.0,
                flow=torch.from_numpy(mapped - grid).float()[None],
                mask=torch.from_numpy(inside)[None],
            )
        )
    return pairs


@torch.no_grad()
def sanity_errors(method: Method, image: np.ndarray) -> dict[str, float]:
    """Mean end-point error (px) of ``method`` on each sanity pair of ``image``, inside its mask.

    For ``identical`` this is the mean flow magnitude, which should be zero.
    """
    errors = {}
    for pair in sanity_pairs(image):
        flow = method(pair.source, pair.target).flow.float().cpu()
        errors[pair.name] = flow_magnitude(flow - pair.flow)[pair.mask].mean().item()
    return errors
