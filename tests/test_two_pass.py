"""Two-pass matching: homography composition, when pass 2 runs, and what each pixel keeps."""

from __future__ import annotations

import pytest
import torch

from diffmatch.geometry import coords_grid, homography_to_flow
from diffmatch.result import MatchResult
from diffmatch.two_pass import TwoPassConfig, compose_with_homography, match_two_pass

SIZE = (48, 64)
# Target pixels -> source pixels: a rotation of about 17° with a zoom and a shift (a large view change).
H0 = torch.tensor([[0.92, -0.28, 14.0], [0.27, 0.93, -6.0], [0.0004, 0.0002, 1.0]], dtype=torch.float64)


def _homography_flow(homography: torch.Tensor) -> torch.Tensor:
    return homography_to_flow(homography, SIZE).float()


def test_composition_through_a_homography_is_exact():
    # A flow into the source warped by H, composed with H, is the flow into the source.
    h1 = torch.tensor([[1.05, 0.02, 3.0], [-0.01, 0.98, -2.0], [0.0, 0.0001, 1.0]], dtype=torch.float64)
    residual = torch.linalg.inv(h1) @ H0  # target -> warped-source pixels
    composed = compose_with_homography(_homography_flow(residual)[0], h1)
    assert (composed - _homography_flow(H0)[0]).abs().max() < 1e-3
    # Batched hypotheses (B, N, 2, H, W) compose the same way.
    batch = compose_with_homography(_homography_flow(residual)[:, None].repeat(2, 3, 1, 1, 1), h1)
    assert batch.shape == (2, 3, 2, *SIZE) and torch.allclose(batch[1, 2], composed, atol=1e-5)


class _Oracle:
    """Pass 1: the true flow on 60 % of the pixels (zero variance), wrong elsewhere (high variance).
    Pass 2 (called with the warped source): the true residual everywhere, small variance."""

    def __init__(self, truth: torch.Tensor) -> None:
        self.truth = truth
        self.calls = 0

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        self.calls += 1
        if self.calls == 1:
            wrong = torch.rand(1, 1, *SIZE, generator=torch.Generator().manual_seed(0)) < 0.4
            noise = torch.randn(1, 3, 2, *SIZE, generator=torch.Generator().manual_seed(1)) * 20
            samples = self.truth[:, None] + noise * wrong[:, None]
            return MatchResult.from_samples(samples)
        return MatchResult.from_samples(self.residual[:, None].repeat(1, 3, 1, 1, 1) + 0.01 * torch.randn(1, 3, 2, *SIZE))


def test_second_pass_corrects_pass_one_where_it_was_unsure(monkeypatch):
    truth = _homography_flow(H0)
    oracle = _Oracle(truth)
    fitted = {}

    import diffmatch.two_pass as module

    original = module._fit

    def fit_and_remember(result, source_size, config):
        homography = original(result, source_size, config)
        fitted["H"] = homography
        if homography is not None:  # the residual pass 2 must find, in warped-source pixels
            oracle.residual = _homography_flow(torch.linalg.inv(homography) @ H0)
        return homography

    monkeypatch.setattr(module, "_fit", fit_and_remember)
    image = torch.rand(1, 3, *SIZE)
    result, used = match_two_pass(oracle, image, image, TwoPassConfig(min_inliers=0.4))
    assert used == [True] and oracle.calls == 2
    first = _Oracle(truth)(image, image)
    assert (first.flow - truth).norm(dim=1).mean() > 3.0  # pass 1 alone is far off where it was unsure
    # Where the true match leaves the source, pass 2 cannot land inside it either: pass 1 stays there.
    landing = truth + coords_grid(1, *SIZE)
    inside = (landing[:, 0] >= -0.5) & (landing[:, 0] <= SIZE[1] - 0.5) & (landing[:, 1] >= -0.5) & (landing[:, 1] <= SIZE[0] - 0.5)
    assert inside.float().mean() > 0.6
    assert (result.flow - truth).norm(dim=1)[inside].mean() < 0.1
    assert result.samples.shape == (1, 3, 2, *SIZE)


def test_small_motion_or_poor_fit_skips_the_second_pass():
    calls = []

    def still(source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        calls.append(1)
        return MatchResult.from_samples(torch.full((1, 2, 2, *SIZE), 0.5))

    image = torch.rand(2, 3, *SIZE)
    result, used = match_two_pass(still, image, image)
    assert used == [False, False] and len(calls) == 2
    assert torch.equal(result.flow, torch.full((2, 2, *SIZE), 0.5))

    def scattered(source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        # Large but random motion: no homography explains half of it.
        flow = torch.randn(1, 1, 2, *SIZE, generator=torch.Generator().manual_seed(2)) * 30
        return MatchResult.from_samples(flow)

    _, used = match_two_pass(scattered, image[:1], image[:1])
    assert used == [False]


def test_two_pass_config_checks():
    with pytest.raises(ValueError, match="min_inliers"):
        TwoPassConfig(min_inliers=1.5)
    with pytest.raises(ValueError, match="num_matches"):
        TwoPassConfig(num_matches=2)


def test_matcher_two_pass_runs_on_a_tiny_checkpoint(checkpoint):
    from diffmatch.matcher import DiffMatcher

    matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu", refine=False, two_pass=True)
    image = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    result = matcher.match(image, image, num_samples=2, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert result.flow.shape == (2, 2, 40, 48) and torch.isfinite(result.flow).all()
    # Per-pair generators: a pair's result does not depend on its batch.
    alone = matcher.match(image[1:], image[1:], num_samples=2, generator=[torch.Generator().manual_seed(1)])
    assert torch.allclose(alone.flow, result.flow[1:], atol=1e-5)


def test_matches_the_confidence_expects_wrong_skip_the_second_pass():
    truth = _homography_flow(H0)
    image = torch.rand(1, 3, *SIZE)
    for confidence, runs in ((0.3, False), (0.9, True)):
        calls = []

        def confident(source: torch.Tensor, target: torch.Tensor, confidence=confidence, calls=calls) -> MatchResult:
            calls.append(1)
            result = MatchResult.from_samples(truth[:, None].repeat(1, 2, 1, 1, 1))
            result.confidence = torch.full((1, 1, *SIZE), confidence)
            return result

        _, used = match_two_pass(confident, image, image, TwoPassConfig(min_confidence=0.5))
        assert used == [runs] and len(calls) == 1 + runs
        _, used = match_two_pass(confident, image, image)  # off by default
        assert used == [True]
    with pytest.raises(ValueError, match="min_confidence"):
        TwoPassConfig(min_confidence=-0.1)
