"""The conditional flow-denoising U-Net (improved-DDPM / ADM style, on diffusers' ``UNet2DModel``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel
from torch import nn

__all__ = ["DenoiserConfig", "FlowDenoiser"]


@dataclass
class DenoiserConfig:
    """U-Net settings. The defaults are the published DiffMatch ones (121.2 M parameters at 85 inputs).

    Attributes:
        base_channels: channels of the first level.
        channel_mult: per-level channel multipliers; the number of levels is their count.
        num_res_blocks: residual blocks per level (the decoder has one more, as in ADM).
        attention_resolutions: feature-map sizes (in pixels of the flow grid) that get self-attention.
        attention_head_dim: width of one attention head (diffusers sets widths, not head counts;
            128 gives 3 heads at 384 and 4 heads at 512 channels).
        dropout: dropout in the residual blocks.
        scale_shift_norm: FiLM-style timestep conditioning (ADM's ``use_scale_shift_norm``).
        norm_groups: GroupNorm groups.
    """

    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (16, 8)
    attention_head_dim: int = 128
    dropout: float = 0.0
    scale_shift_norm: bool = True
    norm_groups: int = 32


class FlowDenoiser(nn.Module):
    """Predicts the clean flow ``F_0`` from the noisy flow ``F_t`` and the conditions.

    The U-Net sees ``concat(F_t, F_init, C_l)`` and outputs a residual that is added to ``F_init``
    (paper Sec. 4.3). Flows here are normalised (see :class:`diffmatch.model.DiffMatch`).

    Args:
        config: U-Net settings.
        size: side of the square flow grid (needed for the attention levels).
        cost_channels: channels of the local cost (``(2R+1)²``), 0 without it.
        use_init_flow: feed ``F_init`` and predict a residual on it; otherwise predict ``F_0`` directly.
    """

    def __init__(
        self, config: DenoiserConfig, size: int, cost_channels: int, use_init_flow: bool = True
    ) -> None:
        super().__init__()
        levels = len(config.channel_mult)
        if size % 2 ** (levels - 1):
            raise ValueError(
                f"flow grid size {size} must be divisible by 2**(levels-1) = {2 ** (levels - 1)}"
            )
        channels = tuple(config.base_channels * m for m in config.channel_mult)
        if any(c % config.norm_groups for c in channels):
            raise ValueError(f"channels {channels} must be divisible by norm_groups={config.norm_groups}")
        attn = [size // 2**i in config.attention_resolutions for i in range(levels)]
        self.use_init_flow = use_init_flow
        self.cost_channels = cost_channels
        self.in_channels = 2 + (2 if use_init_flow else 0) + cost_channels
        self.unet = UNet2DModel(
            sample_size=size,
            in_channels=self.in_channels,
            out_channels=2,
            block_out_channels=channels,
            layers_per_block=config.num_res_blocks,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            attention_head_dim=config.attention_head_dim,
            resnet_time_scale_shift="scale_shift" if config.scale_shift_norm else "default",
            norm_num_groups=config.norm_groups,
            dropout=config.dropout,
        )
        # A zero last layer starts training at x0 = F_init, a stable start for a residual predictor.
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def forward(
        self,
        noisy_flow: torch.Tensor,
        timestep: torch.Tensor,
        init_flow: torch.Tensor,
        local_cost: torch.Tensor | None,
    ) -> torch.Tensor:
        """Predict the clean flow.

        Args:
            noisy_flow: ``(B, 2, h, w)`` noisy normalised flow ``F_t``.
            timestep: ``(B,)`` integer timesteps.
            init_flow: ``(B, 2, h, w)`` normalised ``F_init``.
            local_cost: ``(B, K, h, w)`` local cost, or ``None`` when the model has none.

        Returns:
            ``(B, 2, h, w)`` predicted normalised clean flow ``F_0``.
        """
        parts = [noisy_flow]
        if self.use_init_flow:
            parts.append(init_flow)
        if self.cost_channels:
            if local_cost is None or local_cost.shape[1] != self.cost_channels:
                got = None if local_cost is None else local_cost.shape[1]
                raise ValueError(f"local_cost must have {self.cost_channels} channels, got {got}")
            parts.append(local_cost)
        residual = self.unet(torch.cat(parts, dim=1), timestep).sample
        return init_flow + residual if self.use_init_flow else residual
