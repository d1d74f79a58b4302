"""The conditional flow-denoising U-Net (improved-DDPM / ADM style, on diffusers' ``UNet2DModel``).

The official DiffMatch U-Net (KU-CVLAB/DiffMatch, ``improved_diffusion/unet.py``) is ADM; diffusers'
``UNet2DModel`` has the same blocks and tensors. What ``UNet2DModel`` cannot express by its own
arguments (a fixed head *count* at every attention level, and ADM's zero-initialised block outputs)
is applied after construction in one place, :func:`_official_attention_and_init`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

__all__ = ["DenoiserConfig", "LEGACY_DENOISER", "FlowDenoiser"]

# Values of settings added after the first checkpoints were written: stored settings without one of
# these keys were trained with this value (see ``diffmatch.models.config.config_from_stored``).
LEGACY_DENOISER = {
    "num_heads": None,
    "mid_attention_norm": False,
    "rescale_timesteps": False,
    "zero_init_blocks": False,
}


@dataclass
class DenoiserConfig:
    """U-Net settings. The defaults are the official DiffMatch network (121,153,794 parameters at 85 inputs).

    Attributes:
        base_channels: channels of the first level.
        channel_mult: per-level channel multipliers; the number of levels is their count.
        num_res_blocks: residual blocks per level (the decoder has one more, as in ADM).
        attention_resolutions: feature-map sizes (in pixels of the flow grid) that get self-attention.
        attention_head_dim: width of one attention head, used only when ``num_heads`` is ``None``
            (the first checkpoints: 128 gave 3 heads at 384 and 4 heads at 512 channels).
        num_heads: heads of every attention block (official: 4 at every level); ``None`` derives
            them from ``attention_head_dim``.
        mid_attention_norm: GroupNorm before the middle block's attention (official; diffusers
            drops it with ``scale_shift_norm`` unless asked).
        rescale_timesteps: feed the timestep as ``t * 1000 / T`` (official ``rescale_timesteps``);
            ``False`` feeds ``t``.
        zero_init_blocks: start every residual block's last conv and every attention output
            projection at zero, as ADM does (the final conv is always zero-initialised).
        dropout: dropout in the residual blocks.
        scale_shift_norm: FiLM-style timestep conditioning (ADM's ``use_scale_shift_norm``).
        norm_groups: GroupNorm groups.
    """

    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (16, 8)
    attention_head_dim: int = 128
    num_heads: int | None = 4
    mid_attention_norm: bool = True
    rescale_timesteps: bool = True
    zero_init_blocks: bool = True
    dropout: float = 0.0
    scale_shift_norm: bool = True
    norm_groups: int = 32

    def __post_init__(self) -> None:
        if self.num_heads is not None and self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1 or None, got {self.num_heads}")


class FlowDenoiser(nn.Module):
    """Predicts the clean flow ``F_0`` from the noisy flow ``F_t`` and the conditions.

    The U-Net sees ``concat(F_t, F_init, C_l)`` and outputs a residual that is added to ``F_init``
    (paper Sec. 4.3). Flows here are normalised (see :class:`diffmatch.models.diffmatch.DiffMatch`).

    Args:
        config: U-Net settings.
        size: side of the square flow grid (needed for the attention levels).
        cost_channels: channels of the local cost (``(2R+1)²``), 0 without it.
        use_init_flow: feed ``F_init`` and predict a residual on it; otherwise predict ``F_0`` directly.
        num_train_timesteps: diffusion steps ``T`` (for ``config.rescale_timesteps``).
        flow_scale: the diffusion's flow scale ``s``: the U-Net sees ``s F_init`` and predicts
            ``s F_0`` (so its output is on the scale of its noisy input); :meth:`forward` returns
            the normalised ``F_0``.
    """

    def __init__(
        self,
        config: DenoiserConfig,
        size: int,
        cost_channels: int,
        use_init_flow: bool = True,
        num_train_timesteps: int = 5,
        flow_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.flow_scale = float(flow_scale)
        levels = len(config.channel_mult)
        if size % 2 ** (levels - 1):
            raise ValueError(
                f"flow grid size {size} must be divisible by 2**(levels-1) = {2 ** (levels - 1)}"
            )
        channels = tuple(config.base_channels * m for m in config.channel_mult)
        if any(c % config.norm_groups for c in channels):
            raise ValueError(f"channels {channels} must be divisible by norm_groups={config.norm_groups}")
        attn = [size // 2**i in config.attention_resolutions for i in range(levels)]
        heads = config.num_heads
        if heads is not None and any(c % heads for c, a in zip(channels, attn) if a):
            raise ValueError(f"attention channels {channels} must be divisible by num_heads={heads}")
        self.config = config
        self.timestep_scale = 1000.0 / num_train_timesteps if config.rescale_timesteps else 1.0
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
            # One head per block here when the count is fixed; _official_attention_and_init splits them.
            attention_head_dim=config.attention_head_dim if heads is None else None,
            resnet_time_scale_shift="scale_shift" if config.scale_shift_norm else "default",
            norm_num_groups=config.norm_groups,
            attn_norm_num_groups=config.norm_groups if config.mid_attention_norm else None,
            dropout=config.dropout,
        )
        _official_attention_and_init(self.unet, heads, config.zero_init_blocks)

    def rescaled(self, flow_scale: float) -> FlowDenoiser:
        """This denoiser for another flow scale: a shallow copy sharing every parameter (training one
        trains the other), used by :meth:`DiffMatch.with_image_size <diffmatch.models.diffmatch.DiffMatch.with_image_size>`."""
        other = copy.copy(self)
        other.flow_scale = float(flow_scale)
        return other

    def forward(
        self,
        noisy_flow: torch.Tensor,
        timestep: torch.Tensor,
        init_flow: torch.Tensor,
        local_cost: torch.Tensor | None,
    ) -> torch.Tensor:
        """Predict the clean flow.

        Args:
            noisy_flow: ``(B, 2, h, w)`` noisy flow ``F_t``, in the diffusion's (``flow_scale``) units.
            timestep: ``(B,)`` integer timesteps in ``[0, T)``.
            init_flow: ``(B, 2, h, w)`` normalised ``F_init``.
            local_cost: ``(B, K, h, w)`` local cost, or ``None`` when the model has none.

        Returns:
            ``(B, 2, h, w)`` predicted normalised clean flow ``F_0``, float32 whatever the U-Net's dtype.
        """
        scale = self.flow_scale
        parts = [noisy_flow]
        if self.use_init_flow:
            parts.append(init_flow * scale if scale != 1.0 else init_flow)
        if self.cost_channels:
            if local_cost is None or local_cost.shape[1] != self.cost_channels:
                got = None if local_cost is None else local_cost.shape[1]
                raise ValueError(f"local_cost must have {self.cost_channels} channels, got {got}")
            parts.append(local_cost)
        t = timestep.float() * self.timestep_scale if self.config.rescale_timesteps else timestep
        # The U-Net runs in its weights' dtype (diffmatch.models.precision); flows stay float32.
        residual = self.unet(torch.cat(parts, dim=1).to(self.unet.dtype), t).sample.float()
        if scale != 1.0:
            residual = residual / scale
        return init_flow + residual if self.use_init_flow else residual


def _official_attention_and_init(unet: UNet2DModel, num_heads: int | None, zero_blocks: bool) -> None:
    """The ADM details ``UNet2DModel``'s arguments cannot state, applied to a freshly built U-Net.

    * ``num_heads``: diffusers fixes a head *width* for the whole U-Net; ADM fixes a head *count*
      (4 in DiffMatch) at every level, e.g. 4 × 96 at 384 channels. The projections' shapes do not
      depend on the split, so only each block's head count and its ``1/sqrt(width)`` scale change.
    * ``zero_blocks``: ADM zero-initialises each residual block's last conv and each attention output
      projection (``zero_module``), so every block starts as the identity.

    The final conv always starts at zero: the U-Net then starts at ``x0 = F_init``, a stable start
    for a residual predictor.
    """
    for module in unet.modules():
        if isinstance(module, Attention) and num_heads is not None:
            module.heads = num_heads
            module.sliceable_head_dim = num_heads
            module.scale = (module.inner_dim // num_heads) ** -0.5
        if zero_blocks and isinstance(module, ResnetBlock2D):
            nn.init.zeros_(module.conv2.weight)
            nn.init.zeros_(module.conv2.bias)
        if zero_blocks and isinstance(module, Attention):
            nn.init.zeros_(module.to_out[0].weight)
            nn.init.zeros_(module.to_out[0].bias)
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)
