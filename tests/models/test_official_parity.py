"""Parity with the official DiffMatch code (KU-CVLAB/DiffMatch, commit 045ea83), without its weights.

``fixtures/official_parity.pt`` (tensors only, about 0.95 MB) was written by a script run in a
checkout of the official repository at 045ea83, on CPU in float32, importing its own modules
(``improved_diffusion.unet``, ``improved_diffusion.script_util``, ``eval_utils``,
``utils_flow.correlation_to_matches_utils``); none of that code is part of this project. It:

* builds ``UNetModel_stage1`` and ``UNetModel_sr`` as ``create_model`` does at ``image_size=64``
  (``channel_mult=(1, 2, 3, 4)``, 3 res blocks, attention at ds 4 and 8, 4 heads, scale-shift norm,
  85 inputs) at reduced width: ``model_channels=4``, with ``improved_diffusion.unet.normalization``
  patched to ``GroupNorm32(4, ch)`` (the official 32 groups need >= 32 channels);
* randomises every tensor (zero-initialised outputs included: convs/linears ``reset_parameters()``,
  GroupNorm weights ``1 + 0.1 z`` and biases ``0.1 z``, the final conv scaled by 0.2; seeds 1 and 4),
  rounded to float16 values so that the fixture can store them exactly;
* stage 1 at a 16² grid: 4 levels of random 16-channel maps (source ``rand``, target the source moved
  by (1, -1) px with replicated borders plus ``0.3 rand``), then ``eval_utils.correlation`` averaged,
  ``correlation_to_flow_w_argmax``, ``local_Corr`` (R = 4) and ``create_gaussian_diffusion(steps=5,
  noise_schedule="cosine", predict_xstart=True, rescale_timesteps=True)``'s ``ddim_sample_loop`` with
  ``n_batch=3``, eta 0, ``clip_denoised=False``, then the final clamp, as ``evaluation.run_sample_lr``;
* the upsampler at a 32² grid from that sample, as ``evaluation.run_sample_sr``: random 8-channel
  fine maps, ``local_feat_sr`` + ``build_local_corr_sr`` and the same DDIM loop (``n_batch=3``).

A wrapper around each U-Net recorded its input noise, timesteps and outputs at every step. Both
final samples stay inside [-1, 1] (checked when writing), so they do not exercise the final clamp.

``fixtures/official_clamp.pt`` (about 0.1 MB) does: ``scripts/make_official_clamp_fixture.py`` runs
the official ``ddim_sample_loop`` (imported from a checkout at 045ea83) with the stage-1 U-Net above,
its final conv scaled by 10 and ``F_init`` moved towards the right edge, so that the 3 hypotheses
leave [-1, 1] and straddle the bound at 58 of the 256 cells. The official code clamps their mean;
clamping each hypothesis (what this project did before) misses its final flow by up to 0.105.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffmatch.features import Features
from diffmatch.models.diffmatch import Condition, DiffMatch
from diffmatch.models.diffusion import clamp_mean
from diffmatch.models.official import official_to_denoiser

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_parity.pt"
CLAMP_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_clamp.pt"
TOL = 1e-4
STAGE1 = {
    "features": "vgg16",
    "feature_kwargs": {"weights": "random", "levels": ["pool2"], "half_levels": []},
    "image_size": 64,
    "cost_size": 16,
    "init_flow": "hard",
    "radius": 4,
    "local_cost_order": "x_major",
    "resize": "official",
    "clamp_flow": True,
    "denoiser": {"base_channels": 4, "norm_groups": 4, "attention_resolutions": [4, 2], "num_heads": 4},
}


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(official: dict) -> DiffMatch:
    upsampler = {"size": 32, "radius": 4, "refine": "mean", "normalize_after_sampling": True}
    model = DiffMatch(STAGE1, upsampler).eval()
    model.denoiser.load_state_dict(official_to_denoiser(official["stage1_state_dict"], model.denoiser))
    model.upsampler.denoiser.load_state_dict(
        official_to_denoiser(official["upsampler_state_dict"], model.upsampler.denoiser)
    )
    return model


def _record(module: torch.nn.Module) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    calls: list = []

    def hook(_m, args, output):
        calls.append((args[1].float() * _m.timestep_scale, output.detach().clone()))

    return calls, module.register_forward_hook(hook)


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    err = (ours - theirs.float()).abs().max().item()
    assert err < TOL, f"{what}: max |ours - official| = {err:.2e}"


@torch.no_grad()
def _stage1(model: DiffMatch, official: dict) -> tuple:
    src, tgt = official["source_maps"].float(), official["target_maps"].float()
    cond = model.condition_from_maps([m[None] for m in src], [m[None] for m in tgt])
    calls, handle = _record(model.denoiser)
    try:
        samples = model.sample_normalized(cond, 3, 5, init_noise=official["stage1_noise"][None])
    finally:
        handle.remove()
    return cond, samples, calls


def test_stage1_matches_official(model: DiffMatch, official: dict) -> None:
    cond, samples, calls = _stage1(model, official)
    _close(cond.init_flow, official["stage1_init_flow"], "F_init")
    assert len(calls) == 5
    for step, (t, out) in enumerate(calls):
        _close(t, official["stage1_timesteps"][step], f"timestep {step}")
        _close(out, official["stage1_outputs"][step], f"denoiser output, step {step}")
    _close(samples.mean(1).clamp(-1, 1), official["stage1_sample"], "final 5-step sample")


def test_upsampler_matches_official(model: DiffMatch, official: dict) -> None:
    _, coarse, _ = _stage1(model, official)
    fine = [Features(coarse=[], fine=official[f"{side}_fine"].float()) for side in ("source", "target")]
    calls, handle = _record(model.upsampler.denoiser)
    try:
        result = model.upsample(
            tuple(fine), coarse, (32, 32), (32, 32), num_steps=5, init_noise=official["upsampler_noise"][None]
        )
    finally:
        handle.remove()
    assert len(calls) == 5
    for step, (_, out) in enumerate(calls):
        _close(out, official["upsampler_outputs"][step], f"upsampler output, step {step}")
    # pixels at the fine grid's own size: the normalised flow times 32
    _close(result.flow / 32, official["upsampler_sample"], "final upsampled sample")
    _close(result.samples[:, 0] / 32, official["upsampler_outputs"][-1][:1], "first fine hypothesis")


def test_fixture_is_small() -> None:
    assert FIXTURE.stat().st_size < 1_000_000
    assert CLAMP_FIXTURE.stat().st_size < 200_000


@torch.no_grad()
def test_stage1_clamps_the_mean_of_the_hypotheses_as_the_official_code(official: dict) -> None:
    """Official mode (``clamp_flow``) on hypotheses beyond [-1, 1]: the official loop's final flow (#29 item 11)."""
    fixture = torch.load(CLAMP_FIXTURE, map_location="cpu", weights_only=True)
    model = DiffMatch(STAGE1).eval()
    model.denoiser.load_state_dict(official_to_denoiser(official["stage1_state_dict"], model.denoiser))
    for parameter in model.denoiser.unet.conv_out.parameters():  # the official "out.2", scaled as in the fixture
        parameter.mul_(fixture["residual_scale"])
    cond = Condition(init_flow=fixture["init_flow"], local_cost=fixture["local_cost"], features=(None, None))
    calls, handle = _record(model.denoiser)
    try:
        samples = model.sample_normalized(cond, 3, 5, init_noise=fixture["noise"][None])
    finally:
        handle.remove()
    hypotheses = fixture["hypotheses"]
    _close(calls[-1][1], hypotheses, "the hypotheses' last x0 predictions")
    # The fixture exercises the clamp: hypotheses straddle the bound, and clamping each one misses.
    assert ((hypotheses > 1).any(0) & (hypotheses < 1).any(0)).sum() > 20
    assert (hypotheses.clamp(-1, 1).mean(0) - fixture["sample"][0]).abs().max() > 0.05
    _close(samples.mean(1), fixture["sample"], "final flow (the clamped mean of 3 hypotheses)")
    # Each hypothesis moves by its cell's clamp of the mean: the spread, the uncertainty, is the official one.
    _close(samples[0] - samples[0].mean(0), hypotheses - hypotheses.mean(0), "hypotheses around their mean")


def test_clamp_mean_moves_hypotheses_together() -> None:
    samples = torch.tensor([0.8, 1.4, 1.1]).view(1, 3, 1, 1, 1).expand(1, 3, 2, 1, 1).clone()
    clamped = clamp_mean(samples)
    torch.testing.assert_close(clamped.mean(1), torch.ones(1, 2, 1, 1))
    torch.testing.assert_close(clamped - clamped.mean(1, keepdim=True), samples - samples.mean(1, keepdim=True))
    inside = torch.rand(2, 4, 2, 3, 3) - 0.5
    assert torch.equal(clamp_mean(inside), inside)
