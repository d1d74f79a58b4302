from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import shifted_pair

from diffmatch.features.vgg import VGG16Pyramid
from diffmatch.models.cost_volume import argmax_flow, global_correlation, local_correlation, soft_argmax_flow


def test_soft_argmax_recovers_shift_of_shifted_copy():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 32, 30, 30, generator=g)
    dx, dy = 3, -2
    target = feat[:, :, 5:25, 5:25]
    source = feat[:, :, 5 + dy : 25 + dy, 5 + dx : 25 + dx]  # target(x) = source(x - (dx, dy))
    corr = global_correlation(source, target)
    expected = torch.tensor([-dx, -dy], dtype=torch.float32).view(2, 1, 1)
    soft = soft_argmax_flow(corr, (20, 20), (20, 20), temperature=0.02)
    hard = argmax_flow(corr, (20, 20), (20, 20))
    # Inside the overlap the match is exact; soft-argmax is exact up to softmax leakage.
    overlap = (slice(None), slice(0, 18), slice(3, 20))
    assert torch.equal(hard[0][overlap], expected.expand(2, 18, 17))
    assert torch.allclose(soft[0][overlap], expected.expand(2, 18, 17), atol=1e-3)


def test_soft_argmax_recovers_shift_of_real_photo(photo):
    source, target, _ = shifted_pair(photo, dx=8, dy=-4, size=96)
    vgg = VGG16Pyramid(weights="random", seed=0, levels=("pool2", "pool3"), half_levels=(), fine_level=None)
    with torch.no_grad():
        fs, ft = vgg(torch.cat([source, target])).coarse[0].chunk(2)  # stride 4: the shift is (2, -1) cells
    corr = global_correlation(fs, ft)
    size = tuple(ft.shape[-2:])
    flow = soft_argmax_flow(corr, size, size, temperature=0.01)
    inner = flow[0, :, 3:-3, 3:-3].flatten(1)
    assert torch.allclose(inner.median(dim=1).values, torch.tensor([-2.0, 1.0]), atol=0.25)


def test_local_correlation_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 5, 7, 9, generator=g)
    tgt = torch.randn(2, 5, 6, 8, generator=g)
    flow = torch.randn(2, 2, 6, 8, generator=g) * 2
    radius = 2
    out = local_correlation(global_correlation(src, tgt), flow, (7, 9), radius)
    assert out.shape == (2, 25, 6, 8)
    src_n, tgt_n = F.normalize(src, dim=1), F.normalize(tgt, dim=1)

    def bilinear(feat, x, y):  # zero padding outside, pixel-centre convention
        value = torch.zeros(feat.shape[0])
        x0, y0 = int(torch.floor(x)), int(torch.floor(y))
        for xi in (x0, x0 + 1):
            for yi in (y0, y0 + 1):
                weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
                if 0 <= xi < feat.shape[2] and 0 <= yi < feat.shape[1]:
                    value += weight * feat[:, yi, xi]
        return value

    for b, i, j in [(0, 0, 0), (1, 3, 5), (0, 5, 7), (1, 2, 1)]:
        k = 0
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                x = j + flow[b, 0, i, j] + dx
                y = i + flow[b, 1, i, j] + dy
                expected = (bilinear(src_n[b], x, y) * tgt_n[b, :, i, j]).sum()
                assert torch.allclose(out[b, k, i, j], expected, atol=1e-5), (b, i, j, dx, dy)
                k += 1


def test_global_correlation_is_cosine():
    a = torch.randn(1, 4, 3, 3)
    corr = global_correlation(a, a * 5.0)
    assert torch.allclose(torch.diagonal(corr[0]), torch.ones(9), atol=1e-5)
    assert corr.abs().max() <= 1.0 + 1e-5
