"""DiffMatch stage 1: features → global cost → F_init → local cost → conditional flow diffusion.

Flow convention: flows are on the target grid, ``target(x) ≈ source(x + flow(x))``, channel 0 = x.
Inside the model, flows live on the square ``cost_size`` grid and are *normalised* by dividing the
pixel flow by ``cost_size`` (what the official code does: x by W, y by H at the cost resolution), so
a displacement across the whole image is about 1. Public outputs are in pixels of the original images.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffmatch.cost_volume import (
    argmax_flow,
    global_correlation,
    l2_normalize,
    local_correlation,
    soft_argmax_flow,
)
from diffmatch.denoiser import LEGACY_DENOISER, DenoiserConfig, FlowDenoiser
from diffmatch.diffusion import FlowDiffusion, Generators
from diffmatch.features import Features, build_features
from diffmatch.geometry import check_flow, from_grid, to_grid
from diffmatch.precision import full_precision
from diffmatch.result import MatchResult

__all__ = [
    "DiffMatchConfig",
    "Condition",
    "DiffMatch",
    "LEGACY_MODEL",
    "clamp_mean",
    "config_from_dict",
    "config_from_stored",
    "expand_generators",
    "network_dtype",
]

# Values of settings added after the first checkpoints were written: stored settings without one of
# these keys were trained with this value (see :func:`config_from_stored`).
LEGACY_MODEL = {"local_cost_order": "y_major", "resize": "antialias", "clamp_flow": False}


@dataclass
class DiffMatchConfig:
    """Everything that defines a DiffMatch stage-1 model. Defaults are the paper's settings.

    Attributes:
        features: condition features, one of ``vgg16 | dift | dino | fused``.
        feature_kwargs: keyword arguments of the feature extractor (e.g. ``{"weights": "random"}``).
        image_size: both images are resized to this square size before feature extraction.
        cost_size: side of the square cost/flow grid the diffusion runs on.
        init_flow: ``soft`` (soft-argmax, as the paper's text says) or ``hard`` (argmax, what the
            official code does in training and evaluation; its soft-argmax is never called).
        temperature: soft-argmax temperature on cosine similarities (0.005, as the official code's
            ``get_flow``; VGG features are non-negative, so their cosine similarities crowd near 1 and
            a higher temperature pulls F_init toward the image centre).
        radius: local-cost radius ``R``; the local cost has ``(2R+1)²`` channels.
        local_cost_order: order of the local-cost channels: ``x_major`` (the x offset is the slow
            index, as the official ``local_Corr``) or ``y_major`` (the first checkpoints).
        resize: ``antialias`` resizes images to ``image_size`` with antialiasing and feature maps to
            the cost grid with ``align_corners=False``; ``official`` resizes images without
            antialiasing, and feature maps to the cost grid, coarse flows to the stage-2 grid and
            output flows to the image with ``align_corners=True``, as the official code.
        flow_scale: the diffusion runs on this multiple of the normalised flow (see
            :class:`~diffmatch.diffusion.FlowDiffusion`); 1 is the paper's setting.
        clamp_flow: clamp the mean of the sampled normalised hypotheses to ``[-1, 1]``, as the
            official code does (:func:`clamp_mean`: each hypothesis is moved by its pixel's clamp of
            the mean, so the variance is kept).
        use_local_cost: condition on the local cost (ablation: Table 4 II).
        use_init_flow: condition on ``F_init`` and predict a residual on it (ablation: Table 4 III).
        diffusion: train and sample as a diffusion model; ``False`` is direct regression (Table 3).
        num_train_timesteps: diffusion steps ``T``.
        beta_schedule: diffusers beta schedule.
        sampling_steps: DDIM steps used when a caller does not give a number (``None``: ``T``).
            A checkpoint stores the count its model samples best with (the bundled XFeat model: 1).
        loss: ``mse`` (squared error of the normalised flow, the paper's Eq. 9) or ``epe`` (its
            Euclidean norm per pixel, as RAFT and GLU-Net train: less dominated by the few large
            errors, so more of the gradient goes to sub-pixel accuracy).
        denoiser: U-Net settings.
    """

    features: str = "vgg16"
    feature_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 512
    cost_size: int = 64
    init_flow: Literal["soft", "hard"] = "soft"
    temperature: float = 0.005
    radius: int = 4
    local_cost_order: Literal["x_major", "y_major"] = "x_major"
    resize: Literal["antialias", "official"] = "antialias"
    flow_scale: float = 1.0
    clamp_flow: bool = False
    use_local_cost: bool = True
    use_init_flow: bool = True
    diffusion: bool = True
    num_train_timesteps: int = 5
    beta_schedule: str = "squaredcos_cap_v2"
    loss: Literal["mse", "epe"] = "mse"
    sampling_steps: int | None = None
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)

    def __post_init__(self) -> None:
        if isinstance(self.denoiser, dict):
            self.denoiser = _dataclass_from_dict(DenoiserConfig, self.denoiser, "denoiser")
        self.denoiser.channel_mult = tuple(self.denoiser.channel_mult)
        self.denoiser.attention_resolutions = tuple(self.denoiser.attention_resolutions)
        if self.init_flow not in ("soft", "hard"):
            raise ValueError(f"init_flow must be 'soft' or 'hard', got {self.init_flow!r}")
        if self.local_cost_order not in ("x_major", "y_major"):
            raise ValueError(f"local_cost_order must be 'x_major' or 'y_major', got {self.local_cost_order!r}")
        if self.sampling_steps is not None and not 1 <= self.sampling_steps <= self.num_train_timesteps:
            raise ValueError(
                f"sampling_steps must be in [1, {self.num_train_timesteps}] or None, got {self.sampling_steps}"
            )
        if self.loss not in ("mse", "epe"):
            raise ValueError(f"loss must be 'mse' or 'epe', got {self.loss!r}")
        if self.resize not in ("antialias", "official"):
            raise ValueError(f"resize must be 'antialias' or 'official', got {self.resize!r}")
        if self.image_size <= 0 or self.cost_size <= 0 or self.cost_size > self.image_size:
            raise ValueError(f"need 0 < cost_size <= image_size, got {self.cost_size} and {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists for tuples), as stored in exported weights."""
        out = asdict(self)
        out["denoiser"]["channel_mult"] = list(self.denoiser.channel_mult)
        out["denoiser"]["attention_resolutions"] = list(self.denoiser.attention_resolutions)
        return out


