"""Calibrated confidence: the calibrator, its export round trip, the cues, and ECE on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmatch.confidence import CUES, REVERSE_CUES, calibrator_from_dict, fit_calibrator, isotonic_fit
from diffmatch.confidence.cues import local_mean, local_window, match_with_cues
from diffmatch.confidence.metrics import expected_calibration_error, reliability
from diffmatch.errors import MissingCalibrationError
from diffmatch.geometry import forward_backward_consistency
from diffmatch.matcher import DiffMatcher
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import export_weights, read_calibration, save_weights
from diffmatch.refinement import VariationalRefiner
from tests.helpers import synthetic_cues, tiny_config


def test_isotonic_fit_is_monotone_and_fits_a_step():
    scores = np.linspace(-3, 3, 1000)
    labels = (scores > 0).astype(float)
    xs, ys = isotonic_fit(scores, labels)
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)
    assert np.interp(-2.0, xs, ys) == pytest.approx(0.0) and np.interp(2.0, xs, ys) == pytest.approx(1.0)


def test_calibration_is_monotone_in_each_error_cue():
    cues, errors = synthetic_cues()
    cal = fit_calibrator(cues, errors)
    base = np.tile(np.median(cues, 0), (50, 1))
    for k, name in enumerate(CUES):
        if name == "cost_peak":
            continue
        probe = base.copy()
        probe[:, k] = np.linspace(0, np.quantile(cues[:, k], 0.99), 50)
        for tau in cal.taus:
            prob = cal.predict_numpy(probe, tau)
            assert np.all(np.diff(prob) <= 1e-12), (name, tau)  # more variance/distance: never more confident
            assert prob.min() >= 0 and prob.max() <= 1
    # Larger τ is an easier event: higher probability at every pixel on average.
    means = [cal.predict_numpy(cues, tau).mean() for tau in cal.taus]
    assert means == sorted(means)


def test_calibration_holds_on_fresh_data():
    cues, errors = synthetic_cues(seed=0)
    cal = fit_calibrator(cues, errors)
    fresh, fresh_errors = synthetic_cues(seed=1)
    for tau in cal.taus:
        assert expected_calibration_error(cal.predict_numpy(fresh, tau), fresh_errors < tau) < 0.03


def _sub_pixel_pixels(count: int, seed: int, wrong: float) -> tuple[np.ndarray, np.ndarray]:
    """``variance`` and ``fb_error`` cues of pixels whose error, when right, grows with the variance
    (0.01–0.3 px), and a share ``wrong`` of matches 2–20 px off that the cycle error gives away."""
    rng = np.random.default_rng(seed)
    bad = rng.random(count) < wrong
    variance = np.where(bad, 10 ** rng.uniform(-1.5, 0.5, count), 10 ** rng.uniform(-4, -1, count))
    cycle = np.where(bad, 10 ** rng.uniform(-0.5, 1, count), 10 ** rng.uniform(-2, -1, count))
    errors = np.where(bad, rng.uniform(2, 20, count), np.sqrt(variance) * rng.uniform(0.5, 1.5, count))
    return np.stack([variance, cycle], 1), errors


def test_log_offsets_let_the_confidence_rank_sub_pixel_errors():
    from diffmatch.metrics import ause

    cues, errors = _sub_pixel_pixels(20000, 0, wrong=0.3)
    easy, easy_errors = _sub_pixel_pixels(5000, 1, wrong=0.01)  # an image where nearly every match is right
    area = {}
    for transform in ("log", "log1p"):
        cal = fit_calibrator(cues, errors, ("variance", "fb_error"), transform=transform)
        area[transform] = ause(easy_errors, 1 - cal.predict_numpy(easy))
    # log(1 + x) is linear below a pixel: the cycle error's noise outweighs the variance there.
    assert area["log"] < 0.6 * area["log1p"], area


def test_calibrations_from_before_the_log_offsets_load_and_predict_as_fitted():
    cues, errors = synthetic_cues(2000)
    old = fit_calibrator(cues, errors, transform="log1p")
    data = old.to_dict()
    del data["transform"]  # written before the field existed
    loaded = calibrator_from_dict(data)
    assert loaded.transform == "log1p"
    np.testing.assert_allclose(loaded.predict_numpy(cues), old.predict_numpy(cues))
    new = fit_calibrator(cues, errors)
    assert new.transform == "log" and calibrator_from_dict(new.to_dict()).transform == "log"
    assert not np.allclose(new.score(cues), loaded.score(cues))
    with pytest.raises(ValueError, match="transform must be one of"):
        fit_calibrator(cues, errors, transform="sqrt")
    with pytest.raises(ValueError, match="transform must be one of"):
        calibrator_from_dict({**new.to_dict(), "transform": "sqrt"})


def test_one_hypothesis_has_an_unknown_variance_that_counts_as_average(tiny_model):
    from diffmatch.confidence.cues import variance_cue

    cues, errors = synthetic_cues(2000)
    cal = fit_calibrator(cues, errors)
    k = CUES.index("variance")
    probe = np.tile(np.median(cues, 0), (3, 1))
    probe[0, k], probe[1, k] = 0.0, np.nan  # zero variance: certainty; NaN: unknown
    probe[2, k] = np.exp(cal.mean[k]) - 1e-4  # the fitted pixels' average (log(x + 1e-4) = mean)
    score = cal.score(probe)
    assert score[1] == pytest.approx(score[2]) and score[0] > score[1] + 1.0
    src, tgt = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    one, cues_one = match_with_cues(tiny_model, src, tgt, 1, 2, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(variance_cue(one)).all() and torch.isnan(cues_one["local_variance"]).all()
    three, _ = match_with_cues(tiny_model, src, tgt, 3, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(variance_cue(three), three.uncertainty)


def test_calibrator_rejects_unfitted_tau_and_bad_dicts():
    cues, errors = synthetic_cues(500)
    cal = fit_calibrator(cues, errors)
    with pytest.raises(ValueError, match="calibrated for tau"):
        cal.predict_numpy(cues, 2.0)
    with pytest.raises(ValueError, match="format"):
        calibrator_from_dict({"cues": []})
    data = cal.to_dict()
    data["knots_y"][0] = data["knots_y"][0][::-1]
    with pytest.raises(ValueError, match="non-decreasing"):
        calibrator_from_dict(data)


@pytest.fixture(scope="module")
def tiny_model() -> DiffMatch:
    torch.manual_seed(0)
    return DiffMatch(tiny_config()).eval()


def test_match_with_cues_equals_forward_and_has_every_cue(tiny_model):
    src, tgt = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 36, 44)
    plain = tiny_model(src, tgt, num_samples=2, num_steps=2, generator=torch.Generator().manual_seed(3))
    result, cues = match_with_cues(tiny_model, src, tgt, 2, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(result.flow, plain.flow)
    assert set(cues) == set(CUES)
    for value in cues.values():
        assert value.shape == (1, 1, 36, 44) and torch.isfinite(value).all()
    torch.testing.assert_close(cues["variance"], plain.uncertainty)


def test_local_mean_is_a_windowed_log_mean():
    flat = torch.full((1, 1, 12, 14), 4.0)
    torch.testing.assert_close(local_mean(flat, 5), flat)  # a constant stays itself, at the border too
    spike = torch.zeros(1, 1, 12, 14)
    spike[0, 0, 6, 7] = 99.0  # log1p = log(100)
    out = local_mean(spike, 3)
    inside = out[0, 0, 5:8, 6:9]
    torch.testing.assert_close(inside, torch.full_like(inside, 100 ** (1 / 9) - 1))
    assert out[0, 0, 6, 7] < 1.7 and (out[0, 0, :4] == 0).all()  # one outlier does not swamp its window
    assert local_window(240, 240) == 5 and local_window(384, 512) == 9 and local_window(20, 30) == 1
    with pytest.raises(ValueError, match="odd"):
        local_mean(flat, 4)


def test_local_cues_are_the_local_means_of_their_pixel_cues(tiny_model):
    src, tgt = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 36, 44)
    _, cues = match_with_cues(tiny_model, src, tgt, 3, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(cues["local_variance"], local_mean(cues["variance"]))
    torch.testing.assert_close(cues["local_fb_error"], local_mean(cues["fb_error"]))
    _, forward_only = match_with_cues(tiny_model, src, tgt, 3, 2, generator=torch.Generator().manual_seed(3), reverse=False)
    assert "local_variance" in forward_only and not REVERSE_CUES & set(forward_only)
    # Only the windowed cues asked for are computed (a calibration asks for those it reads).
    _, some = match_with_cues(tiny_model, src, tgt, 3, 2, generator=torch.Generator().manual_seed(3), local=("local_fb_error",))
    assert "local_fb_error" in some and "local_variance" not in some
    data, errors = synthetic_cues(2000)
    pixel_only = fit_calibrator(data[:, [0, 1, 2, 4]], errors, ("variance", "init_distance", "cost_peak", "local_variance"))
    assert not pixel_only.needs_reverse and fit_calibrator(data, errors).needs_reverse


def test_reverse_samples_set_the_reverse_pass_and_travel_with_the_calibration(tiny_model, tmp_path):
    src, tgt = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 36, 44)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    run = tiny_model.run(src, tgt, 3, 2, 0.0, gen(), reverse=True, reverse_samples=1)
    assert run.reverse.samples.shape[1] == 1 and run.result.samples.shape[1] == 3
    assert tiny_model.run(src, tgt, 3, 2, 0.0, gen(), reverse=True).reverse.samples.shape[1] == 3
    one, cues = match_with_cues(tiny_model, src, tgt, 3, 2, generator=gen(), reverse_samples=1)
    three, cues3 = match_with_cues(tiny_model, src, tgt, 3, 2, generator=gen())
    torch.testing.assert_close(one.samples, three.samples)  # the forward pass draws first
    torch.testing.assert_close(cues["fb_error"], forward_backward_consistency(one.flow, run.reverse.flow)[1][:, None])
    assert not torch.equal(cues["fb_error"], cues3["fb_error"])

    data, errors = synthetic_cues(2000)
    cal = fit_calibrator(data, errors, reverse_samples=1)
    assert calibrator_from_dict(cal.to_dict()).reverse_samples == 1
    old = cal.to_dict()
    del old["reverse_samples"]  # a calibration from before the setting: the reverse pass as the forward
    assert calibrator_from_dict(old).reverse_samples is None
    with pytest.raises(ValueError, match="reverse_samples"):
        fit_calibrator(data, errors, reverse_samples=0)
    # DiffMatcher's confidence reads the cues made as its calibration says.
    cal.refined = False
    matcher = DiffMatcher.from_checkpoint(save_weights(tiny_model, tmp_path / "cal.pt", calibration=cal.to_dict()), device="cpu")
    result = matcher.match(src, tgt, num_samples=3, num_steps=2, generator=gen(), refine=False, two_pass=False)
    torch.testing.assert_close(result.confidence, cal.predict(cues))


def test_calibration_round_trips_through_export(tiny_model, tmp_path):
    cues, errors = synthetic_cues(2000)
    cal = fit_calibrator(cues, errors, info={"photos": "test"})
    path = save_weights(tiny_model, tmp_path / "cal.pt", calibration=cal.to_dict())
    assert read_calibration(path) == cal.to_dict()
    assert torch.load(path, weights_only=True)["calibration"]["cues"] == list(CUES)
    exported = export_weights(path, tmp_path / "again.pt", half=True)
    assert read_calibration(exported) == cal.to_dict()

    matcher = DiffMatcher.from_checkpoint(exported, device="cpu")
    assert matcher.calibrator == cal
    src, tgt = torch.rand(3, 40, 40), torch.rand(3, 40, 40)
    result = matcher.match(src, tgt, num_samples=2, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert result.confidence.shape == (1, 1, 40, 40) and result.confidence_tau == 3.0
    assert 0 <= result.confidence.min() and result.confidence.max() <= 1
    assert result.require_confidence() is result.confidence
    # In one pass without the layer search τ changes only the confidence (where a second pass runs,
    # τ's confidence also chooses the pass, and the layer search takes the planes of τ's confident
    # matches, so the flow may change with it: tests/test_two_pass.py, tests/refinement).
    result = matcher.match(
        src, tgt, num_samples=2, num_steps=2, generator=torch.Generator().manual_seed(0), two_pass=False, layer_search=False
    )
    loose = matcher.match(
        src, tgt, 2, 2, generator=torch.Generator().manual_seed(0), confidence_tau=5.0, two_pass=False, layer_search=False
    )
    torch.testing.assert_close(loose.flow, result.flow)
    assert loose.confidence_tau == 5.0 and (loose.confidence >= result.confidence - 1e-6).float().mean() > 0.9
    assert result.numpy()["confidence"].shape == (40, 40)


def test_checkpoint_without_calibration_has_no_confidence_and_says_so(tiny_model, tmp_path):
    matcher = DiffMatcher.from_checkpoint(save_weights(tiny_model, tmp_path / "plain.pt"), device="cpu")
    assert matcher.calibrator is None
    result = matcher.match(torch.rand(3, 40, 40), torch.rand(3, 40, 40), num_samples=2, num_steps=2)
    assert result.confidence is None and "confidence" not in result.numpy()
    with pytest.raises(MissingCalibrationError, match="diffmatch.calibrate"):
        result.require_confidence()
    with pytest.raises(ValueError, match="no confidence calibration"):
        matcher.match(torch.rand(3, 40, 40), torch.rand(3, 40, 40), num_samples=2, num_steps=2, confidence_tau=3.0)


def test_refined_cues_describe_the_refined_hypotheses(tiny_model, photo):
    src = torch.from_numpy(photo[:48, :56]).permute(2, 0, 1)[None].float() / 255
    tgt = torch.from_numpy(photo[3:51, 2:58]).permute(2, 0, 1)[None].float() / 255
    refiner = VariationalRefiner(rounds=2)
    plain, _ = match_with_cues(tiny_model, src, tgt, 2, 2, generator=torch.Generator().manual_seed(3))
    refined, cues = match_with_cues(tiny_model, src, tgt, 2, 2, generator=torch.Generator().manual_seed(3), refiner=refiner)
    torch.testing.assert_close(refined.samples, refiner(src, tgt, plain.samples))
    torch.testing.assert_close(refined.flow, refined.samples.mean(1))
    torch.testing.assert_close(cues["variance"], refined.uncertainty)
    torch.testing.assert_close(cues["init_distance"], (refined.flow - plain.init_flow).norm(dim=1, keepdim=True))


@pytest.mark.parametrize("fitted_refined", [False, True])
def test_confidence_only_for_flows_made_as_the_calibration_was(tiny_model, tmp_path, fitted_refined):
    cues, errors = synthetic_cues(2000)
    cal = fit_calibrator(cues, errors, refined=fitted_refined)
    assert calibrator_from_dict(cal.to_dict()).refined is fitted_refined
    old = cal.to_dict()
    del old["refined"]  # calibrations written before the refinement existed
    assert calibrator_from_dict(old).refined is False
    path = save_weights(tiny_model, tmp_path / "cal.pt", calibration=cal.to_dict())
    src, tgt = torch.rand(3, 40, 40), torch.rand(3, 40, 40)

    matcher = DiffMatcher.from_checkpoint(path, device="cpu")  # refines as the calibration was fitted
    assert (matcher.refiner is not None) is fitted_refined and matcher.confidence_unavailable() is None
    assert matcher.match(src, tgt, num_samples=2, num_steps=2).confidence is not None
    other = matcher.match(src, tgt, num_samples=2, num_steps=2, refine=not fitted_refined)
    assert other.confidence is None
    fitted = "with" if fitted_refined else "without"
    # The result says why it has none: the refinement differs, not a missing calibration (#29 item 8).
    with pytest.raises(MissingCalibrationError) as missing:
        other.require_confidence()
    assert f"calibrated {fitted} the sub-pixel refinement" in str(missing.value)
    assert "not calibrated" not in str(missing.value)
    with pytest.raises(MissingCalibrationError, match=f"calibrated {fitted} the sub-pixel refinement"):
        matcher.match(src, tgt, num_samples=2, num_steps=2, refine=not fitted_refined, confidence_tau=3.0)
    switched = DiffMatcher.from_checkpoint(path, device="cpu", refine=not fitted_refined)
    assert f"refine={fitted_refined}" in switched.confidence_unavailable()


def test_ece_on_hand_made_numbers():
    prob = np.array([0.1, 0.1, 0.9, 0.9, 0.9])
    labels = np.array([0, 1, 1, 1, 0])
    # bin [0.1, 0.2): confidence 0.1, frequency 1/2; bin [0.9, 1]: confidence 0.9, frequency 2/3.
    expected = 2 / 5 * abs(0.5 - 0.1) + 3 / 5 * abs(2 / 3 - 0.9)
    assert expected_calibration_error(prob, labels, bins=10) == pytest.approx(expected)
    diagram = reliability(prob, labels, bins=10)
    assert diagram.count.tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 0, 3]
    assert diagram.frequency[1] == pytest.approx(0.5) and diagram.confidence[9] == pytest.approx(0.9)
    # Perfectly calibrated, and the edge p = 1 falls in the last bin.
    assert expected_calibration_error([0.25] * 4 + [1.0] * 2, [1, 0, 0, 0, 1, 1], bins=4) == pytest.approx(0.0)
    assert expected_calibration_error([0.0, 1.0], [1, 0], bins=5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])
