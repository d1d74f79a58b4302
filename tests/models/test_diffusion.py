"""The diffusion's flow scale: a change of units inside the process, invisible from outside."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config

from diffmatch.models.config import config_from_stored
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.diffusion import FlowDiffusion


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_ddim_returns_the_normalised_x0_of_a_perfect_denoiser(scale):
    diffusion = FlowDiffusion(flow_scale=scale)
    clean = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.05
    seen = []

    def denoise(sample, t):
        seen.append(sample)
        return clean

    out = diffusion.sample(denoise, clean.shape, num_steps=5, eta=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, clean, atol=1e-5)
    # The noisy samples live in the scaled space: at t = 0 they are sqrt(ab) * s * x0 + a little noise.
    noise = torch.zeros_like(clean)
    noisy = diffusion.add_noise(clean, noise, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(noisy, diffusion.scheduler.alphas_cumprod[0].sqrt() * scale * clean, atol=1e-6)
    with pytest.raises(ValueError, match="flow_scale"):
        FlowDiffusion(flow_scale=0.0)


def test_scaled_model_starts_at_f_init_trains_and_keeps_the_setting(tmp_path):
    torch.manual_seed(0)
    model = DiffMatch(tiny_config(flow_scale=8.0))
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model.loss(source, target, torch.zeros(2, 2, 64, 64), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    cond = model.condition(source, target)
    # Zero-initialised output: every hypothesis starts exactly at F_init, whatever the scale.
    samples = model.sample_normalized(cond, num_samples=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(samples, cond.init_flow[:, None].expand_as(samples), atol=1e-6)
    assert config_from_stored(model.config.to_dict()).flow_scale == 8.0
    assert config_from_stored({k: v for k, v in model.config.to_dict().items() if k != "flow_scale"}).flow_scale == 1.0