def _dataclass_from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what}: unknown settings {unknown}; this version knows {sorted(known)}")
    return cls(**data)


def config_from_dict(data: dict[str, Any] | DiffMatchConfig) -> DiffMatchConfig:
    """Build a :class:`DiffMatchConfig` from a dict, rejecting unknown keys by name."""
    if isinstance(data, DiffMatchConfig):
        return data
    return _dataclass_from_dict(DiffMatchConfig, dict(data), "DiffMatch config")


def config_from_stored(data: dict[str, Any] | DiffMatchConfig) -> DiffMatchConfig:
    """Build the config of *stored* settings (a checkpoint's): a missing newer key means its legacy value.

    Settings written before a key existed were trained with the behaviour in :data:`LEGACY_MODEL` and
    :data:`~diffmatch.denoiser.LEGACY_DENOISER`, not with today's defaults; files written since
    store every key, so for them this equals :func:`config_from_dict`.
    """
    if isinstance(data, DiffMatchConfig):
        return data
    data = {**LEGACY_MODEL, **data}
    denoiser = data.get("denoiser", {})
    if isinstance(denoiser, dict):
        data["denoiser"] = {**LEGACY_DENOISER, **denoiser}
    return config_from_dict(data)


@dataclass
class Condition:
    """What the denoiser is conditioned on, all on the ``cost_size`` grid.

    Attributes:
        init_flow: ``(B, 2, c, c)`` normalised ``F_init``.
        local_cost: ``(B, (2R+1)², c, c)`` local cost, or ``None``.
        features: the extracted source and target features (for the upsampler).
    """

    init_flow: torch.Tensor
    local_cost: torch.Tensor | None
    features: tuple[Features, Features]


