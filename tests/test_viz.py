from __future__ import annotations

import numpy as np
import pytest

from diffmatch.io import load_image
from diffmatch.viz import blend_warp, flow_to_color, panel_figure, save_figure, uncertainty_figure


def test_flow_to_color_fixed_radius_compares_flows():
    small = np.zeros((8, 8, 2), np.float32)
    small[..., 0] = 1.0
    big = small * 4
    # With each flow's own maximum both are fully saturated; with a shared radius they differ.
    assert np.array_equal(flow_to_color(small), flow_to_color(big))
    a, b = flow_to_color(small, max_radius=4.0), flow_to_color(big, max_radius=4.0)
    assert a.shape == (8, 8, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - 255).sum() < np.abs(b.astype(int) - 255).sum()


def test_blend_warp_identity_is_target(photo):
    out = blend_warp(photo, photo, np.zeros((*photo.shape[:2], 2), np.float32), alpha=0.5)
    assert np.abs(out.astype(int) - photo.astype(int)).max() <= 1


def test_figures_write_png(tmp_path, photo):
    flow = np.random.default_rng(0).standard_normal((*photo.shape[:2], 2)).astype(np.float32)
    save_figure(tmp_path / "panel.png", panel_figure(photo, photo, flow, np.abs(flow[..., 0])))
    save_figure(tmp_path / "unc.png", uncertainty_figure(np.abs(flow[..., 0])))
    for name in ("panel.png", "unc.png"):
        image = load_image(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_panel_shrinks_large_inputs_and_their_flow_consistently():
    from diffmatch.viz import _for_display

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (800, 1000, 3), dtype=np.uint8)
    flow = np.zeros((800, 1000, 2), np.float32)
    flow[..., 0], flow[..., 1] = 10.0, -4.0
    source, target, small, unc, radius = _for_display(image, image, flow, flow[..., 0], 20.0, 250)
    assert source.shape == target.shape == (200, 250, 3) and small.shape == (200, 250, 2)
    np.testing.assert_allclose(small[..., 0], 2.5, atol=1e-4)  # a shift in pixels of the shrunk images
    np.testing.assert_allclose(small[..., 1], -1.0, atol=1e-4)
    np.testing.assert_allclose(unc, 10.0)  # the variance stays in full-size px²
    assert radius == 5.0
    panel_figure(image, image, flow, flow[..., 0], display_size=250)


def _boxes(ink: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Connected ink shapes framed by a rectangle (all four sides inked): a font's placeholder for a
    glyph it lacks. No digit, letter or sign of a label has all four sides of its outline inked."""
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
    boxes = []
    for x, y, w, h, _ in stats[1:count]:
        if w < 4 or h < 6:
            continue
        patch = ink[y : y + h, x : x + w]
        if min(patch[0].mean(), patch[-1].mean(), patch[:, 0].mean(), patch[:, -1].mean()) > 0.8:
            boxes.append((x, y, w, h))
    return boxes


@pytest.mark.parametrize(("height", "top"), [(40, 0.5), (120, 3.14159), (345, 12345.6), (1000, 0.000123)])
def test_uncertainty_colour_bar_label_is_drawn_whole(height, top):
    """The "px²" unit is never a placeholder box and no label is cut at the right edge (#29 item 12)."""
    from diffmatch.viz import uncertainty_to_color

    values = np.linspace(0, top, height * 50, dtype=np.float32).reshape(height, 50)
    picture = uncertainty_to_color(values)
    legend = picture[:, 50:]
    ink = legend.min(axis=2) < 128
    bar_end = np.flatnonzero((legend != 255).any(axis=2).mean(axis=0) > 0.9)[-1] + 1  # the colour ramp's columns
    text = ink[:, bar_end:]
    assert text.any(), "no label drawn"
    assert _boxes(text) == []
    assert not text[:, -2:].any(), "the label touches the right edge: clipped"
    assert not text[0].any() and not text[-1].any(), "the label touches the top or bottom edge"
