"""The census cost on packed bits: the same numbers as warping the bits, and measured only where asked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffmatch.geometry import warp
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.refinement.census import (
    census_transform,
    matching_cost,
    pack_census,
    packed_matching_cost,
)
from diffmatch.refinement.layer_search import _aligned_better, _distinctness
from tests.helpers import tiny_config


def _warped_bits_cost(source_census: torch.Tensor, target_census: torch.Tensor, flow: torch.Tensor, window: int) -> torch.Tensor:
    """The definition: the source's bits warped bilinearly (grid_sample), compared bit by bit, a
    match outside the source a coin toss, averaged over the window by pooling."""
    warped, inside = warp(source_census, flow)
    cost = (warped - target_census).abs().mean(1, keepdim=True)
    cost = torch.where(inside[:, None], cost, torch.full_like(cost, 0.5))
    half = window // 2
    cost = F.avg_pool2d(cost, (1, window), stride=1, padding=(0, half), count_include_pad=False)
    return F.avg_pool2d(cost, (window, 1), stride=1, padding=(half, 0), count_include_pad=False)


def _images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 30, 44, generator=g), torch.rand(2, 3, 26, 36, generator=g)


@pytest.mark.parametrize("radius", [1, 3, 5])
@pytest.mark.parametrize("scale", [0.7, 6.0, 60.0])
def test_the_packed_cost_is_the_warped_bits_cost(radius, scale):
    source, target = _images()
    cs, ct = census_transform(source, radius), census_transform(target, radius)
    flow = torch.randn(2, 2, 26, 36, generator=torch.Generator().manual_seed(1)) * scale
    for window in (1, 9):
        expected = _warped_bits_cost(cs, ct, flow, window)
        torch.testing.assert_close(matching_cost(cs, ct, flow, window), expected, atol=1e-5, rtol=0)  # grid_sample rounds the coordinates
    # A whole-pixel flow samples the bits exactly: a target that is the source shifted costs 0, a
    # match outside the source a coin toss.
    shift = torch.zeros(1, 2, 30, 41)
    shift[:, 0] = 3.0
    assert matching_cost(cs[:1], cs[:1, ..., 3:], shift, 1).abs().max() == 0
    assert torch.equal(matching_cost(cs[:1], cs[:1, ..., 3:], shift + 50.0, 3), torch.full((1, 1, 30, 41), 0.5))


def test_a_part_of_the_target_costs_what_the_whole_does_away_from_the_parts_edge():
    source, target = _images()
    cs, ct = pack_census(census_transform(source)), pack_census(census_transform(target))
    flow = torch.randn(2, 2, 26, 36, generator=torch.Generator().manual_seed(2)) * 4
    whole = packed_matching_cost(cs, ct, flow, 5)
    top, left = 6, 9
    corner = torch.tensor([left, top], dtype=torch.float32).view(1, 2, 1, 1)  # the part's flow, offset to its corner
    part = packed_matching_cost(cs, ct._replace(codes=ct.codes[:, top:20, left:30]), flow[..., top:20, left:30] + corner, 5)
    torch.testing.assert_close(part[..., 2:-2, 2:-2], whole[..., top + 2 : 18, left + 2 : 28])


def test_packing_checks_the_bits():
    census = census_transform(_images()[0])
    packed = pack_census(census)
    assert packed.bits == 16 and packed.codes.shape == (2, 30, 44)
    assert torch.equal((packed.codes[:, None] >> torch.arange(16).view(1, -1, 1, 1)) & 1, census.long())
    with pytest.raises(ValueError, match="K <= 48"):
        pack_census(torch.zeros(1, 49, 4, 4))
    with pytest.raises(ValueError, match="differ in bits"):
        matching_cost(census, census_transform(_images()[1], radius=1), torch.zeros(2, 2, 26, 36), 3)


def test_the_searchs_checks_measured_in_a_box_match_the_whole_image_where_asked():
    source, target = _images(3)
    cs, ct = census_transform(source[:1]), census_transform(target[:1])
    flow = torch.randn(1, 2, 26, 36, generator=torch.Generator().manual_seed(4)) * 3
    own = flow + torch.randn(1, 2, 26, 36, generator=torch.Generator().manual_seed(5)) * 0.3  # close calls
    where = torch.zeros(1, 1, 26, 36, dtype=torch.bool)
    where[..., 10:16, 14:22] = True
    everywhere = torch.ones_like(where)
    cost = matching_cost(cs, ct, flow, 7)
    packed = (pack_census(cs), pack_census(ct))
    distinct = _distinctness(*packed, flow, cost, 7, where)
    torch.testing.assert_close(distinct[where], _distinctness(*packed, flow, cost, 7, everywhere)[where])
    assert distinct[~where].abs().max() == 0
    better = _aligned_better(source[:1], ct, flow, own, 7, where)
    whole = _aligned_better(source[:1], ct, flow, own, 7, everywhere)
    assert torch.equal(better[where], whole[where]) and not better[~where].any()


def test_global_flows_are_global_flow_both_ways():
    torch.manual_seed(0)
    model = DiffMatch(tiny_config()).eval()
    source, target = torch.rand(1, 3, 40, 56), torch.rand(1, 3, 48, 32)
    forward, backward = model.global_flows(source, target)
    torch.testing.assert_close(forward, model.global_flow(source, target))
    torch.testing.assert_close(backward, model.global_flow(target, source))
    assert forward.shape == (1, 2, 48, 32) and backward.shape == (1, 2, 40, 56)