class DiffMatch(nn.Module):
    """DiffMatch stage 1 (Nam et al., ICLR 2024), a plain ``nn.Module``.

    Args:
        config: model settings, or a dict of them.
    """

    def __init__(self, config: DiffMatchConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config_from_dict(config or DiffMatchConfig())
        cfg = self.config
        self.features = build_features(cfg.features, **cfg.feature_kwargs)
        cost_channels = (2 * cfg.radius + 1) ** 2 if cfg.use_local_cost else 0
        self.denoiser = FlowDenoiser(
            cfg.denoiser, cfg.cost_size, cost_channels, cfg.use_init_flow, cfg.num_train_timesteps, cfg.flow_scale
        )
        self.diffusion = FlowDiffusion(cfg.num_train_timesteps, cfg.beta_schedule, cfg.flow_scale)
        if not self.features.stores_weights:
            self._register_state_dict_hook(_drop_feature_weights)
            self.register_load_state_dict_post_hook(_ignore_missing_feature_weights)

    # ------------------------------------------------------------------------------------ conditions
    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(image.shape)}")
        if image.shape[-2:] == (size, size):
            return image
        antialias = self.config.resize == "antialias"
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)

    def _cost_maps(self, features: Features) -> list[torch.Tensor]:
        # float32 whatever the autocast precision: see condition_from_maps.
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
        float16 when the matcher's precision says so, :mod:`diffmatch.precision`); the maps come out
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

    def initial_flow(self, correlation: torch.Tensor) -> torch.Tensor:
        """``F_init`` in cost-grid pixels from the global cost, ``(B, 2, c, c)``."""
        c = self.config.cost_size
        if self.config.init_flow == "hard":
            return argmax_flow(correlation, (c, c), (c, c))
        return soft_argmax_flow(correlation, (c, c), (c, c), self.config.temperature)

    def condition(self, source: torch.Tensor, target: torch.Tensor) -> Condition:
        """Compute ``F_init`` and the local cost for a batch of image pairs.

        Args:
            source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` RGB in ``[0, 1]``.
        """
        feats = self.extract(source, target)
        return self.condition_from_maps(self._cost_maps(feats[0]), self._cost_maps(feats[1]), feats)

    def condition_from_maps(
        self,
        source_maps: list[torch.Tensor],
        target_maps: list[torch.Tensor],
        features: tuple[Features, Features] | None = None,
    ) -> Condition:
        """``F_init`` and the local cost from feature maps already on the cost grid, ``(B, C_l, c, c)`` each.

        Computed in float32 even under autocast (:mod:`diffmatch.precision`): the soft-argmax divides
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
        return Condition(init_flow=init_px / c, local_cost=local, features=features or (empty, empty))

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
        """The training loss between predicted and true clean flow, masked: MSE (paper Eq. 9) or EPE.

        Args:
            source: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
            target: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
            flow: ``(B, 2, H, W)`` ground-truth flow in pixels, ``target(x) ≈ source(x + flow(x))``.
            mask: ``(B, H, W)`` bool, where the ground truth is valid.
            generator: optional RNG for timesteps and noise.

        Returns:
            ``loss`` (scalar), plus ``pred`` and ``target`` normalised flows and the cost-grid ``mask``.
        """
        check_flow(flow)
        cond = self.condition(source, target)
        gt = self.to_cost_grid(flow, source.shape[-2:])
        c = self.config.cost_size
        if mask is None:
            grid_mask = torch.ones_like(gt[:, :1], dtype=torch.bool)
        else:
            area = F.interpolate(mask[:, None].float(), size=(c, c), mode="area")
            grid_mask = area > 0.99
        b = gt.shape[0]
        if self.config.diffusion:
            t = self.diffusion.sample_timesteps(b, gt.device, generator)
            noise = torch.randn(gt.shape, generator=generator, device=gt.device, dtype=gt.dtype)
            noisy = self.diffusion.add_noise(gt, noise, t)
        else:
            t = torch.zeros(b, dtype=torch.long, device=gt.device)
            noisy = torch.zeros_like(gt)
        pred = self.denoiser(noisy, t, cond.init_flow, cond.local_cost)
        per_pixel = ((pred - gt) ** 2).sum(1, keepdim=True)
        if self.config.loss == "epe":
            per_pixel = (per_pixel + 1e-12).sqrt()
        loss = (per_pixel * grid_mask).sum() / grid_mask.sum().clamp_min(1)
        return {"loss": loss, "pred": pred, "target": gt, "mask": grid_mask[:, 0]}

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
        images larger than its own size they shrink in pixels (README, "Processing size").

        Args:
            image_size: the new square size; a multiple of the stride times ``2**(levels - 1)`` (the
                U-Net halves the grid ``levels - 1`` times), e.g. 32 for the bundled model.

        Returns:
            ``self`` at its own size, otherwise a new :class:`DiffMatch` whose parameters are this
            model's (training one trains the other).

        Raises:
            ValueError: a size the grid cannot take.
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
        resized = copy.copy(self)  # a new __dict__, but the same submodules dict: give it its own
        resized._modules = dict(self._modules)
        resized.config = new_config
        resized.denoiser = copy.copy(self.denoiser)
        resized.denoiser.flow_scale = new_config.flow_scale
        resized.diffusion = copy.copy(self.diffusion)
        resized.diffusion.flow_scale = new_config.flow_scale
        return resized

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
        """Dense flow from ``target`` into ``source`` with multi-hypothesis uncertainty.

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
        cond = self.condition(source, target)
        samples = self.sample_normalized(cond, num_samples, num_steps, eta, generator)
        b, n = samples.shape[:2]
        size_t, size_s = tuple(target.shape[-2:]), tuple(source.shape[-2:])
        samples_px = self.from_cost_grid(samples.flatten(0, 1), size_t, size_s).view(b, n, 2, *size_t)
        init_px = self.from_cost_grid(cond.init_flow, size_t, size_s)
        return MatchResult.from_samples(samples_px, init_flow=init_px)


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


