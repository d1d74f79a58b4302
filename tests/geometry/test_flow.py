from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffmatch.geometry import (
    coords_grid,
    flow_magnitude,
    flow_to_normalized,
    forward_backward_consistency,
    homography_to_flow,
    normalized_to_flow,
    resize_flow,
    warp,
)
from diffmatch.result import samples_statistics


def _image(photo) -> torch.Tensor:
    return torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0


def test_coords_grid_is_x_then_y():
    grid = coords_grid(2, 3, 4)
    assert grid.shape == (2, 2, 3, 4)
    assert grid[0, :, 2, 3].tolist() == [3.0, 2.0]


def test_warp_subpixel_shift_reproduces_target(photo):
    src = _image(photo)
    dx, dy = 2.5, -1.25
    # target(x) = source(x + d): build the target by exact resampling of a translated source.
    flow = torch.zeros(1, 2, *src.shape[-2:])
    flow[:, 0], flow[:, 1] = dx, dy
    theta = torch.tensor([[[1.0, 0.0, 2 * dx / src.shape[-1]], [0.0, 1.0, 2 * dy / src.shape[-2]]]])
    grid = F.affine_grid(theta, src.shape, align_corners=False)
    target = F.grid_sample(src, grid, align_corners=False)
    warped, valid = warp(src, flow)
    inner = valid.clone()
    inner[:, :3], inner[:, -3:], inner[:, :, :4], inner[:, :, -4:] = False, False, False, False
    assert torch.allclose(warped[..., inner[0]], target[..., inner[0]], atol=1e-5)
    # Pixels that map outside the source are flagged.
    assert not valid[0, :, -2:].any() and valid[0, 5:-5, 5:-5].all()


def test_warp_homography_reproduces_target(photo):
    src = _image(photo)
    h, w = src.shape[-2:]
    hom = torch.tensor([[1.05, 0.04, -3.0], [-0.03, 0.97, 2.0], [1e-4, -2e-4, 1.0]], dtype=torch.float64)
    flow = homography_to_flow(hom, (h, w)).float()
    # The mapping at a few pixels equals H applied to them.
    x, y = 17.0, 40.0
    p = hom @ torch.tensor([x, y, 1.0], dtype=torch.float64)
    assert torch.allclose(
        flow[0, :, 40, 17].double(), (p[:2] / p[2]) - torch.tensor([x, y], dtype=torch.float64), atol=1e-4
    )
    # Warping twice with composable homographies equals warping once with their product.
    warped, valid = warp(src, flow)
    hom2 = torch.tensor([[1.0, 0.0, 1.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    twice, valid2 = warp(warped, homography_to_flow(hom2, (h, w)).float())
    once, valid1 = warp(src, homography_to_flow(hom @ hom2, (h, w)).float())
    both = valid2 & valid1
    both[:, :4], both[:, -4:], both[:, :, :4], both[:, :, -4:] = False, False, False, False
    assert valid.float().mean() > 0.8
    assert (twice - once).abs()[..., both[0]].mean() < 0.02


def test_resize_constant_shift_scales_exactly():
    flow = torch.zeros(1, 2, 30, 40)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    up = resize_flow(flow, (60, 120))
    assert torch.allclose(up[:, 0], torch.full_like(up[:, 0], 9.0), atol=1e-5)
    assert torch.allclose(up[:, 1], torch.full_like(up[:, 1], -4.0), atol=1e-5)
    back = resize_flow(up, (30, 40))
    assert torch.allclose(back, flow, atol=1e-5)


def test_resize_with_different_source_scale():
    # Identity flow between a 30x40 target and a source of the same size; the source is then
    # resized x2 but the target is kept: source pixel x maps to (x + 0.5) * 2 - 0.5.
    flow = torch.zeros(1, 2, 30, 40)
    out = resize_flow(flow, (30, 40), source_scale=(2.0, 2.0))
    grid = coords_grid(1, 30, 40)
    assert torch.allclose(out, grid + 0.5, atol=1e-5)


def test_flow_magnitude_equals_the_channel_norm():
    flow = torch.randn(2, 2, 7, 9, generator=torch.Generator().manual_seed(0)) * 50
    torch.testing.assert_close(flow_magnitude(flow), flow.norm(dim=1))
    assert flow_magnitude(flow, keepdim=True).shape == (2, 1, 7, 9)
    with pytest.raises(ValueError, match="shape"):
        flow_magnitude(flow[:, :1])


def test_samples_statistics_are_the_mean_and_the_summed_population_variance():
    samples = torch.randn(2, 4, 2, 5, 6, generator=torch.Generator().manual_seed(0)) * 30 + 100
    flow, variance = samples_statistics(samples)
    torch.testing.assert_close(flow, samples.mean(1))
    torch.testing.assert_close(variance, samples.var(1, unbiased=False).sum(1, keepdim=True))
    assert samples_statistics(samples[:, :1])[1].abs().max() == 0  # one hypothesis: no spread


def test_normalized_round_trip():
    flow = torch.randn(2, 2, 8, 9) * 4
    norm = flow_to_normalized(flow, (16, 20))
    assert torch.allclose(norm[:, 0], flow[:, 0] * 2 / 20)
    assert torch.allclose(normalized_to_flow(norm, (16, 20)), flow, atol=1e-6)


def test_forward_backward_consistency():
    fw = torch.zeros(1, 2, 20, 20)
    fw[:, 0] = 2.0
    bw = -fw.clone()
    mask, err = forward_backward_consistency(fw, bw)
    assert err[0, :, :17].max() < 1e-5
    assert mask[0, :, :17].all()
    bad = bw.clone()
    bad[:, :, :, :] = 3.0
    mask_bad, err_bad = forward_backward_consistency(fw, bad)
    assert not mask_bad[0, :, :17].any() and err_bad[0, 5, 5] > math.hypot(5.0, 3.0) - 1e-4


@pytest.mark.parametrize("shape", [(2, 8, 8), (1, 3, 8, 8)])
def test_bad_flow_shape_raises(shape):
    with pytest.raises(ValueError, match="flow must have shape"):
        resize_flow(torch.zeros(shape), (4, 4))
