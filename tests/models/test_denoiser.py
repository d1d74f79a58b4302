"""The denoiser's official-network settings and the legacy ones that older checkpoints keep."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from diffmatch.models.config import LEGACY_MODEL, DiffMatchConfig, config_from_stored
from diffmatch.models.denoiser import LEGACY_DENOISER, DenoiserConfig, FlowDenoiser


def _count(config: DenoiserConfig) -> int:
    with torch.device("meta"):
        net = FlowDenoiser(config, size=64, cost_channels=81)
    return sum(p.numel() for p in net.parameters())


def test_default_is_the_official_size_and_legacy_lacks_the_mid_attention_norm():
    assert _count(DenoiserConfig()) == 121_153_794
    # The first checkpoints: no GroupNorm (2 × 512 parameters) before the middle attention.
    assert _count(DenoiserConfig(**LEGACY_DENOISER)) == 121_153_794 - 1024


def test_official_heads_and_zero_initialised_blocks():
    config = DenoiserConfig(
        base_channels=32, channel_mult=(1, 3), num_res_blocks=1, attention_resolutions=(8, 4), attention_head_dim=8
    )
    net = FlowDenoiser(config, size=8, cost_channels=0, use_init_flow=False)
    attentions = [m for m in net.modules() if isinstance(m, Attention)]
    assert {m.heads for m in attentions} == {4}
    assert {m.inner_dim // m.heads for m in attentions} == {8, 24}
    for m in attentions:
        assert m.scale == pytest.approx((m.inner_dim // 4) ** -0.5)
        assert not m.to_out[0].weight.any()
    legacy = FlowDenoiser(DenoiserConfig(**{**config.__dict__, **LEGACY_DENOISER}), 8, 0, use_init_flow=False)
    assert all(m.to_out[0].weight.any() for m in legacy.modules() if isinstance(m, Attention))


def test_timesteps_are_rescaled_to_1000_over_T():
    config = DenoiserConfig(base_channels=32, channel_mult=(1,), num_res_blocks=1, attention_resolutions=())
    net = FlowDenoiser(config, size=8, cost_channels=0, use_init_flow=False, num_train_timesteps=5)
    seen = []
    net.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    net(torch.zeros(1, 2, 8, 8), torch.tensor([3]), torch.zeros(1, 2, 8, 8), None)
    assert seen[0].tolist() == [600.0]


def test_stored_settings_without_new_keys_read_as_legacy():
    old = DiffMatchConfig().to_dict()
    for key in LEGACY_MODEL:
        old.pop(key)
    for key in LEGACY_DENOISER:
        old["denoiser"].pop(key)
    config = config_from_stored(old)
    assert {k: getattr(config, k) for k in LEGACY_MODEL} == LEGACY_MODEL
    assert {k: getattr(config.denoiser, k) for k in LEGACY_DENOISER} == LEGACY_DENOISER
    assert config_from_stored(DiffMatchConfig().to_dict()) == DiffMatchConfig()
