"""Pictures of flows, warps and uncertainty maps.

All functions take numpy arrays: images ``(H, W, 3)`` uint8 RGB, flows ``(H, W, 2)`` in pixels on the
target grid with ``target(x) ≈ source(x + flow(x))``, uncertainty ``(H, W)`` in px².
"""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import flow_to_image  # noqa: E402

from diffmatch.geometry import warp  # noqa: E402
from diffmatch.io import atomic_write_bytes  # noqa: E402

__all__ = ["flow_to_color", "warp_image", "blend_warp", "uncertainty_figure", "panel_figure", "save_figure"]


def flow_to_color(flow: np.ndarray, max_radius: float | None = None) -> np.ndarray:
    """Colour-code a flow with the Middlebury colour wheel (torchvision's ``flow_to_image``).

    Args:
        flow: ``(H, W, 2)`` flow in pixels.
        max_radius: displacement (px) shown at full saturation. ``None`` uses the flow's own
            maximum; pass the same value for two flows to compare them.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    tensor = torch.from_numpy(np.nan_to_num(np.asarray(flow, np.float32))).permute(2, 0, 1)
    if max_radius is not None:
        if max_radius <= 0:
            raise ValueError(f"max_radius must be positive, got {max_radius}")
        norm = tensor.norm(dim=0, keepdim=True)
        tensor = tensor * torch.clamp(max_radius / norm.clamp_min(1e-12), max=1.0)
        # flow_to_image normalises by the largest vector, so one extra column of length max_radius
        # pins the scale; it is cropped off again.
        pin = torch.zeros(2, tensor.shape[1], 1)
        pin[0] = max_radius
        tensor = torch.cat((tensor, pin), dim=2)
    image = flow_to_image(tensor).permute(1, 2, 0).numpy()
    return image[:, : flow.shape[1]] if max_radius is not None else image


def warp_image(source: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backward-warp an RGB source onto the target grid. Returns ``(warped uint8, valid bool)``."""
    src = torch.from_numpy(np.ascontiguousarray(source)).permute(2, 0, 1)[None].float()
    flw = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1)[None]
    warped, valid = warp(src, flw)
    return warped[0].permute(1, 2, 0).clamp(0, 255).round().byte().numpy(), valid[0].numpy()


def blend_warp(source: np.ndarray, target: np.ndarray, flow: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The source warped onto the target and blended over it; out-of-frame pixels show the target."""
    warped, valid = warp_image(source, flow)
    blend = alpha * warped.astype(np.float32) + (1 - alpha) * target.astype(np.float32)
    blend = np.where(valid[:, :, None], blend, target.astype(np.float32))
    return blend.round().astype(np.uint8)


def _figure_to_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def save_figure(path: str | os.PathLike, fig: plt.Figure) -> None:
    """Atomically write a matplotlib figure as PNG and close it."""
    atomic_write_bytes(path, _figure_to_png(fig))


def _show_uncertainty(ax: plt.Axes, fig: plt.Figure, uncertainty: np.ndarray, vmax: float | None) -> None:
    im = ax.imshow(
        uncertainty, cmap="inferno", vmin=0.0, vmax=vmax if vmax else max(float(uncertainty.max()), 1e-6)
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="variance [px²]")


def uncertainty_figure(
    uncertainty: np.ndarray, vmax: float | None = None, title: str = "uncertainty"
) -> plt.Figure:
    """A heatmap of the per-pixel flow variance (px²) with a colour bar."""
    h, w = uncertainty.shape
    fig, ax = plt.subplots(figsize=(6, 6 * h / max(w, 1) + 0.3))
    _show_uncertainty(ax, fig, uncertainty, vmax)
    ax.set_title(title)
    ax.axis("off")
    return fig


def panel_figure(
    source: np.ndarray,
    target: np.ndarray,
    flow: np.ndarray,
    uncertainty: np.ndarray | None = None,
    max_radius: float | None = None,
) -> plt.Figure:
    """Side-by-side panel: source, target, warped source over target, flow colours, uncertainty."""
    tiles = [
        ("source", source),
        ("target", target),
        ("source warped onto target", blend_warp(source, target, flow)),
        ("flow", flow_to_color(flow, max_radius)),
    ]
    n = len(tiles) + (uncertainty is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8))
    for ax, (title, image) in zip(axes, tiles):
        ax.imshow(image)
        ax.set_title(title)
        ax.axis("off")
    if uncertainty is not None:
        _show_uncertainty(axes[-1], fig, uncertainty, None)
        axes[-1].set_title("uncertainty")
        axes[-1].axis("off")
    fig.tight_layout()
    return fig
