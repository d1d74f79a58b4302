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

        # (No rotation search: pass 1's low confidence would also start one.)
        _, used = match_two_pass(confident, image, image, TwoPassConfig(min_confidence=0.5, rotations=()))
        assert used == [runs] and len(calls) == 1 + runs
        _, used = match_two_pass(confident, image, image, TwoPassConfig(rotations=()))  # off by default
        assert used == [True]
    with pytest.raises(ValueError, match="min_confidence"):
        TwoPassConfig(min_confidence=-0.1)


def test_rotation_homography_turns_about_the_centres():
    from diffmatch.two_pass import rotation_homography

    quarter = rotation_homography(90.0, (48, 64), (64, 48))  # a portrait source, a landscape target
    centre = quarter @ torch.tensor([31.5, 23.5, 1.0], dtype=torch.float64)
    assert torch.allclose(centre[:2] / centre[2], torch.tensor([23.5, 31.5], dtype=torch.float64))
    # Clockwise on screen (y down): the target's right-hand neighbour of the centre is below it in the source.
    right = quarter @ torch.tensor([32.5, 23.5, 1.0], dtype=torch.float64)
    assert torch.allclose(right[:2] / right[2], torch.tensor([23.5, 32.5], dtype=torch.float64))
    back = rotation_homography(-35.0, SIZE, SIZE) @ rotation_homography(35.0, SIZE, SIZE)
    assert torch.allclose(back, torch.eye(3, dtype=torch.float64), atol=1e-12)


class _RotationOracle:
    """Matches only where the source it is given lies within about 30° of the target's view: pass 1
    (the unrotated source) and the -45° try are wrong and unsure; the +45° try and pass 2 are right."""

    def __init__(self, truth_h: torch.Tensor, first_confidence: float, right_confidence: float = 0.8) -> None:
        self.truth_h = truth_h
        self.first_confidence = first_confidence
        self.right_confidence = right_confidence
        self.warps: list[torch.Tensor | None] = [None]  # the homography behind each call's source

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        warp_h = self.warps[len(self.calls)] if len(self.warps) > len(self.calls) else None
        self.calls.append(warp_h)
        residual = self.truth_h if warp_h is None else torch.linalg.inv(warp_h) @ self.truth_h
        right = warp_h is not None and not torch.allclose(warp_h, self.wrong_h)
        flow = _homography_flow(residual) if right else torch.randn(1, 2, *SIZE, generator=torch.Generator().manual_seed(3)) * 30
        result = MatchResult.from_samples(flow[:, None].repeat(1, 2, 1, 1, 1))
        confidence = self.right_confidence if right else (self.first_confidence if warp_h is None else 0.01)
        result.confidence = torch.full((1, 1, *SIZE), confidence)
        return result


