"""DiffMatch stage 2: the cascaded flow-upsampling diffusion model (paper Sec. 4.4 and App. A).

Stage 1 (:class:`~diffmatch.model.DiffMatch`) samples flows on the coarse ``cost_size`` grid (paper:
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

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffmatch.cost_volume import l2_normalize, local_feature_correlation
from diffmatch.denoiser import DenoiserConfig, FlowDenoiser
from diffmatch.diffusion import FlowDiffusion, Generators
from diffmatch.features import Features
from diffmatch.geometry import check_flow, from_grid, resize_flow, to_grid
from diffmatch.model import DiffMatch, DiffMatchConfig, clamp_mean, expand_generators
from diffmatch.precision import full_precision
from diffmatch.result import MatchResult

__all__ = [
    "UpsamplerConfig",
    "upsampler_config_from_dict",
    "stage2_denoiser_config",
    "FlowUpsampler",
    "CascadeDiffMatch",
]


@dataclass
class UpsamplerConfig:
    """Settings of the flow-upsampling stage. Defaults are the paper's (64² → 256²).

    The U-Net architecture is not a setting: it is stage 1's (:func:`stage2_denoiser_config`), so
    that stage 2 can start from the stage-1 weights.

    Attributes:
        size: side of the square fine flow grid (paper: 256, VGG pool1 of the 512² input).
        radius: local-cost radius ``R``; equal to stage 1's so the U-Net inputs match (paper: 4).
        init_noise: std, in normalised units, of Gaussian noise added to the downsampled
            ground-truth flow *on the coarse grid* before it is upsampled to the training ``F_init``,
            so that it carries smooth errors like a stage-1 sample (paper: 0, none).
        stage1_init_probability: share of training items whose ``F_init`` is stage 1's own
            prediction (one sample, stage 1's default steps, no gradient) instead of the perturbed
            ground truth, so that stage 2 learns to fix the errors stage 1 really makes (paper: 0).
        refine: at inference, ``each`` upsamples every stage-1 hypothesis into one fine sample;
            ``mean`` upsamples the (clamped, with ``clamp_flow``) mean of the stage-1 hypotheses and
            draws ``N`` new fine samples from it, as the official code does.
        normalize_after_sampling: L2-normalise the source features after sampling them for the
            local cost (the official ``build_local_corr_sr``) rather than before.
    """

    size: int = 256
    radius: int = 4
    init_noise: float = 0.0
    stage1_init_probability: float = 0.0
    refine: Literal["each", "mean"] = "each"
    normalize_after_sampling: bool = False

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"upsampler size must be positive, got {self.size}")
        if self.radius < 0:
            raise ValueError(f"upsampler radius must be >= 0, got {self.radius}")
        if self.init_noise < 0:
            raise ValueError(f"upsampler init_noise must be >= 0, got {self.init_noise}")
        if not 0.0 <= self.stage1_init_probability <= 1.0:
            raise ValueError(
                f"upsampler stage1_init_probability must be in [0, 1], got {self.stage1_init_probability}"
            )
        if self.refine not in ("each", "mean"):
            raise ValueError(f"upsampler refine must be 'each' or 'mean', got {self.refine!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, as stored in checkpoints and exported weights."""
        return asdict(self)


def upsampler_config_from_dict(data: dict[str, Any] | UpsamplerConfig) -> UpsamplerConfig:
    """Build an :class:`UpsamplerConfig` from a dict, rejecting unknown keys by name."""
    if isinstance(data, UpsamplerConfig):
        return data
    known = {f.name for f in fields(UpsamplerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"upsampler config: unknown settings {unknown}; this version knows {sorted(known)}")
    return UpsamplerConfig(**data)


def stage2_denoiser_config(config: DenoiserConfig, stage1_size: int, size: int) -> DenoiserConfig:
    """Stage 1's U-Net settings with attention at the *same levels* on a grid of side ``size``.

    :class:`~diffmatch.denoiser.FlowDenoiser` places attention by feature-map size; at 256² the stage-1
    sizes (16, 8) would match no level and the blocks (hence the weights) would differ. Mapping the
    sizes level by level keeps the block layout, so the stage-1 weights can be copied.

    Example:
        >>> stage2_denoiser_config(DenoiserConfig(), 64, 256).attention_resolutions
        (64, 32)
    """
    levels = len(config.channel_mult)
    attention_levels = [i for i in range(levels) if stage1_size // 2**i in config.attention_resolutions]
    return replace(config, attention_resolutions=tuple(size // 2**i for i in attention_levels))


class FlowUpsampler(nn.Module):
    """Stage 2: the flow-upsampling denoiser and its conditioning; it owns no feature extractor.

    Args:
        config: stage-2 settings, or a dict of them.
        stage1: the stage-1 settings (U-Net architecture, coarse grid, diffusion schedule).
    """

    def __init__(self, config: UpsamplerConfig | dict[str, Any], stage1: DiffMatchConfig) -> None:
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
        self.denoiser = FlowDenoiser(
            self.denoiser_config, cfg.size, (2 * cfg.radius + 1) ** 2, True, stage1.num_train_timesteps, stage1.flow_scale
        )
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
        c, s = self.coarse_size, self.config.size
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
        if mask is None:
            grid_mask = torch.ones_like(gt[:, :1], dtype=torch.bool)
        else:
            grid_mask = F.interpolate(mask[:, None].float(), size=(s, s), mode="area") > 0.99
        b = gt.shape[0]
        t = self.diffusion.sample_timesteps(b, gt.device, generator)
        noise = torch.randn(gt.shape, generator=generator, device=gt.device, dtype=gt.dtype)
        pred = self.denoiser(self.diffusion.add_noise(gt, noise, t), t, init, local)
        per_pixel = ((pred - gt) ** 2).sum(1, keepdim=True)
        if self.loss_type == "epe":
            per_pixel = (per_pixel + 1e-12).sqrt()
        loss = (per_pixel * grid_mask).sum() / grid_mask.sum().clamp_min(1)
        return {"loss": loss, "pred": pred, "target": gt, "mask": grid_mask[:, 0], "init": init}

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


class CascadeDiffMatch(DiffMatch):
    """DiffMatch with flow upsampling: stage 1 (this class's :class:`DiffMatch` part) + :class:`FlowUpsampler`.

    Stage 1's modules keep their names (``features``, ``denoiser``), so a stage-1 state dict is this
    model's minus ``upsampler.*``; both stages share the one frozen feature extractor, run once per
    pair. ``config`` is stage 1's; ``upsampler.config`` stage 2's. :meth:`loss` is the stage-2 loss
    (stage 1 is trained on its own first, then frozen).

    Args:
        config: stage-1 settings, or a dict of them.
        upsampler: stage-2 settings, or a dict of them.
    """

    def __init__(
        self,
        config: DiffMatchConfig | dict[str, Any] | None = None,
        upsampler: UpsamplerConfig | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(config)
        self.upsampler = FlowUpsampler(upsampler if upsampler is not None else UpsamplerConfig(), self.config)

    def with_image_size(self, image_size: int) -> CascadeDiffMatch:
        """A cascade runs at its trained size only: stage 2's grid is tied to stage 1's."""
        if image_size != self.config.image_size:
            raise ValueError(f"a cascade model runs at its own image_size {self.config.image_size}, got {image_size!r}")
        return self

    def init_from_stage1(self) -> None:
        """Copy the stage-1 denoiser weights into the stage-2 denoiser (the paper's fine-tuning start).

        Raises:
            ValueError: the two U-Nets differ (names the first mismatching tensors), e.g. another radius.
        """
        own, stage1 = self.upsampler.denoiser.state_dict(), self.denoiser.state_dict()
        wrong = sorted(k for k in set(own) | set(stage1) if k not in own or k not in stage1 or own[k].shape != stage1[k].shape)
        if wrong:
            raise ValueError(f"stage-2 denoiser does not fit the stage-1 weights: {', '.join(wrong[:3])}")
        self.upsampler.denoiser.load_state_dict(stage1)

    def loss(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        flow: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Stage-2 training loss; only the feature extraction of stage 1 runs.

        Args:
            source: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
            target: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
            flow: ``(B, 2, H, W)`` ground-truth flow in pixels, ``target(x) ≈ source(x + flow(x))``.
            mask: ``(B, H, W)`` bool, where the ground truth is valid.
            generator: optional RNG for the ``F_init`` noise, timesteps and diffusion noise.

        Returns:
            See :meth:`FlowUpsampler.loss`.
        """
        check_flow(flow)
        stage1 = None
        with torch.no_grad():
            features = self.extract(source, target)
            if self.upsampler.config.stage1_init_probability > 0:
                # Stage 1's own prediction, as at inference: one sample with its default steps.
                cond = self.condition_from_maps(self._cost_maps(features[0]), self._cost_maps(features[1]), features)
                stage1 = self.sample_normalized(cond, 1, generator=generator)[:, 0]
        return self.upsampler.loss(features, flow, tuple(source.shape[-2:]), mask, generator, stage1)

    @torch.no_grad()
    def upsample(
        self,
        features: tuple[Features, Features],
        coarse: torch.Tensor,
        target_size: tuple[int, int],
        source_size: tuple[int, int],
        num_steps: int = 5,
        eta: float = 0.0,
        generator: Generators = None,
        init_noise: torch.Tensor | None = None,
    ) -> MatchResult:
        """Run stage 2 on given coarse hypotheses (from stage 1 or any other coarse matcher).

        Args:
            features: from :meth:`extract`.
            coarse: ``(B, N, 2, c, c)`` normalised coarse flows (see :meth:`to_cost_grid`).
            target_size: ``(Ht, Wt)`` of the output.
            source_size: ``(Hs, Ws)`` the flow points into.
            num_steps: DDIM steps.
            eta: DDIM eta.
            generator: a generator, one per item, or ``None``.
            init_noise: ``(B, N, 2, s, s)`` starting noise of the fine samples (``None``: drawn).

        Returns:
            :class:`MatchResult` at ``target_size`` in pixels; ``init_flow`` is the coarse mean flow,
            bilinearly upsampled. With ``refine="mean"`` every fine sample starts from that mean.
        """
        b, n = coarse.shape[:2]
        generators = expand_generators(generator, b, n, coarse.device)
        if self.upsampler.config.refine == "mean":
            mean = coarse.mean(1, keepdim=True)
            if self.config.clamp_flow:
                mean = mean.clamp(-1.0, 1.0)
            coarse = mean.expand_as(coarse)
        fine = self.upsampler.sample(features, coarse, num_steps, eta, generators, init_noise)
        samples = self.upsampler.from_fine_grid(fine.flatten(0, 1), target_size, source_size)
        init = self.from_cost_grid(coarse.mean(1), target_size, source_size)
        return MatchResult.from_samples(samples.view(b, n, 2, *target_size), init_flow=init)

    @torch.no_grad()
    def forward(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        num_samples: int = 1,
        num_steps: int | None = None,
        eta: float = 0.0,
        generator: Generators = None,
    ) -> MatchResult:
        """Dense flow from ``target`` into ``source``: ``N`` stage-1 hypotheses, upsampled by stage 2.

        Stage 2 refines each hypothesis (``refine="each"``) or draws ``N`` samples from their mean
        (``refine="mean"``, the official scheme).

        Args:
            source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` RGB in ``[0, 1]``.
            num_samples: hypotheses ``N`` (each stage runs them as one batch).
            num_steps: DDIM steps of each stage (``None``: :meth:`default_steps`).
            eta: DDIM eta of each stage.
            generator: a generator, one per item, or ``None``.

        Returns:
            :class:`MatchResult` at the target's size, in pixels: mean and variance of the ``N`` fine
            hypotheses; ``init_flow`` is the stage-1 mean flow (bilinearly upsampled) for comparison.
        """
        cond = self.condition(source, target)
        stage1_gen, stage2_gen = _split_generators(generator, source.shape[0])
        num_steps = self.default_steps() if num_steps is None else num_steps
        coarse = self.sample_normalized(cond, num_samples, num_steps, eta, stage1_gen)
        size_t, size_s = tuple(target.shape[-2:]), tuple(source.shape[-2:])
        return self.upsample(cond.features, coarse, size_t, size_s, num_steps, eta, stage2_gen)


def _split_generators(generator: Generators, batch: int) -> tuple[Generators, Generators]:
    """Two independent generators per item (stage 1, stage 2), each item drawing from its own source in turn."""
    if generator is None:
        return None, None
    per_item = generator if isinstance(generator, list) else [generator] * batch
    if len(per_item) != batch:
        raise ValueError(f"got {len(per_item)} generators for a batch of {batch}")
    first, second = [], []
    for gen in per_item:
        seeds = torch.randint(0, 2**62, (2,), generator=gen, device=gen.device).tolist()
        first.append(torch.Generator(device=gen.device).manual_seed(int(seeds[0])))
        second.append(torch.Generator(device=gen.device).manual_seed(int(seeds[1])))
    return first, second
