"""Layer search: census cost, the planes of F_init, and which pixels a plane takes over."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffmatch.confidence import Calibrator, calibrator_from_dict, fit_calibrator
from diffmatch.confidence.cues import search_cues
from diffmatch.confidence.fitting import SEARCH_FIT_CUES
from diffmatch.geometry import homography_to_flow, warp
from diffmatch.matcher import DiffMatcher
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import save_weights
from diffmatch.refinement.census import aligned_cost, census_transform, matching_cost
from diffmatch.refinement.layer_search import (
    LayerSearchConfig,
    confident_homographies,
    layer_homographies,
    search_layers,
)
from diffmatch.result import MatchResult
from tests.helpers import synthetic_cues, synthetic_search_cues, tiny_config

SIZE = (96, 128)
# Target pixels -> source pixels: the background and a layer that moved far from it (parallax).
BACKGROUND = torch.tensor([[1.0, 0.05, 6.0], [-0.04, 1.0, 3.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
LAYER = torch.tensor([[0.95, 0.0, -30.0], [0.0, 0.95, 12.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _texture(seed: int = 0) -> torch.Tensor:
    """A smooth random texture (1, 3, 2H, 2W): census bits that survive a little resampling, and that
    a shift of half the layer search's window (4 px at this size) changes."""
    noise = torch.rand(1, 3, SIZE[0] // 2, SIZE[1] // 2, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(noise, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


def _scene(source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(source, target, truth, layer mask)``: the target shows the background, with a layer in its
    middle third; each part is the source (default :func:`_texture`) seen through its own homography."""
    source = _texture() if source is None else source
    mask = torch.zeros(1, 1, *SIZE, dtype=torch.bool)
    mask[..., 30:70, 40:90] = True
    truth = torch.where(mask, homography_to_flow(LAYER, SIZE).float(), homography_to_flow(BACKGROUND, SIZE).float())
    target, _ = warp(source, truth)
    return source, target, truth, mask


def test_census_is_blind_to_brightness_and_contrast():
    image = _texture()[..., : SIZE[0], : SIZE[1]]
    census = census_transform(image)
    assert census.shape == (1, 16, *SIZE) and set(census.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(census_transform(0.5 * image + 0.25), census)
    with pytest.raises(ValueError, match="odd"):
        census_transform(image, radius=2)
    with pytest.raises(ValueError, match="image must be"):
        census_transform(image[0])


def test_matching_cost_is_low_for_the_true_flow_and_a_toss_outside():
    source, target, truth, _ = _scene()
    cs, ct = census_transform(source), census_transform(target)
    inner = (slice(None), slice(None), slice(10, -10), slice(10, -10))
    for cost in (lambda f, w: matching_cost(cs, ct, f, w), lambda f, w: aligned_cost(source, ct, f, w)):
        right, wrong = cost(truth, 9), cost(truth + 7.0, 9)
        assert right[inner].mean() < 0.1 < wrong[inner].mean()
        far = cost(truth + 10_000.0, 1)
        assert torch.allclose(far, torch.full_like(far, 0.5))


def test_the_aligned_cost_follows_the_flows_rotation():
    # The target is the source turned by 55°. The aligned cost takes the census after the source is
    # warped onto the target's grid, so the right flow costs little though every neighbour moved to
    # another direction; the census taken in the source's frame and then warped scores it near a
    # coin toss, which is why the search lets the aligned cost veto a plane.
    from diffmatch.two_pass import rotation_homography

    source = _texture()[..., : SIZE[1], : SIZE[1]]
    size = (SIZE[1], SIZE[1])
    truth = homography_to_flow(rotation_homography(55.0, size, size), size).float()
    target, valid = warp(source, truth)
    ct = census_transform(target)
    # Pixels whose window lies inside the source: the valid region shrunk by a window.
    inner = torch.nn.functional.max_pool2d((~valid).float()[:, None], 9, stride=1, padding=4)[:, 0] == 0
    right = aligned_cost(source, ct, truth, 9)[:, 0][inner].mean()
    shifted = aligned_cost(source, ct, truth + 4.0, 9)[:, 0][inner].mean()
    in_source_frame = matching_cost(census_transform(source), ct, truth, 9)[:, 0][inner].mean()
    assert right < 0.15 < shifted and in_source_frame > 0.25, (right, shifted, in_source_frame)


def _backward() -> torch.Tensor:
    """``F_init`` source -> target of :func:`_scene`: each plane's inverse, the layer where it lands."""
    corners = torch.tensor([[40.0, 90.0], [30.0, 70.0], [1.0, 1.0]], dtype=torch.float64)  # (x, y) of the layer
    (x0, x1), (y0, y1) = (LAYER @ corners)[:2].tolist()
    landed = torch.zeros(1, 1, *SIZE, dtype=torch.bool)
    landed[..., int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
    planes = homography_to_flow(torch.linalg.inv(LAYER), SIZE), homography_to_flow(torch.linalg.inv(BACKGROUND), SIZE)
    return torch.where(landed, *planes).float()


def test_the_planes_of_f_init_are_found_one_after_another():
    _, _, truth, mask = _scene()
    homographies = layer_homographies(truth[0], _backward()[0], LayerSearchConfig(max_layers=3))
    assert 2 <= len(homographies) <= 3
    flows = [homography_to_flow(torch.from_numpy(h), SIZE).float() for h in homographies]
    for name, where in (("background", ~mask), ("layer", mask)):
        best = min(float((f - truth).norm(dim=1)[where[:, 0]].mean()) for f in flows)
        assert best < 0.1, name
    # The best supported plane comes first: the background covers most of the target.
    first = (flows[0] - truth).norm(dim=1)[~mask[:, 0]].mean()
    assert first < 0.1


def test_a_wrongly_matched_layer_is_taken_from_its_plane_and_the_rest_is_left_alone():
    source, target, truth, mask = _scene()
    background = homography_to_flow(BACKGROUND, SIZE).float()
    # The matcher followed the background everywhere, the layer included, with a spread of hypotheses.
    spread = torch.tensor([-0.5, 0.0, 0.5]).view(1, 3, 1, 1, 1)
    result = MatchResult.from_samples(background[:, None] + spread)
    result.confidence, result.confidence_tau = torch.full((1, 1, *SIZE), 0.2), 3.0

    def raw_flows(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return truth, _backward()

    config = LayerSearchConfig(below=0.5)
    searched, taken, costs = search_layers(result, source, target, raw_flows, None, config)
    error = (searched.flow - truth).norm(dim=1)
    inner = torch.zeros_like(mask)
    inner[..., 36:64, 46:84] = True  # the layer away from its outline (the cost window straddles it)
    assert error[inner[:, 0]].max() < 0.01  # follows its plane now
    assert (taken & ~mask).float().sum() < 0.03 * (~mask).sum()  # and next to nothing else was touched
    keep = (~taken).expand_as(result.flow)
    assert torch.equal(searched.flow[keep], result.flow[keep])
    # Every hypothesis moved by the same amount: the spread (variance) and the confidence stay.
    torch.testing.assert_close(searched.uncertainty, result.uncertainty)
    assert searched.confidence is result.confidence and searched.confidence_tau == 3.0
    # What decided the take comes back for the confidence: taken pixels beat the matcher's own cost
    # by the ratio and are pinned down by the window.
    assert sorted(costs) == ["census_cost", "census_margin", "distinctness"]
    assert all(cost.shape == (1, 1, *SIZE) for cost in costs.values())
    assert (costs["census_margin"][taken] > 0.05 * costs["census_cost"][taken]).all()
    assert (costs["distinctness"][taken] > config.distinct).all()
    # A refinement runs on the taken pixels only.
    refined, _, _ = search_layers(result, source, target, raw_flows, lambda s, t, f: f + 0.25, config)
    torch.testing.assert_close(refined.flow, torch.where(taken, searched.flow + 0.25, searched.flow))
    # A confident result is not searched.
    confident = MatchResult.from_samples(result.samples)
    confident.confidence = torch.full((1, 1, *SIZE), 0.9)
    same, nothing, none = search_layers(confident, source, target, raw_flows, None, config)
    assert same is confident and not nothing.any() and none == {}
    # A result without confidence is only searched when the rule says "always".
    bare = MatchResult.from_samples(result.samples)
    assert search_layers(bare, source, target, raw_flows, None, config)[0] is bare
    assert search_layers(bare, source, target, raw_flows, None, LayerSearchConfig(below=1.0))[1].any()


def test_the_planes_of_confident_matches_fix_a_wrong_patch_the_global_cost_does_not_see():
    # The target is the background plane alone. The matcher found it on most of the image, with a high
    # confidence, and missed it (20 px off, unconfident) in a patch; F_init offers no plane at all.
    source = _texture()
    truth = homography_to_flow(BACKGROUND, SIZE).float()
    target, _ = warp(source, truth)
    patch = torch.zeros(1, 1, *SIZE, dtype=torch.bool)
    patch[..., 30:70, 40:90] = True
    wrong = torch.where(patch, truth + 20.0, truth)
    result = MatchResult.from_samples(wrong[:, None])
    result.confidence = torch.where(patch, 0.1, 0.95)

    def raw_flows(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        never = torch.full((1, 2, *SIZE), 50.0)  # never survives the round trip: no planes
        return never, never

    planes = confident_homographies(result)
    assert len(planes) == 1  # the confident matches are one plane
    plane = homography_to_flow(torch.from_numpy(planes[0]), SIZE).float()
    assert float((plane - truth).norm(dim=1).max()) < 0.01
    searched, taken, _ = search_layers(result, source, target, raw_flows, None, LayerSearchConfig())
    inner = torch.zeros_like(patch)
    inner[..., 36:64, 46:84] = True
    assert float((searched.flow - truth).norm(dim=1)[inner[:, 0]].max()) < 0.01
    # Without them (or without a confidence to find them by) nothing is taken.
    assert not search_layers(result, source, target, raw_flows, None, LayerSearchConfig(confident_layers=0))[1].any()
    bare = MatchResult.from_samples(wrong[:, None])
    assert confident_homographies(bare) == [] and not search_layers(bare, source, target, raw_flows)[1].any()
    # Too few confident matches for a plane: none.
    few = MatchResult.from_samples(wrong[:, None])
    few.confidence = torch.zeros(1, 1, *SIZE)
    few.confidence[..., :5, :5] = 1.0
    assert confident_homographies(few) == []
    assert taken[patch].float().mean() > 0.5


def test_a_plane_is_not_taken_where_the_window_does_not_pin_it_down():
    # A source that repeats every 4 px: any match moved by a multiple of 4 px looks as good, as in a
    # washed-out or noisy window. The layer's plane still beats the matcher's flow there (by chance,
    # as far as the cost can tell), but moved by half a window (4 px here) it costs no more.
    tile = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    source, target, truth, mask = _scene(tile.repeat(1, 1, SIZE[0] // 4, SIZE[1] // 4))
    result = MatchResult.from_samples(homography_to_flow(BACKGROUND, SIZE).float()[:, None])

    def raw_flows(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return truth, _backward()

    assert LayerSearchConfig().pixels(SIZE)[3] == 9
    loose = LayerSearchConfig(distinct=0.0)
    assert search_layers(result, source, target, raw_flows, None, loose)[1][mask].float().mean() > 0.5
    _, taken, _ = search_layers(result, source, target, raw_flows, None, LayerSearchConfig())
    assert taken.float().mean() < 0.01


def test_layer_search_config_checks():
    with pytest.raises(ValueError, match="ratio"):
        LayerSearchConfig(ratio=0.0)
    with pytest.raises(ValueError, match="window=2"):
        LayerSearchConfig(window=2.0)
    with pytest.raises(ValueError, match="min_support"):
        LayerSearchConfig(min_support=3)
    with pytest.raises(ValueError, match="distinct"):
        LayerSearchConfig(distinct=1.0)
    with pytest.raises(ValueError, match="confident_layers"):
        LayerSearchConfig(confident_layers=-1)
    with pytest.raises(ValueError, match="confident_above"):
        LayerSearchConfig(confident_above=1.0)
    with pytest.raises(ValueError, match="rounds"):
        LayerSearchConfig(rounds=0)
    assert LayerSearchConfig().pixels((384, 512)) == (4, 8.0, 8.0, 33)


def test_matcher_layer_search_batch_of_one_and_n_agree(checkpoint):
    from diffmatch.matcher import DiffMatcher

    always = LayerSearchConfig(below=1.0, min_support=4)
    matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu", refine=False, two_pass=False, layer_search=always)
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    flipped = images.flip(-1)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    result = matcher.match(images, flipped, num_samples=2, generator=gens())
    alone = matcher.match(images[1:], flipped[1:], num_samples=2, generator=gens()[1:])
    assert torch.allclose(alone.flow, result.flow[1:], atol=1e-5)
    plain = matcher.match(images, flipped, num_samples=2, generator=gens(), layer_search=False)
    assert plain.flow.shape == result.flow.shape
    with pytest.raises(ValueError, match="layer_search must be"):
        DiffMatcher.from_checkpoint(checkpoint, device="cpu", layer_search="yes")


def test_select_gives_one_pair_of_a_batch_as_a_batch_of_one():
    samples = torch.randn(3, 2, 2, 5, 6)
    result = MatchResult.from_samples(samples, init_flow=torch.randn(3, 2, 5, 6))
    result.confidence, result.confidence_tau = torch.rand(3, 1, 5, 6), 3.0
    for index in (1, -1):
        one = result.select(index)
        assert one.samples.shape == (1, 2, 2, 5, 6) and one.confidence_tau == 3.0
        for name in ("flow", "uncertainty", "samples", "init_flow", "confidence"):
            assert torch.equal(getattr(one, name)[0], getattr(result, name)[index]), name
    with pytest.raises(IndexError, match="out of range"):
        result.select(3)


def _search_part(taus: tuple[float, ...] = (1.0, 3.0, 5.0)) -> Calibrator:
    """A layer-search part fitted on made-up taken pixels whose error grows with the census cost and
    falls with the distinctness."""
    cues, errors = synthetic_search_cues(3000, distinctness_weight=10.0)
    return fit_calibrator(cues, errors, SEARCH_FIT_CUES, taus)


def test_the_matcher_gives_taken_pixels_the_confidence_of_the_calibrations_layer_search_part(tmp_path, monkeypatch):
    source, target, truth, _ = _scene()

    def global_flows(self, a: torch.Tensor, b: torch.Tensor, mode: str = "hard") -> tuple[torch.Tensor, torch.Tensor]:
        return truth, _backward()

    monkeypatch.setattr(DiffMatch, "global_flows", global_flows)
    torch.manual_seed(0)
    model = DiffMatch(tiny_config()).eval()
    data, errors = synthetic_cues(2000)
    main = fit_calibrator(data, errors)
    part = _search_part()
    with_part = replace(main, layer_search=part)
    assert calibrator_from_dict(with_part.to_dict()) == with_part  # it travels inside the calibration
    with pytest.raises(ValueError, match="layer-search part"):
        replace(main, layer_search=_search_part((1.0, 3.0)))

    def match(calibration: Calibrator, layer_search: bool | LayerSearchConfig) -> MatchResult:
        weights = save_weights(model, tmp_path / "model.pt", calibration=calibration.to_dict())
        matcher = DiffMatcher.from_checkpoint(weights, device="cpu", refine=False, two_pass=False)
        return matcher.match(source, target, num_samples=2, num_steps=1, generator=torch.Generator().manual_seed(1), layer_search=layer_search)

    plain = match(with_part, False)
    searched, taken, costs = search_layers(plain, source, target, lambda a, b: global_flows(None, a, b), None)
    assert 0.2 < taken.float().mean() < 0.99  # the random model's flow loses to the planes, mostly
    expected = torch.where(taken, part.predict(search_cues(searched, costs)), plain.confidence)
    result = match(with_part, LayerSearchConfig(rounds=1))
    torch.testing.assert_close(result.flow, searched.flow)
    torch.testing.assert_close(result.confidence, expected)
    assert not torch.allclose(result.confidence[taken], plain.confidence[taken])
    # A calibration without the part: taken pixels keep the confidence of the match they replaced.
    torch.testing.assert_close(match(main, True).confidence, plain.confidence)
    # A second round (rounds=2) searches the first round's result, taken pixels confident now, with the
    # planes of its confident matches alone.
    once = replace(searched, confidence=expected)
    again, retaken, recosts = search_layers(once, source, target, lambda a, b: global_flows(None, a, b), None, LayerSearchConfig(max_layers=0))
    twice = match(with_part, True)  # the default: two rounds
    torch.testing.assert_close(twice.flow, again.flow)
    if recosts:
        torch.testing.assert_close(twice.confidence, torch.where(retaken, part.predict(search_cues(again, recosts)), expected))
