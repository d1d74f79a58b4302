from __future__ import annotations

import pytest
import torch
from helpers import shifted_pair, tiny_config

from diffmatch.models.denoiser import DenoiserConfig, FlowDenoiser
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.diffusion import FlowDiffusion


def test_paper_denoiser_has_121m_parameters():
    net = FlowDenoiser(DenoiserConfig(), size=64, cost_channels=81)
    assert net.in_channels == 85
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - 121.2e6) / 121.2e6 < 0.05, count


def test_schedule_matches_official_betas():
    diffusion = FlowDiffusion()
    # improved-DDPM cosine schedule for T = 5, computed from its definition.
    import math

    f = lambda t: math.cos((t / 5 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(5)])
    assert torch.allclose(diffusion.scheduler.betas.double(), betas.double(), atol=1e-6)


def test_ddim_step_matches_paper_equation():
    diffusion = FlowDiffusion()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 2, 4, 4, generator=g)
    x0 = torch.randn(1, 2, 4, 4, generator=g)
    z = torch.randn(1, 2, 4, 4, generator=g)
    sched = diffusion.scheduler
    sched.set_timesteps(5)
    ab = sched.alphas_cumprod
    for t, eta in ((3, 0.0), (2, 1.0)):
        a_t, a_prev = ab[t], ab[t - 1]
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        # Eq. 3: x_{t-1} = sqrt(a_{t-1}) x0 + sqrt(1 - a_{t-1} - sigma²) (x_t - sqrt(a_t) x0) / sqrt(1 - a_t) + sigma z
        expected = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt() + sigma * z
        got = sched.step(x0, t, x_t, eta=eta, variance_noise=z).prev_sample
        assert torch.allclose(got, expected, atol=1e-5)


def test_forward_shapes_at_odd_sizes():
    model = DiffMatch(tiny_config()).eval()
    out = model(torch.rand(2, 3, 37, 53), torch.rand(2, 3, 41, 29), num_samples=3)
    assert out.flow.shape == (2, 2, 41, 29)
    assert out.uncertainty.shape == (2, 1, 41, 29)
    assert out.samples.shape == (2, 3, 2, 41, 29)
    assert (out.uncertainty >= 0).all()


def test_seeded_sampling_is_reproducible_and_batch_invariant(photo):
    model = DiffMatch(tiny_config()).eval()
    torch.nn.init.normal_(model.denoiser.unet.conv_out.weight, std=0.1)  # make the network matter
    source, target, _ = shifted_pair(photo, 4, 2)
    other_s, other_t, _ = shifted_pair(photo, -3, 5)
    run = lambda s, t, seed: model(s, t, num_samples=2, eta=0.5, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b = run(source, target, 7), run(source, target, 7)
    assert torch.equal(a.samples, b.samples)
    assert not torch.allclose(a.samples, run(source, target, 8).samples)
    batched = run(torch.cat([source, other_s]), torch.cat([target, other_t]), 7)
    assert torch.allclose(batched.samples[:1], a.samples, rtol=1e-4, atol=1e-2)
    # A list of generators makes every item independent of the others.
    gens = lambda: [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]  # noqa: E731
    pair = model(torch.cat([source, other_s]), torch.cat([target, other_t]), 2, generator=gens())
    alone = model(other_s, other_t, 2, generator=[torch.Generator().manual_seed(2)])
    assert torch.allclose(pair.samples[1:], alone.samples, rtol=1e-4, atol=1e-2)


def test_ablation_configs_build_and_run():
    for overrides, channels in (({"use_local_cost": False}, 4), ({"use_init_flow": False}, 27), ({"diffusion": False}, 29)):
        model = DiffMatch(tiny_config(**overrides)).eval()
        assert model.denoiser.in_channels == channels
        out = model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), num_samples=2)
        assert out.flow.shape == (1, 2, 64, 64)
        if not model.config.diffusion:
            assert torch.equal(out.uncertainty, torch.zeros_like(out.uncertainty))


def test_small_model_overfits_one_pair(photo):
    torch.manual_seed(0)
    model = DiffMatch(tiny_config())
    source, target, flow = shifted_pair(photo, dx=5, dy=-3)
    # Scramble part of the target so F_init is wrong there; the denoiser must learn the true flow.
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        loss = model.loss(source, target, flow)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = model(source, target, num_samples=1, generator=torch.Generator().manual_seed(0))
    epe = (out.flow - flow).norm(dim=1)[0, 8:-8, 8:-8].mean()
    epe_init = (out.init_flow - flow).norm(dim=1)[0, 8:-8, 8:-8].mean()
    assert epe < 0.5 * epe_init and epe < 1.0, (epe, epe_init)