def test_a_rotation_pass_one_cannot_follow_is_found_by_the_rotation_search(monkeypatch):
    import diffmatch.two_pass as module
    from diffmatch.two_pass import rotation_homography

    truth_h = rotation_homography(50.0, SIZE, SIZE)
    truth = _homography_flow(truth_h)
    image = torch.rand(1, 3, *SIZE)
    original_fit = module._fit
    # Found: pass 1 unsure (0.05) and the +45° try far more confident (0.8). Not searched: pass 1 sure
    # enough (0.6). Not taken: the try beats pass 1 by less than rotation_margin (0.12 against 0.05).
    for first_confidence, right_confidence, searched in ((0.05, 0.8, True), (0.6, 0.8, False), (0.05, 0.12, False)):
        oracle = _RotationOracle(truth_h, first_confidence, right_confidence)
        oracle.calls = []
        oracle.wrong_h = rotation_homography(-45.0, SIZE, SIZE)
        oracle.warps = [None, rotation_homography(45.0, SIZE, SIZE), oracle.wrong_h]

        def fit_and_expect(result, source_size, config, oracle=oracle):
            homography = original_fit(result, source_size, config)
            if homography is not None:
                oracle.warps.append(homography)  # pass 2's source is warped by it
            return homography

        monkeypatch.setattr(module, "_fit", fit_and_expect)
        result, used = match_two_pass(oracle, image, image)
        if searched:  # pass 1, the two rotations, then pass 2 from the +45° pass's homography
            assert len(oracle.calls) == 4 and used == [True]
            assert (result.flow - truth).norm(dim=1).mean() < 0.05
            assert float(result.confidence.mean()) == pytest.approx(0.8)
        elif first_confidence > 0.35:  # confident enough: no rotation is tried
            assert oracle.calls[:2] == [None, *oracle.calls[1:2]] and len(oracle.calls) <= 2
        else:  # both rotations tried, pass 1 kept
            assert len(oracle.calls) >= 3 and (result.flow - truth).norm(dim=1).mean() > 10
    # No rotations, or a threshold of 0: pass 1 stays whatever its confidence.
    for config in (TwoPassConfig(rotations=()), TwoPassConfig(rotation_below=0.0)):
        oracle = _RotationOracle(truth_h, 0.05)
        oracle.calls, oracle.wrong_h, oracle.warps = [], torch.eye(3, dtype=torch.float64), [None]
        monkeypatch.setattr(module, "_fit", original_fit)
        result, used = match_two_pass(oracle, image, image, config)
        assert oracle.calls[0] is None and (result.flow - truth).norm(dim=1).mean() > 10
    with pytest.raises(ValueError, match="rotation_below"):
        TwoPassConfig(rotation_below=2.0)
    with pytest.raises(ValueError, match="rotation_margin"):
        TwoPassConfig(rotation_margin=-0.1)
    with pytest.raises(ValueError, match="rotations"):
        TwoPassConfig(rotations=(float("nan"),))


def test_a_search_that_keeps_pass_one_leaves_the_later_passes_draws_unchanged(tmp_path, photo, monkeypatch):
    import diffmatch.two_pass as module
    from diffmatch.confidence import fit_calibrator
    from diffmatch.matcher import DiffMatcher
    from diffmatch.models.diffmatch import DiffMatch
    from diffmatch.models.weights import save_weights
    from tests.helpers import shifted_pair, synthetic_cues, tiny_config

    torch.manual_seed(0)
    cues, errors = synthetic_cues(2000)
    calibration = fit_calibrator(cues, errors, info={"photos": "test"}, refined=True).to_dict()
    model = DiffMatch(tiny_config()).eval()
    torch.nn.init.normal_(model.denoiser.unet.conv_out.weight, std=0.05)  # hypotheses that follow the noise
    weights = save_weights(model, tmp_path / "cal.pt", calibration=calibration)
    source, target, _ = shifted_pair(photo, 12, -9)
    tries = []
    original = module._search_rotations

    def search_but_keep(search, src, tgt, first, config):
        def counted(*images):
            tries.append(1)
            return search(*images)

        original(counted, src, tgt, first, config)
        return first

    monkeypatch.setattr(module, "_search_rotations", search_but_keep)
    shift = torch.tensor([[1.0, 0.0, 12.0], [0.0, 1.0, -9.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    monkeypatch.setattr(module, "_fit", lambda result, source_size, config: shift)  # pass 2 always runs
    results = {}
    for label, config in (("searched", TwoPassConfig(rotation_below=1.0)), ("plain", TwoPassConfig(rotations=()))):
        matcher = DiffMatcher.from_checkpoint(weights, device="cpu", two_pass=config)
        results[label] = matcher.match(source, target, num_samples=2, generator=torch.Generator().manual_seed(4))
    assert len(tries) == 2  # the search tried both rotations (and then kept pass 1)
    assert torch.equal(results["searched"].samples, results["plain"].samples)
    assert not torch.equal(results["plain"].samples[:, 0], results["plain"].samples[:, 1])
