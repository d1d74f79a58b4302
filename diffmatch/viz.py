"""Pictures of flows, warps and uncertainty maps.

All functions take numpy arrays: images ``(H, W, 3)`` uint8 RGB, flows ``(H, W, 2)`` in pixels on the
target grid with ``target(x) ≈ source(x + flow(x))``, uncertainty ``(H, W)`` in px².

The single pictures (:func:`flow_to_color`, :func:`blend_warp`, :func:`uncertainty_to_color`) are
array operations; matplotlib, which takes about a second to import and more to draw, is imported only
for the figures (:func:`panel_figure`, :func:`uncertainty_figure`).
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from diffmatch.geometry import warp
from diffmatch.io import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.pyplot as plt

__all__ = [
    "figure_to_png",
    "flow_to_color",
    "warp_image",
    "blend_warp",
    "uncertainty_to_color",
    "uncertainty_figure",
    "panel_figure",
    "save_figure",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def __getattr__(name: str) -> Any:
    # ``from diffmatch.viz import plt`` still works, importing matplotlib only then.
    if name == "plt":
        return _pyplot()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from torchvision.utils import flow_to_image

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


def uncertainty_to_color(uncertainty: np.ndarray, vmax: float | None = None, legend: bool = True) -> np.ndarray:
    """Colour an uncertainty map with matplotlib's ``inferno`` colour map (OpenCV's copy of it).

    Args:
        uncertainty: ``(H, W)`` variance in px².
        vmax: variance shown at the top of the scale; ``None`` uses the map's maximum.
        legend: append a colour bar on the right, labelled with ``0`` and ``vmax`` in px².

    Returns:
        ``(H, W[+bar], 3)`` uint8 RGB image; NaN and negative values show as 0.
    """
    values = np.nan_to_num(np.asarray(uncertainty, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if values.ndim != 2:
        raise ValueError(f"uncertainty must be an (H, W) array, got shape {values.shape}")
    top = float(vmax) if vmax else max(float(values.max(initial=0.0)), 1e-6)
    levels = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    return _with_color_bar(image, top) if legend else image


def _has_glyph(font: Any, char: str) -> bool:
    """Whether ``font`` draws ``char`` itself rather than its placeholder box (PIL's default font lacks "²")."""
    missing = font.getmask("\U0010fffd")  # a private-use code point no font draws
    drawn = font.getmask(char)
    return drawn.size != missing.size or bytes(drawn) != bytes(missing)


def _draw_label(draw: Any, xy: tuple[int, int], text: str, font: Any, size: int, ink: bool = True) -> int:
    """Draw ``text`` (``None`` ``draw``: only measure) and return the right edge of its ink.

    A trailing "²" that the font cannot draw is written as a raised "2" in a smaller size, so the
    unit reads px² with any font.
    """
    from PIL import ImageFont

    parts = [(text, font, 0)]
    if text.endswith("²") and not _has_glyph(font, "²"):
        small = ImageFont.load_default(size=max(6, round(size * 0.65)))
        parts = [(text[:-1], font, 0), ("2", small, -round(size * 0.15))]
    x, y = xy
    right = x
    for part, face, dy in parts:
        if ink:
            draw.text((x, y + dy), part, fill="black", font=face)
        right = max(right, draw.textbbox((x, y + dy), part, font=face)[2])
        x += round(draw.textlength(part, font=face))
    return right


def _with_color_bar(image: np.ndarray, top: float) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    h, w = image.shape[:2]
    if h < 32:  # too small to label legibly
        return image
    size = int(np.clip(h // 28, 10, 24))
    font = ImageFont.load_default(size=size)
    unit = "px²" if isinstance(font, ImageFont.FreeTypeFont) else "px^2"  # the bitmap font has no sizes
    labels = (f"{top:.3g} {unit}", "0")
    gap, bar, pad = max(3, h // 64), max(8, h // 24), 3
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(_draw_label(measure, (0, 0), t, font, size, ink=False) for t in labels) + 2 * pad
    ramp = np.linspace(255, 0, h).round().astype(np.uint8)[:, None].repeat(bar, axis=1)
    colors = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    canvas = Image.new("RGB", (w + gap + bar + width, h), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    canvas.paste(Image.fromarray(colors), (w + gap, 0))
    draw = ImageDraw.Draw(canvas)
    left = w + gap + bar + pad
    _draw_label(draw, (left, round(size * 0.15)), labels[0], font, size)
    _draw_label(draw, (left, h - size - 3), labels[1], font, size)
    return np.asarray(canvas)


def figure_to_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def save_figure(path: str | os.PathLike, fig: plt.Figure) -> None:
    """Atomically write a matplotlib figure as PNG and close it."""
    atomic_write_bytes(path, figure_to_png(fig))


def _show_uncertainty(ax: plt.Axes, fig: plt.Figure, uncertainty: np.ndarray, vmax: float | None) -> None:
    im = ax.imshow(
        uncertainty, cmap="inferno", vmin=0.0, vmax=vmax if vmax else max(float(uncertainty.max()), 1e-6)
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="variance [px²]")


def _shrink(image: np.ndarray, side: int) -> tuple[np.ndarray, float, float]:
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    return small, small.shape[0] / h, small.shape[1] / w


def _for_display(
    source: np.ndarray,
    target: np.ndarray,
    flow: np.ndarray,
    uncertainty: np.ndarray | None,
    max_radius: float | None,
    side: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, float | None]:
    """Shrunk copies for a picture; the flow is re-expressed in pixels of the shrunk images."""
    source, sy, sx = _shrink(source, side)
    target, ty, tx = _shrink(target, side)
    flow_small = cv2.resize(flow.astype(np.float32), (target.shape[1], target.shape[0]), interpolation=cv2.INTER_AREA)
    # align_corners=False: target x' sits at (x' + 0.5) / t - 0.5, a source point p moves to (p + 0.5) * s - 0.5.
    ys, xs = np.mgrid[: target.shape[0], : target.shape[1]].astype(np.float32)
    flow_small[..., 0] = flow_small[..., 0] * sx + (xs + 0.5) * (sx / tx - 1.0)
    flow_small[..., 1] = flow_small[..., 1] * sy + (ys + 0.5) * (sy / ty - 1.0)
    if uncertainty is not None:
        size = (target.shape[1], target.shape[0])
        uncertainty = cv2.resize(uncertainty.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return source, target, flow_small, uncertainty, None if max_radius is None else max_radius * (sx + sy) / 2


def uncertainty_figure(
    uncertainty: np.ndarray, vmax: float | None = None, title: str = "uncertainty"
) -> plt.Figure:
    """A heatmap of the per-pixel flow variance (px²) with a colour bar."""
    h, w = uncertainty.shape
    fig, ax = _pyplot().subplots(figsize=(6, 6 * h / max(w, 1) + 0.3))
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
    display_size: int | None = 720,
) -> plt.Figure:
    """Side-by-side panel: source, target, warped source over target, flow colours, uncertainty.

    Args:
        source: ``(Hs, Ws, 3)`` uint8 RGB.
        target: ``(Ht, Wt, 3)`` uint8 RGB.
        flow: ``(Ht, Wt, 2)`` px, target grid, ``target(x) ≈ source(x + flow(x))``.
        uncertainty: ``(Ht, Wt)`` variance in px² (shown in px² of the full-size images).
        max_radius: flow magnitude (px) of full colour saturation; ``None``: the flow's maximum.
        display_size: shrink every tile to at most this many pixels on its longer side first: a
            tile is drawn about 360 px wide, and full-size arrays of a large image only cost time.
    """
    if display_size is not None and max(*source.shape[:2], *target.shape[:2]) > display_size:
        source, target, flow, uncertainty, max_radius = _for_display(
            source, target, flow, uncertainty, max_radius, display_size
        )
    tiles = [
        ("source", source),
        ("target", target),
        ("source warped onto target", blend_warp(source, target, flow)),
        ("flow", flow_to_color(flow, max_radius)),
    ]
    n = len(tiles) + (uncertainty is not None)
    fig, axes = _pyplot().subplots(1, n, figsize=(3.6 * n, 3.8))
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