def test_epe_loss_is_the_mean_endpoint_error_of_the_prediction(photo):
    """Both losses are checked in closed form against the prediction they were computed from."""
    source, target, flow = shifted_pair(photo, dx=3, dy=-2)
    losses = {}
    for kind in ("mse", "epe"):
        torch.manual_seed(0)
        model = DiffMatch(tiny_config(loss=kind, diffusion=False))
        out = model.loss(source, target, flow)
        diff = (out["pred"] - out["target"]).square().sum(1)[out["mask"]]
        expected = diff.mean() if kind == "mse" else diff.sqrt().mean()
        torch.testing.assert_close(out["loss"], expected)
        losses[kind] = out["loss"]
    assert losses["epe"] > losses["mse"]  # normalised errors are < 1, so the root is larger
    with pytest.raises(ValueError, match="loss must be 'mse' or 'epe'"):
        tiny_config(loss="l1")


def test_ddim_with_fewer_steps_than_T_steps_to_the_next_visited_timestep():
    """3 of 5 steps visit t = 4, 2, 0: each update must land on the next of those."""
    diffusion = FlowDiffusion()
    ab = diffusion.scheduler.alphas_cumprod
    clean = torch.full((1, 2, 2, 2), 0.3)
    seen = []

    def denoise(sample, t):
        seen.append((int(t[0]), sample.clone()))
        return clean

    start = torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    out = diffusion.sample(denoise, (1, 2, 2, 2), num_steps=3, init_noise=start)
    assert [t for t, _ in seen] == [4, 2, 0]
    # A perfect x0 prediction keeps the implied noise fixed: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps
    # at every visited t, with eps the noise implied at the start.
    eps = (start - ab[4].sqrt() * clean) / (1 - ab[4]).sqrt()
    for t, sample in seen:
        torch.testing.assert_close(sample, ab[t].sqrt() * clean + (1 - ab[t]).sqrt() * eps)
    torch.testing.assert_close(out, clean)
    assert [diffusion.visited_timesteps(n) for n in (1, 2, 4, 5)] == [[4], [4, 0], [4, 3, 1, 0], [4, 3, 2, 1, 0]]


def test_with_image_size_shares_weights_and_keeps_the_unets_cell_units():
    torch.manual_seed(0)
    model = DiffMatch(tiny_config()).eval()  # 64² images, 16² grid
    torch.nn.init.normal_(model.denoiser.unet.conv_out.weight, std=0.05)
    big = model.with_image_size(128)
    assert model.with_image_size(64) is model
    assert (big.config.image_size, big.config.cost_size) == (128, 32)
    assert big.config.denoiser.attention_resolutions == (16,)
    assert big.denoiser.unet is model.denoiser.unet and big.features is model.features
    assert (model.config.cost_size, model.denoiser.flow_scale, model.diffusion.flow_scale) == (16, 1.0, 1.0)
    assert big.denoiser.flow_scale == big.diffusion.flow_scale == 2.0
    # The same displacement in cells (normalised by the grid: half as large on the 2x grid) must
    # give the same U-Net input, hence the same predicted displacement in cells.
    generator = torch.Generator().manual_seed(1)
    noisy, cost = torch.randn(2, 2, 16, 16, generator=generator), torch.randn(2, 25, 16, 16, generator=generator)
    init_cells = 3.0 * torch.randn(2, 2, 16, 16, generator=generator)
    t = torch.tensor([4, 2])
    with torch.no_grad():
        own = model.denoiser(noisy, t, init_cells / 16, cost) * 16
        resized = big.denoiser(noisy, t, init_cells / 32, cost) * 32
    torch.testing.assert_close(resized, own, atol=1e-4, rtol=1e-4)
    assert (own - init_cells).abs().mean() > 1e-2  # the U-Net's residual is part of the comparison
    out = big(torch.rand(1, 3, 90, 70), torch.rand(1, 3, 80, 100), num_samples=2)
    assert out.flow.shape == (1, 2, 80, 100) and torch.isfinite(out.flow).all()
    for bad in (60, 0, 100):
        with pytest.raises(ValueError, match="multiple of 8"):
            model.with_image_size(bad)
