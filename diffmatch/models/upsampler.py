"""DiffMatch stage 2: the cascaded flow-upsampling diffusion model (paper Sec. 4.4 and App. A).

Stage 1 (:class:`~diffmatch.models.diffmatch.DiffMatch`) samples flows on the coarse ``cost_size`` grid (paper:
64²). Stage 2 upsamples each hypothesis to the fine grid (paper: 256², VGG pool1 of the 512² input)
and denoises it with a second U-Net of the same architecture, conditioned on the upsampled flow
``F_init`` and on a local cost of the fine features around it. It is fine-tuned from the stage-1
denoiser with the *downsampled ground truth* as ``F_init``.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, channel 0 = x, ``(B, 2, H, W)``,
``align_corners=False``. Inside the model, fine flows are normalised by dividing the fine-grid pixel
flow by ``size``, as stage 1 divides by ``cost_size``, so both stages see the same units (a
displacement across the whole image is about 1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffmatch.features import Features
from diffmatch.features.base import l2_normalize
from diffmatch.geometry import check_flow, from_grid, resize_flow, to_grid
from diffmatch.models.config import (
    DiffMatchConfig,
    UpsamplerConfig,
    stage2_denoiser_config,
    upsampler_config_from_dict,
)
from diffmatch.models.cost_volume import local_feature_correlation
from diffmatch.models.denoiser import FlowDenoiser
from diffmatch.models.diffusion import FlowDiffusion, Generators, clamp_mean
from diffmatch.models.loss import grid_mask, masked_flow_loss
from diffmatch.models.precision import full_precision

__all__ = ["FlowUpsampler"]


class FlowUpsampler(nn.Module):
    """Stage 2: the flow-upsampling denoiser and its conditioning; it owns no feature extractor.

    Args:
        config: stage-2 settings, or a dict of them.
        stage1: the stage-1 settings (U-Net architecture, coarse grid, diffusion schedule).
        denoiser: a built stage-2 denoiser to use (shared, not copied) instead of building one.
    """

    def __init__(
        self, config: UpsamplerConfig | dict[str, Any], stage1: DiffMatchConfig, denoiser: FlowDenoiser | None = None
    ) -> None:
        super().__init__()
        self.config = upsampler_config_from_dict(config)
        cfg = self.config
        if not (stage1.use_init_flow and stage1.use_local_cost):
            raise ValueError("the upsampler needs a stage 1 with use_init_flow=True and use_local_cost=True")
        if cfg.size < stage1.cost_size:
            raise ValueError(f"upsampler size {cfg.size} must be >= the stage-1 cost_size {stage1.cost_size}")
        self.coarse_size = stage1.cost_size
        # Conditions shared with stage 1: channel order, resizing and clamping.
        self.x_major = stage1.local_cost_order == "x_major"
        self.align_corners = stage1.resize == "official"
        self.clamp_flow = stage1.clamp_flow
        self.loss_type = stage1.loss
        self.denoiser_config = stage2_denoiser_config(stage1.denoiser, stage1.cost_size, cfg.size)
        if denoiser is None:
            denoiser = FlowDenoiser(
                self.denoiser_config, cfg.size, (2 * cfg.radius + 1) ** 2, True, stage1.num_train_timesteps, stage1.flow_scale
            )
        self.denoiser = denoiser
        self.diffusion = FlowDiffusion(stage1.num_train_timesteps, stage1.beta_schedule, stage1.flow_scale)

    # ---------------------------------------------------------------------------------- conditions
    def fine_features(self, features: Features) -> torch.Tensor:
        """``(B, C, s, s)`` fine features, L2-normalised unless ``normalize_after_sampling``.

        ``Features.fine`` (VGG pool1) resized to the fine grid; extractors without one (e.g. the
        zero-shot DIFT/DINO features) fall back to their first coarse map, resized.
        """
        s = self.config.size
        fine = features.fine if features.fine is not None else features.coarse[0]
        if fine.shape[-2:] != (s, s):
            fine = F.interpolate(fine, size=(s, s), mode="bilinear", align_corners=self.align_corners)
        return fine if self.config.normalize_after_sampling else l2_normalize(fine)

    def upsample(self, coarse: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 2, c, c)`` coarse flow to normalised ``(B, 2, s, s)`` fine flow (bilinear)."""
        check_flow(coarse, "coarse")
        c, s = coarse.shape[-1], self.config.size
        if self.align_corners:  # official: the normalised field itself, corner pixels aligned
            return F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=True)
        return resize_flow(coarse * c, (s, s)) / s

    def local_cost(self, source: torch.Tensor, target: torch.Tensor, init_flow: torch.Tensor) -> torch.Tensor:
        """``(B, (2R+1)², s, s)`` cost of fine features ``(B, C, s, s)`` around normalised ``init_flow``, float32."""
        with full_precision(source):  # as stage 1's cost (DiffMatch.condition_from_maps)
            return local_feature_correlation(
                source.float(),
                target.float(),
                init_flow.float() * self.config.size,
                self.config.radius,
                x_major=self.x_major,
                normalize_after_sampling=self.config.normalize_after_sampling,
            )

    def to_fine_grid(self, flow: torch.Tensor, source_size: tuple[int, int]) -> torch.Tensor:
        """Pixel flow at a target's size to normalised flow on the fine grid."""
        return to_grid(flow, self.config.size, source_size)

    def from_fine_grid(
        self, flow: torch.Tensor, target_size: tuple[int, int], source_size: tuple[int, int]
    ) -> torch.Tensor:
        """Normalised flow on the fine grid to pixel flow at ``target_size``, pointing into ``source_size``."""
        return from_grid(flow, target_size, source_size, align_corners=self.align_corners)

    # ------------------------------------------------------------------------------------ training
    def loss(
        self,
        features: tuple[Features, Features],
        flow: torch.Tensor,
        source_size: tuple[int, int],
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        stage1: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Stage-2 loss (paper Sec. 4.4): masked MSE (or EPE, as stage 1's ``loss``) with the
        downsampled ground truth, or stage 1's prediction, as ``F_init``.

        Args:
            features: source and target features (from :meth:`DiffMatch.extract`).
            flow: ``(B, 2, H, W)`` ground-truth pixel flow at the target's size.
            source_size: ``(Hs, Ws)`` of the source image.
            mask: ``(B, H, W)`` bool, where the ground truth is valid.
            generator: optional RNG for timesteps and noise.
            stage1: ``(B, 2, c, c)`` normalised stage-1 predictions; each item uses its own as
                ``F_init`` with probability ``stage1_init_probability`` (required when that is > 0).

        Returns:
            ``loss`` (scalar), plus ``pred`` and ``target`` normalised fine flows, the fine ``mask``
            and the ``init`` flow it was conditioned on.
        """
        check_flow(flow)
        c = self.coarse_size
        hs, ws = source_size
        gt = self.to_fine_grid(flow, source_size)
        # F_init: the ground truth as stage 1 is trained to give it, on the coarse grid, upsampled.
        coarse = to_grid(flow, c, (hs, ws))
        if self.config.init_noise > 0:
            noise = torch.randn(coarse.shape, generator=generator, device=coarse.device, dtype=coarse.dtype)
            coarse = coarse + self.config.init_noise * noise
        if self.config.stage1_init_probability > 0:
            if stage1 is None or stage1.shape != coarse.shape:
                raise ValueError(
                    f"stage1_init_probability > 0 needs stage-1 predictions of shape {tuple(coarse.shape)}, "
                    f"got {None if stage1 is None else tuple(stage1.shape)}"
                )
            draw = torch.rand(coarse.shape[0], generator=generator, device=coarse.device)
            use = (draw < self.config.stage1_init_probability).view(-1, 1, 1, 1)
            coarse = torch.where(use, stage1.to(coarse.dtype), coarse)
        init = self.upsample(coarse)
        with torch.no_grad():  # nothing upstream of the cost is trained
            local = self.local_cost(self.fine_features(features[0]), self.fine_features(features[1]), init)
        valid = grid_mask(mask, gt)
        b = gt.shape[0]
        t = self.diffusion.sample_timesteps(b, gt.device, generator)
        noise = torch.randn(gt.shape, generator=generator, device=gt.device, dtype=gt.dtype)
        pred = self.denoiser(self.diffusion.add_noise(gt, noise, t), t, init, local)
        loss = masked_flow_loss(pred, gt, valid, self.loss_type)
        return {"loss": loss, "pred": pred, "target": gt, "mask": valid[:, 0], "init": init}

    # ------------------------------------------------------------------------------------ sampling
    def sample(
        self,
        features: tuple[Features, Features],
        coarse: torch.Tensor,
        num_steps: int = 5,
        eta: float = 0.0,
        generator: Generators = None,
        init_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One fine sample per coarse hypothesis, all in one batched DDIM run.

        Args:
            features: source and target features of the ``B`` pairs.
            coarse: ``(B, N, 2, c, c)`` normalised stage-1 hypotheses.
            num_steps: DDIM steps.
            eta: DDIM eta.
            generator: ``None``, one generator, or one per hypothesis (``B * N``, item-major).
            init_noise: ``(B, N, 2, s, s)`` starting noise (``None``: drawn from ``generator``).

        Returns:
            ``(B, N, 2, s, s)`` normalised fine flows.
        """
        if coarse.ndim != 5 or coarse.shape[2] != 2:
            raise ValueError(f"coarse must be (B, N, 2, c, c), got {tuple(coarse.shape)}")
        b, n, s = coarse.shape[0], coarse.shape[1], self.config.size
        init = self.upsample(coarse.flatten(0, 1))
        src, tgt = (self.fine_features(f).repeat_interleave(n, dim=0) for f in features)
        local = self.local_cost(src, tgt, init)

        def denoise(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoiser(sample, t, init, local)

        start = None if init_noise is None else init_noise.reshape(b * n, 2, s, s)
        out = self.diffusion.sample(
            denoise, (b * n, 2, s, s), num_steps, eta, generator, init.device, init.dtype, start
        )
        out = out.view(b, n, 2, s, s)
        return clamp_mean(out) if self.clamp_flow else out
