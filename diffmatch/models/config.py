"""Settings of the models: :class:`DiffMatchConfig` (stage 1) and :class:`UpsamplerConfig` (stage 2).

Both are plain dataclasses whose defaults are the paper's; checkpoints store them as dicts
(:meth:`DiffMatchConfig.to_dict`), and :func:`config_from_stored` reads settings written before a
newer key existed with the value those models were trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from diffmatch.models.denoiser import LEGACY_DENOISER, DenoiserConfig

__all__ = [
    "LEGACY_MODEL",
    "DiffMatchConfig",
    "UpsamplerConfig",
    "config_from_dict",
    "config_from_stored",
    "stage2_denoiser_config",
    "upsampler_config_from_dict",
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
            :class:`~diffmatch.models.diffusion.FlowDiffusion`); 1 is the paper's setting.
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
    :data:`~diffmatch.models.denoiser.LEGACY_DENOISER`, not with today's defaults; files written since
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
            draws ``N`` new fine samples from it, as the official code does; ``once`` draws one fine
            sample of that mean and gives each hypothesis its stage-1 offset from the mean (bilinearly
            upsampled): the flow is stage 2's, the spread (the uncertainty) is stage 1's, and stage 2
            costs one U-Net run whatever ``N``.
        normalize_after_sampling: L2-normalise the source features after sampling them for the
            local cost (the official ``build_local_corr_sr``) rather than before.
        reverse_pass: what the reverse pass behind the confidence's ``fb_error`` cue runs (see
            :meth:`DiffMatch.run <diffmatch.models.diffmatch.DiffMatch.run>`): the whole ``cascade``,
            or ``stage1`` alone, its flow bilinearly upsampled (one fine U-Net run less; the
            refinement brings either to full resolution). A calibration describes the setting it was
            fitted with.
    """

    size: int = 256
    radius: int = 4
    init_noise: float = 0.0
    stage1_init_probability: float = 0.0
    refine: Literal["each", "mean", "once"] = "each"
    normalize_after_sampling: bool = False
    reverse_pass: Literal["cascade", "stage1"] = "cascade"

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
        if self.refine not in ("each", "mean", "once"):
            raise ValueError(f"upsampler refine must be 'each', 'mean' or 'once', got {self.refine!r}")
        if self.reverse_pass not in ("cascade", "stage1"):
            raise ValueError(f"upsampler reverse_pass must be 'cascade' or 'stage1', got {self.reverse_pass!r}")

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

    :class:`~diffmatch.models.denoiser.FlowDenoiser` places attention by feature-map size; at 256² the stage-1
    sizes (16, 8) would match no level and the blocks (hence the weights) would differ. Mapping the
    sizes level by level keeps the block layout, so the stage-1 weights can be copied.

    Example:
        >>> stage2_denoiser_config(DenoiserConfig(), 64, 256).attention_resolutions
        (64, 32)
    """
    levels = len(config.channel_mult)
    attention_levels = [i for i in range(levels) if stage1_size // 2**i in config.attention_resolutions]
    return replace(config, attention_resolutions=tuple(size // 2**i for i in attention_levels))
