"""DiffMatch (Nam et al., ICLR 2024): the whole dense matcher, one sampling path.

:meth:`DiffMatch.run` is the pipeline every caller goes through (``forward``, the confidence cues,
:class:`~diffmatch.matcher.DiffMatcher`):

1. :meth:`~DiffMatch.extract`: the frozen feature pyramid of both images (one backbone pass);
2. :meth:`~DiffMatch.cost_maps`, :meth:`~DiffMatch.correlation`: the global cost volume on the
   ``cost_size`` grid;
3. :meth:`~DiffMatch.initial_flow`: ``F_init`` (soft-argmax or argmax of the cost);
4. :meth:`~DiffMatch.condition_from_maps`: the local cost of radius ``R`` around ``F_init``;
5. :meth:`~DiffMatch.sample_normalized`: ``N`` hypotheses drawn by DDIM from the conditional
   denoiser (:mod:`~diffmatch.models.denoiser`, :mod:`~diffmatch.models.diffusion`);
6. with a flow upsampler (stage 2, :class:`~diffmatch.models.upsampler.FlowUpsampler`),
   :meth:`~DiffMatch.upsample`: every hypothesis upsampled and denoised on the fine grid;
7. the hypotheses in pixels at the target's size: their mean is the flow, their variance the
   uncertainty (:class:`~diffmatch.result.MatchResult`).

Flow convention: flows are on the target grid, ``target(x) ≈ source(x + flow(x))``, channel 0 = x.
Inside the model, flows live on the square ``cost_size`` grid and are *normalised* by dividing the
pixel flow by ``cost_size`` (what the official code does: x by W, y by H at the cost resolution), so
a displacement across the whole image is about 1. Public outputs are in pixels of the original images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffmatch.features import FeatureExtractor, Features, build_features, offline_kwargs
from diffmatch.features.base import l2_normalize
from diffmatch.geometry import check_flow, from_grid, to_grid
from diffmatch.models.config import DiffMatchConfig, UpsamplerConfig, config_from_dict
from diffmatch.models.cost_volume import argmax_flow, global_correlation, local_correlation, soft_argmax_flow
from diffmatch.models.denoiser import FlowDenoiser
from diffmatch.models.diffusion import (
    FlowDiffusion,
    Generators,
    clamp_mean,
    derive_generators,
    expand_generators,
    split_generators,
)
from diffmatch.models.loss import grid_mask, masked_flow_loss
from diffmatch.models.precision import full_precision
from diffmatch.models.upsampler import FlowUpsampler
from diffmatch.result import MatchResult

__all__ = ["Condition", "DiffMatch", "MatchRun", "network_dtype"]


@dataclass
class Condition:
    """What the denoiser is conditioned on, all on the ``cost_size`` grid.

    Attributes:
        init_flow: ``(B, 2, c, c)`` normalised ``F_init``.
        local_cost: ``(B, (2R+1)², c, c)`` local cost, or ``None``.
        features: the extracted source and target features (for the upsampler).
        cost_maps: the source's and the target's L2-normalised maps on the cost grid (for the
            reverse pass and the cost-peak cue); empty lists when not kept.
    """

    init_flow: torch.Tensor
    local_cost: torch.Tensor | None
    features: tuple[Features, Features]
    cost_maps: tuple[list[torch.Tensor], list[torch.Tensor]] = field(default_factory=lambda: ([], []))


@dataclass
class MatchRun:
    """One run of :meth:`DiffMatch.run`: the result and what a confidence is computed from.

    Attributes:
        result: flow on the target grid (``target(x) ≈ source(x + flow(x))``, px) with its hypotheses,
            uncertainty and ``init_flow`` (stage 1's ``F_init``; a cascade's stage-1 mean flow).
        condition: the conditioning of the pair (``F_init``, local cost, features, cost maps).
        reverse: with ``reverse=True``, the source matched to the target from the same features (flow
            on the source grid, px), else ``None``.
    """

    result: MatchResult
    condition: Condition
    reverse: MatchResult | None = None


class DiffMatch(nn.Module):
    """DiffMatch stage 1 and, optionally, its flow upsampler (stage 2): a plain ``nn.Module``.

    A cascade is this class with an ``upsampler``: stage 1's modules keep their names
    (``features``, ``denoiser``), so a stage-1 state dict is a cascade's minus ``upsampler.*``; both
    stages share the one frozen feature extractor, run once per pair.

    Args:
        config: stage-1 settings, or a dict of them.
        upsampler: stage-2 settings (or a dict of them, or a built :class:`FlowUpsampler`); ``None``:
            stage 1 only.
        pretrained_features: load the backbone's pretrained weights; ``False`` builds it with random
            weights (``weights: random``), for a model that a checkpoint fills next
            (:func:`~diffmatch.features.offline_kwargs`). ``config`` keeps the real settings.
        features: a built feature extractor to use (shared, not copied) instead of building one.
        denoiser: a built stage-1 denoiser to use (shared) instead of building one.
    """

    def __init__(
        self,
        config: DiffMatchConfig | dict[str, Any] | None = None,
        upsampler: UpsamplerConfig | dict[str, Any] | FlowUpsampler | None = None,
        *,
        pretrained_features: bool = True,
        features: FeatureExtractor | None = None,
        denoiser: FlowDenoiser | None = None,
    ) -> None:
        super().__init__()
        self.config = config_from_dict(config or DiffMatchConfig())
        cfg = self.config
        if features is None:
            kwargs = cfg.feature_kwargs if pretrained_features else offline_kwargs(cfg.features, cfg.feature_kwargs)
            features = build_features(cfg.features, **kwargs)
        self.features = features
        if denoiser is None:
            cost_channels = (2 * cfg.radius + 1) ** 2 if cfg.use_local_cost else 0
            denoiser = FlowDenoiser(
                cfg.denoiser, cfg.cost_size, cost_channels, cfg.use_init_flow, cfg.num_train_timesteps, cfg.flow_scale
            )
        self.denoiser = denoiser
        self.diffusion = FlowDiffusion(cfg.num_train_timesteps, cfg.beta_schedule, cfg.flow_scale)
        if upsampler is not None and not isinstance(upsampler, FlowUpsampler):
            upsampler = FlowUpsampler(upsampler, cfg)
        self.upsampler = upsampler
        if not self.features.stores_weights:
            self._register_state_dict_hook(_drop_feature_weights)
            self.register_load_state_dict_post_hook(_ignore_missing_feature_weights)

    @property
    def trained_denoiser(self) -> FlowDenoiser:
        """The U-Net that training updates: stage 1's, or with an upsampler stage 2's (stage 1 frozen)."""
        return self.denoiser if self.upsampler is None else self.upsampler.denoiser

    def with_trained_denoiser(self, denoiser: FlowDenoiser) -> DiffMatch:
        """This model with :attr:`trained_denoiser` replaced (e.g. by its moving average); every other
        module is shared, not copied."""
        if self.upsampler is None:
            model = DiffMatch(self.config, features=self.features, denoiser=denoiser)
        else:
            stage2 = FlowUpsampler(self.upsampler.config, self.config, denoiser=denoiser)
            model = DiffMatch(self.config, stage2, features=self.features, denoiser=self.denoiser)
        return model.train(self.training)

    def init_from_stage1(self) -> None:
        """Copy the stage-1 denoiser weights into the stage-2 denoiser (the paper's fine-tuning start).

        Raises:
            ValueError: no upsampler, or the two U-Nets differ (names the first mismatching tensors),
                e.g. another radius.
        """
        if self.upsampler is None:
            raise ValueError("init_from_stage1 needs a model with an upsampler")
        own, stage1 = self.upsampler.denoiser.state_dict(), self.denoiser.state_dict()
        wrong = sorted(k for k in set(own) | set(stage1) if k not in own or k not in stage1 or own[k].shape != stage1[k].shape)
        if wrong:
            raise ValueError(f"stage-2 denoiser does not fit the stage-1 weights: {', '.join(wrong[:3])}")
        self.upsampler.denoiser.load_state_dict(stage1)

    # ------------------------------------------------------------------------------------ conditions
    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(image.shape)}")
        if image.shape[-2:] == (size, size):
            return image
        antialias = self.config.resize == "antialias"
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)

    def cost_maps(self, features: Features) -> list[torch.Tensor]:
        """The coarse feature maps resized to the cost grid and L2-normalised, float32 whatever the
        precision (see :meth:`condition_from_maps`), ``(B, C_l, c, c)`` each."""
        c = self.config.cost_size
        corners = self.config.resize == "official"
        maps = []
        for f in features.coarse:
            with full_precision(f):
                maps.append(l2_normalize(F.interpolate(f.float(), size=(c, c), mode="bilinear", align_corners=corners)))
        return maps

    def extract(self, source: torch.Tensor, target: torch.Tensor) -> tuple[Features, Features]:
        """Features of both images, resized to ``image_size`` first; one backbone pass for the pair.

        The images are resized in their own dtype and then cast to the extractor's (bfloat16 or
        float16 when the matcher's precision says so, :mod:`diffmatch.models.precision`); the maps come out
        in the extractor's dtype.
        """
        if source.shape[0] != target.shape[0]:
            raise ValueError(f"source and target batch sizes differ: {source.shape[0]} vs {target.shape[0]}")
        images = torch.cat((self._prepare(source), self._prepare(target)))
        both = self.features(images.to(network_dtype(self.features, images.dtype)))
        b = source.shape[0]
        split = [
            Features([m[:b] for m in both.coarse], None if both.fine is None else both.fine[:b]),
            Features([m[b:] for m in both.coarse], None if both.fine is None else both.fine[b:]),
        ]
        return split[0], split[1]

    def correlation(self, source_maps: list[torch.Tensor], target_maps: list[torch.Tensor]) -> torch.Tensor:
        """Global cost averaged over levels (as the official code does), ``(B, c*c, c*c)``, float32."""
        with full_precision(source_maps[0]):
            costs = [global_correlation(s.float(), t.float()) for s, t in zip(source_maps, target_maps)]
            return costs[0] if len(costs) == 1 else torch.stack(costs).mean(0)

    def initial_flow(self, correlation: torch.Tensor, mode: Literal["hard", "soft"] | None = None) -> torch.Tensor:
        """``F_init`` in cost-grid pixels from the global cost, ``(B, 2, c, c)``: its arg-max
        (``"hard"``) or soft-argmax (``"soft"``); ``None``: as ``config.init_flow`` says."""
        c = self.config.cost_size
        if (mode or self.config.init_flow) == "hard":
            return argmax_flow(correlation, (c, c), (c, c))
        return soft_argmax_flow(correlation, (c, c), (c, c), self.config.temperature)

    @torch.no_grad()
    def global_flow(
        self, source: torch.Tensor, target: torch.Tensor, mode: Literal["hard", "soft"] = "hard"
    ) -> torch.Tensor:
        """The match of the global cost alone, no learning: its arg-max (``"hard"``) or soft-argmax.

        The paper's "raw correlation" baseline, and the matches the layer search fits its planes to.

        Args:
            source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)``.
            mode: ``"hard"`` or ``"soft"`` (at the model's temperature), whatever ``config.init_flow`` is.

        Returns:
            ``(B, 2, Ht, Wt)`` float32 flow on the target grid, ``target(x) ≈ source(x + flow(x))``,
            px, channel 0 = x.
        """
        feats = self.extract(source, target)
        maps = self.cost_maps(feats[0]), self.cost_maps(feats[1])
        return self._flow_of_maps(*maps, tuple(target.shape[-2:]), tuple(source.shape[-2:]), mode)

    @torch.no_grad()
    def global_flows(
        self, source: torch.Tensor, target: torch.Tensor, mode: Literal["hard", "soft"] = "hard"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`global_flow` both ways from one feature pass: ``(forward, backward)``.

        ``forward`` is ``global_flow(source, target)``, ``(B, 2, Ht, Wt)`` on the target grid
        (``target(x) ≈ source(x + forward(x))``); ``backward`` is ``global_flow(target, source)``,
        ``(B, 2, Hs, Ws)`` on the source grid (``source(x) ≈ target(x + backward(x))``); px, channel 0 = x.
        """
        feats = self.extract(source, target)
        source_maps, target_maps = self.cost_maps(feats[0]), self.cost_maps(feats[1])
        size_t, size_s = tuple(target.shape[-2:]), tuple(source.shape[-2:])
        return (
            self._flow_of_maps(source_maps, target_maps, size_t, size_s, mode),
            self._flow_of_maps(target_maps, source_maps, size_s, size_t, mode),
        )

    def _flow_of_maps(
        self,
        source_maps: list[torch.Tensor],
        target_maps: list[torch.Tensor],
        size_t: tuple[int, int],
        size_s: tuple[int, int],
        mode: Literal["hard", "soft"],
    ) -> torch.Tensor:
        """The global cost's flow of the target into the source, ``(B, 2, Ht, Wt)`` float32 px, from
        both images' maps on the cost grid."""
        flow = self.initial_flow(self.correlation(source_maps, target_maps), mode)
        return self.from_cost_grid(flow / self.config.cost_size, size_t, size_s).float()

    def condition(self, source: torch.Tensor, target: torch.Tensor) -> Condition:
        """Compute ``F_init`` and the local cost for a batch of image pairs.

        Args:
            source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` RGB in ``[0, 1]``.
        """
        feats = self.extract(source, target)
        return self.condition_from_maps(self.cost_maps(feats[0]), self.cost_maps(feats[1]), feats)

    def condition_from_maps(
        self,
        source_maps: list[torch.Tensor],
        target_maps: list[torch.Tensor],
        features: tuple[Features, Features] | None = None,
    ) -> Condition:
        """``F_init`` and the local cost from feature maps already on the cost grid, ``(B, C_l, c, c)`` each.

        Computed in float32 even under autocast (:mod:`diffmatch.models.precision`): the soft-argmax divides
        cosine similarities near 1 by a temperature of 0.005, so a bfloat16 cost (2⁻⁸ resolution)
        would move ``F_init`` by whole cells; and autocast would cast the ``(c², c²)`` volume to
        bfloat16 for the matmuls and back to float32 for the softmax and the local cost's sampling.
        """
        c = self.config.cost_size
        with full_precision(source_maps[0]):
            corr = self.correlation(source_maps, target_maps)
            init_px = self.initial_flow(corr)
            local = None
            if self.config.use_local_cost:
                x_major = self.config.local_cost_order == "x_major"
                local = local_correlation(corr, init_px, (c, c), self.config.radius, x_major=x_major)
        empty = Features(coarse=[], fine=None)
        return Condition(init_px / c, local, features or (empty, empty), (source_maps, target_maps))

    def reverse_condition(self, cond: Condition) -> Condition:
        """The condition of the swapped pair (the source matched to the target) from ``cond``'s features
        and cost maps: no second feature extraction."""
        source_maps, target_maps = cond.cost_maps
        return self.condition_from_maps(target_maps, source_maps, (cond.features[1], cond.features[0]))

    # ------------------------------------------------------------------------------------ flow units
    def to_cost_grid(self, flow: torch.Tensor, source_size: tuple[int, int]) -> torch.Tensor:
        """Pixel flow at a target's size to normalised flow on the cost grid (:func:`~diffmatch.geometry.to_grid`)."""
        return to_grid(flow, self.config.cost_size, source_size)

    def from_cost_grid(
        self, flow: torch.Tensor, target_size: tuple[int, int], source_size: tuple[int, int]
    ) -> torch.Tensor:
        """Normalised flow on the cost grid to pixel flow at ``target_size``, pointing into ``source_size``."""
        return from_grid(flow, target_size, source_size, align_corners=self.config.resize == "official")

    # ------------------------------------------------------------------------------------- training
    def loss(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        flow: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training loss of the stage being trained (:attr:`trained_denoiser`), masked: MSE (paper
        Eq. 9) or EPE (:mod:`~diffmatch.models.loss`).

        Stage 1 predicts the clean flow on the cost grid from a noised ground truth. With an
        upsampler, stage 1 is frozen and only its features (and, with ``stage1_init_probability``,
        its own prediction) are computed; the loss is stage 2's (:meth:`FlowUpsampler.loss`).

        Args:
            source: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
            target: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
            flow: ``(B, 2, H, W)`` ground-truth flow in pixels, ``target(x) ≈ source(x + flow(x))``.
            mask: ``(B, H, W)`` bool, where the ground truth is valid.
            generator: optional RNG for timesteps and noise.

        Returns:
            ``loss`` (scalar), plus ``pred`` and ``target`` normalised flows and the grid ``mask``
            (stage 2 also gives the ``init`` flow it was conditioned on).
        """
        check_flow(flow)
        if self.upsampler is not None:
            return self._upsampler_loss(source, target, flow, mask, generator)
        cond = self.condition(source, target)
        gt = self.to_cost_grid(flow, source.shape[-2:])
        valid = grid_mask(mask, gt)
        b = gt.shape[0]
        if self.config.diffusion:
            t = self.diffusion.sample_timesteps(b, gt.device, generator)
            noise = torch.randn(gt.shape, generator=generator, device=gt.device, dtype=gt.dtype)
            noisy = self.diffusion.add_noise(gt, noise, t)
        else:
            t = torch.zeros(b, dtype=torch.long, device=gt.device)
            noisy = torch.zeros_like(gt)
        pred = self.denoiser(noisy, t, cond.init_flow, cond.local_cost)
        loss = masked_flow_loss(pred, gt, valid, self.config.loss)
        return {"loss": loss, "pred": pred, "target": gt, "mask": valid[:, 0]}

    def _upsampler_loss(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        flow: torch.Tensor,
        mask: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        assert self.upsampler is not None
        stage1 = None
        with torch.no_grad():
            features = self.extract(source, target)
            if self.upsampler.config.stage1_init_probability > 0:
                # Stage 1's own prediction, as at inference: one sample with its default steps.
                cond = self.condition_from_maps(self.cost_maps(features[0]), self.cost_maps(features[1]), features)
                stage1 = self.sample_normalized(cond, 1, generator=generator)[:, 0]
        return self.upsampler.loss(features, flow, tuple(source.shape[-2:]), mask, generator, stage1)

    # ---------------------------------------------------------------------------- processing size
    @property
    def image_size_step(self) -> int:
        """Processing sizes this model takes are multiples of this: its stride (input pixels per cost
        cell) times ``2**(levels - 1)``, as the U-Net halves the grid ``levels - 1`` times."""
        cfg = self.config
        return cfg.image_size // cfg.cost_size * 2 ** (len(cfg.denoiser.channel_mult) - 1)

    def with_image_size(self, image_size: int) -> DiffMatch:
        """This model run at another processing size, sharing its weights (no copy of them).

        The cost grid keeps its cell size in input pixels (``image_size / cost_size``), so a larger
        size gives a finer grid relative to the image. Flows inside the model are normalised by the
        grid size; the flow scale grows with the grid so that the U-Net sees displacements in the
        same cell units it was trained on (its radius-``R`` local cost is in cells too). A model
        trained at 384² then runs at, e.g., 512² or 640²: its errors are a share of a cell, so on
        images larger than its own size they shrink in pixels (README, "Processing size"). A
        cascade's fine grid follows in proportion (the bundled default: 96² at 384², 128² at 512²),
        its flow scale likewise, so stage 2 also sees its own cell units.

        Args:
            image_size: the new square size; a multiple of the stride times ``2**(levels - 1)`` (the
                U-Net halves the grid ``levels - 1`` times), e.g. 32 for the bundled model.

        Returns:
            ``self`` at its own size, otherwise a new :class:`DiffMatch` whose parameters are this
            model's (training one trains the other).

        Raises:
            ValueError: a size the grid cannot take (for a cascade, its fine grid too).
        """
        cfg = self.config
        if image_size == cfg.image_size:
            return self
        stride, rest = divmod(cfg.image_size, cfg.cost_size)
        if rest:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of cost_size {cfg.cost_size}")
        step = self.image_size_step
        if not isinstance(image_size, int) or image_size < step or image_size % step:
            raise ValueError(f"image_size must be a positive multiple of {step} for this model, got {image_size!r}")
        size = image_size // stride
        ratio = size / cfg.cost_size
        levels = [i for i in range(len(cfg.denoiser.channel_mult)) if cfg.cost_size // 2**i in cfg.denoiser.attention_resolutions]
        denoiser_config = replace(cfg.denoiser, attention_resolutions=tuple(size // 2**i for i in levels))
        new_config = replace(
            cfg, image_size=image_size, cost_size=size, flow_scale=cfg.flow_scale * ratio, denoiser=denoiser_config
        )
        upsampler = None
        if self.upsampler is not None:
            fine, rest = divmod(self.upsampler.config.size * size, cfg.cost_size)
            if rest or fine % 2 ** (len(cfg.denoiser.channel_mult) - 1):
                raise ValueError(
                    f"image_size {image_size}: stage 2's fine grid ({self.upsampler.config.size} at image_size "
                    f"{cfg.image_size}) cannot follow it to a whole, evenly halvable size"
                )
            upsampler = FlowUpsampler(
                replace(self.upsampler.config, size=fine), new_config,
                denoiser=self.upsampler.denoiser.rescaled(new_config.flow_scale),
            )  # fmt: skip
        return DiffMatch(
            new_config, upsampler, features=self.features, denoiser=self.denoiser.rescaled(new_config.flow_scale)
        )

    # ------------------------------------------------------------------------------------- sampling
    def default_steps(self) -> int:
        """The DDIM steps used when none are given: ``config.sampling_steps``, else ``T``."""
        return self.config.sampling_steps or self.config.num_train_timesteps

    def sample_normalized(
        self,
        cond: Condition,
        num_samples: int = 1,
        num_steps: int | None = None,
        eta: float = 0.0,
        generator: Generators = None,
        init_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``N`` flow hypotheses on the cost grid, normalised, as ``(B, N, 2, c, c)``; one batched run.

        ``num_steps=None`` uses :meth:`default_steps`.

        ``init_noise`` (``(B, N, 2, c, c)``) replaces the drawn starting noise ``F_T``.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        num_steps = self.default_steps() if num_steps is None else num_steps
        init, local = cond.init_flow, cond.local_cost
        b, _, c, _ = init.shape
        rep = lambda x: None if x is None else x.repeat_interleave(num_samples, dim=0)  # noqa: E731
        init_n, local_n = rep(init), rep(local)
        if not self.config.diffusion:
            t = torch.zeros(b, dtype=torch.long, device=init.device)
            flow = self.denoiser(torch.zeros_like(init), t, init, local)
            return flow.unsqueeze(1).expand(-1, num_samples, -1, -1, -1)
        # Item i draws its N hypotheses from its own generator (or in turn from a shared one).
        generators = expand_generators(generator, b, num_samples, init.device)

        def denoise(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoiser(sample, t, init_n, local_n)

        start = None if init_noise is None else init_noise.reshape(b * num_samples, 2, c, c)
        out = self.diffusion.sample(
            denoise, (b * num_samples, 2, c, c), num_steps, eta, generators, init.device, init.dtype, start
        )
        out = out.view(b, num_samples, 2, c, c)
        return clamp_mean(out) if self.config.clamp_flow else out

    def sample(
        self,
        cond: Condition,
        target_size: tuple[int, int],
        source_size: tuple[int, int],
        num_samples: int = 1,
        num_steps: int | None = None,
        eta: float = 0.0,
        generator: Generators = None,
        stage2: bool = True,
    ) -> MatchResult:
        """The sampling half of :meth:`run` on a given condition: ``N`` hypotheses (upsampled by stage 2
        when there is one and ``stage2`` is true), in pixels at ``target_size`` pointing into ``source_size``.

        Args:
            cond: from :meth:`condition` (or :meth:`reverse_condition`).
            target_size: ``(Ht, Wt)`` of the output.
            source_size: ``(Hs, Ws)`` the flow points into.
            num_samples: hypotheses ``N`` (each stage runs them as one batch).
            num_steps: DDIM steps of each stage (``None``: :meth:`default_steps`).
            eta: DDIM eta of each stage.
            generator: a generator, one per item, or ``None``.
            stage2: run stage 2 when the model has one (``False``: stage 1's hypotheses, bilinearly
                upsampled).

        Returns:
            :class:`MatchResult`: mean and variance of the hypotheses; ``init_flow`` is ``F_init``
            (stage 1) or the stage-1 mean flow, bilinearly upsampled (cascade).
        """
        num_steps = self.default_steps() if num_steps is None else num_steps
        if self.upsampler is not None and stage2:
            stage1_gen, stage2_gen = split_generators(generator, cond.init_flow.shape[0])
            coarse = self.sample_normalized(cond, num_samples, num_steps, eta, stage1_gen)
            return self.upsample(cond.features, coarse, target_size, source_size, num_steps, eta, stage2_gen)
        samples = self.sample_normalized(cond, num_samples, num_steps, eta, generator)
        b, n = samples.shape[:2]
        samples_px = self.from_cost_grid(samples.flatten(0, 1), target_size, source_size).view(b, n, 2, *target_size)
        return MatchResult.from_samples(samples_px, init_flow=self.from_cost_grid(cond.init_flow, target_size, source_size))

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
            init_noise: ``(B, N, 2, s, s)`` starting noise of the fine samples (``None``: drawn;
                ``refine="once"`` reads only the first).

        Returns:
            :class:`MatchResult` at ``target_size`` in pixels; ``init_flow`` is the coarse mean flow,
            bilinearly upsampled. With ``refine="mean"`` every fine sample starts from that mean; with
            ``refine="once"`` one fine sample of it is drawn and hypothesis ``i`` is that sample plus
            its coarse offset from the mean (:class:`~diffmatch.models.config.UpsamplerConfig`).

        Raises:
            ValueError: the model has no upsampler.
        """
        if self.upsampler is None:
            raise ValueError("upsample needs a model with an upsampler (stage 2)")
        b, n = coarse.shape[:2]
        mode = self.upsampler.config.refine
        if mode != "each":
            mean = coarse.mean(1, keepdim=True)
            if self.config.clamp_flow:
                mean = mean.clamp(-1.0, 1.0)
        if mode == "once":
            # One fine sample of the mean; each hypothesis keeps its offset from the mean (bilinear,
            # so the hypotheses' mean is that fine sample and their spread is stage 1's).
            generators = expand_generators(generator, b, 1, coarse.device)
            start = None if init_noise is None else init_noise[:, :1]
            fine = self.upsampler.sample(features, mean, num_steps, eta, generators, start)
            fine_px = self.upsampler.from_fine_grid(fine.flatten(0, 1), target_size, source_size)
            coarse_px = self.from_cost_grid(coarse.flatten(0, 1), target_size, source_size).view(b, n, 2, *target_size)
            init = self.from_cost_grid(mean.flatten(0, 1), target_size, source_size)
            samples = fine_px.unsqueeze(1) + coarse_px - init.unsqueeze(1)
            return MatchResult.from_samples(samples, init_flow=init)
        if mode == "mean":
            coarse = mean.expand_as(coarse)
        generators = expand_generators(generator, b, n, coarse.device)
        fine = self.upsampler.sample(features, coarse, num_steps, eta, generators, init_noise)
        samples = self.upsampler.from_fine_grid(fine.flatten(0, 1), target_size, source_size)
        init = self.from_cost_grid(coarse.mean(1), target_size, source_size)
        return MatchResult.from_samples(samples.view(b, n, 2, *target_size), init_flow=init)

    @torch.no_grad()
    def run(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        num_samples: int = 1,
        num_steps: int | None = None,
        eta: float = 0.0,
        generator: Generators = None,
        reverse: bool = False,
        reverse_samples: int | None = None,
    ) -> MatchRun:
        """The whole pipeline: features → cost → ``F_init`` → local cost → sampling (→ stage 2).

        Args:
            source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` RGB in ``[0, 1]``.
            num_samples: hypotheses ``N`` (run as one batch).
            num_steps: DDIM steps (``None``: :meth:`default_steps`).
            eta: DDIM eta.
            generator: a generator, one per item, or ``None``.
            reverse: also match ``source`` to ``target`` from the same features (the forward–backward
                cue); it draws from generators derived from ``generator`` after the forward pass.
            reverse_samples: the reverse pass's hypotheses (``None``: ``num_samples``); its result's
                mean flow is what the forward–backward check reads. A cascade's reverse pass runs
                stage 2 too unless its ``upsampler.reverse_pass`` is ``"stage1"``.

        Returns:
            :class:`MatchRun`: the :class:`MatchResult` at the target's size (``target(x) ≈
            source(x + flow(x))``, px), the condition, and the reverse result.
        """
        cond = self.condition(source, target)
        size_t, size_s = tuple(target.shape[-2:]), tuple(source.shape[-2:])
        result = self.sample(cond, size_t, size_s, num_samples, num_steps, eta, generator)
        backward = None
        if reverse:
            count = num_samples if reverse_samples is None else reverse_samples
            stage2 = self.upsampler is not None and self.upsampler.config.reverse_pass == "cascade"
            backward = self.sample(
                self.reverse_condition(cond), size_s, size_t, count, num_steps, eta, derive_generators(generator), stage2
            )
        return MatchRun(result, cond, backward)

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
        """Dense flow from ``target`` into ``source`` with multi-hypothesis uncertainty (:meth:`run`'s result).

        Args:
            source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` RGB in ``[0, 1]``.
            num_samples: hypotheses ``N`` (run as one batch).
            num_steps: DDIM steps (``None``: :meth:`default_steps`).
            eta: DDIM eta.
            generator: a generator, one per item, or ``None``.

        Returns:
            :class:`MatchResult` at the target's size, in pixels: ``target(x) ≈ source(x + flow(x))``.
        """
        return self.run(source, target, num_samples, num_steps, eta, generator).result


def network_dtype(module: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype ``module`` computes in: its first floating-point parameter's (``default`` without one)."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return default


def _drop_feature_weights(module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    # Pretrained extractors (SD, DINOv2) are rebuilt from their folder; checkpoints keep only the path.
    for key in [k for k in state if k.startswith(prefix + "features.")]:
        del state[key]


def _ignore_missing_feature_weights(module: nn.Module, incompatible: Any) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if ".features." not in f".{k}"]
