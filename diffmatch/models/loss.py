"""The masked flow loss both stages train with (paper Eq. 9, or the end-point error).

Flows here are the models' normalised flows on a square grid (``(B, 2, s, s)``: the pixel flow on that
grid divided by ``s``), target grid, ``target(x) ≈ source(x + flow(x))``, channel 0 = x.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["grid_mask", "masked_flow_loss"]


def grid_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Where the ground truth is valid on the grid of ``like`` (``(B, 2, s, s)``), as ``(B, 1, s, s)`` bool.

    A grid cell counts when more than 99 % of the image pixels it covers are valid (area resizing).

    Args:
        mask: ``(B, H, W)`` bool at the image's size, or ``None`` (everything valid).
        like: the flow on the grid.
    """
    if mask is None:
        return torch.ones_like(like[:, :1], dtype=torch.bool)
    return F.interpolate(mask[:, None].float(), size=tuple(like.shape[-2:]), mode="area") > 0.99


def masked_flow_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: Literal["mse", "epe"] = "mse"
) -> torch.Tensor:
    """Mean over the valid cells of the squared error (``mse``, Eq. 9) or its norm (``epe``).

    Args:
        pred: ``(B, 2, s, s)`` predicted clean flow.
        target: ``(B, 2, s, s)`` true flow.
        mask: ``(B, 1, s, s)`` bool, the cells that count (:func:`grid_mask`).
        kind: ``mse`` (squared Euclidean error) or ``epe`` (Euclidean error; less dominated by the few
            large errors, as RAFT and GLU-Net train).

    Returns:
        The scalar loss (0 when no cell is valid).
    """
    per_cell = ((pred - target) ** 2).sum(1, keepdim=True)
    if kind == "epe":
        per_cell = (per_cell + 1e-12).sqrt()
    return (per_cell * mask).sum() / mask.sum().clamp_min(1)