def clamp_mean(samples: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """Hypotheses moved so that their mean is clamped to ``[-bound, bound]``, as the official code clamps.

    The official sampler averages its ``N`` hypotheses and clamps that mean to ``[-1, 1]``
    (``ddim_sample_loop``, then ``run_sample_lr``); clamping each hypothesis instead differs
    wherever they straddle the bound. Every hypothesis of a pixel is moved by the same amount, the
    mean's clamp there: the mean becomes the official flow, and the spread (the uncertainty) is kept.

    Args:
        samples: ``(B, N, 2, h, w)`` normalised flows (target grid, ``target(x) ≈ source(x + flow(x))``).
        bound: the clamp.

    Returns:
        ``(B, N, 2, h, w)``, the same hypotheses shifted per pixel and component.
    """
    if samples.ndim != 5 or samples.shape[2] != 2:
        raise ValueError(f"samples must be (B, N, 2, h, w), got {tuple(samples.shape)}")
    mean = samples.mean(dim=1, keepdim=True)
    return samples + (mean.clamp(-bound, bound) - mean)


def expand_generators(
    generator: Generators, batch: int, num_samples: int, device: torch.device
) -> Generators:
    """One generator per (item, hypothesis), derived so that item i's samples do not depend on the batch."""
    if generator is None:
        return None
    per_item = generator if isinstance(generator, list) else [generator] * batch
    if len(per_item) != batch:
        raise ValueError(f"got {len(per_item)} generators for a batch of {batch}")
    out = []
    for gen in per_item:
        seeds = torch.randint(0, 2**62, (num_samples,), generator=gen, device=gen.device).tolist()
        for seed in seeds:
            child = torch.Generator(device=gen.device)
            child.manual_seed(int(seed))
            out.append(child)
    return out
