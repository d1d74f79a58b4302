"""``DiffMatcher``: checkpoint-based matching of any two images, with uncertainty.

Flow convention: flow lives on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels of the
original images, channel 0 = x.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from diffmatch.assets import BUNDLED_CHECKPOINT
from diffmatch.confidence import Calibrator, calibrator_from_dict
from diffmatch.confidence.cues import match_with_cues, search_cues
from diffmatch.errors import InputError, MissingCalibrationError
from diffmatch.geometry import estimation as matches
from diffmatch.geometry import warp
from diffmatch.geometry.estimation import GeometryEstimate
from diffmatch.inputs import ImageInput, resolve_device, shrink_images, to_image_batch
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.diffusion import Generators
from diffmatch.models.precision import Precision, check_precision, native_bf16, precision_dtype
from diffmatch.models.weights import load_checkpoint, read_calibration
from diffmatch.refinement import LayerSearchConfig, VariationalRefiner, search_layers
from diffmatch.result import MatchResult
from diffmatch.two_pass import TwoPassConfig, concatenate_results, match_two_pass

__all__ = ["DiffMatcher", "BUNDLED_CHECKPOINT", "AUTO_MAX_IMAGE_SIZE", "parse_image_size"]

# The largest processing size ``image_size="auto"`` picks: the global cost grows with the fourth
# power of the grid (an 80² grid's is 164 MB in float32), so larger images are processed at this size.
AUTO_MAX_IMAGE_SIZE = 640
ImageSize = int | Literal["auto"] | None


def parse_image_size(text: str) -> int | Literal["auto"]:
    """A command line's processing size: ``auto`` or a positive integer (checked against the model later).

    Raises:
        InputError: anything else.
    """
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"image size must be 'auto' or a positive integer, got {text!r}")
    return value


def _refinement_mismatch(calibrator: Calibrator | None, refiner: VariationalRefiner | None) -> str | None:
    """Why a refined result's confidence may be off: the calibration was fitted with other refinement
    settings (``None`` when they agree, or when the calibration did not record them). The solver
    (``backend``) is left out: both solve the same iteration."""
    if calibrator is None or refiner is None or not calibrator.refined:
        return None
    fitted = calibrator.info.get("refinement")
    if not isinstance(fitted, dict):
        return None
    now = asdict(refiner)
    differ = [f"{k}={fitted[k]!r} (now {now[k]!r})" for k in now if k != "backend" and k in fitted and fitted[k] != now[k]]
    if not differ:
        return None
    return (
        f"this checkpoint's confidence was calibrated with the refinement's {', '.join(differ)}: its confidence "
        "may be off; match with those settings, or recalibrate (`python -m diffmatch.calibrate CKPT --out CKPT_CAL`)"
    )


def _fork(generator: torch.Generator | None) -> torch.Generator | None:
    """A new generator in ``generator``'s current state (``None`` stays ``None``)."""
    if generator is None:
        return None
    fork = torch.Generator(device=generator.device)
    fork.set_state(generator.get_state())
    return fork


def _layer_search_config(value: bool | LayerSearchConfig) -> LayerSearchConfig | None:
    if isinstance(value, bool):
        return LayerSearchConfig() if value else None
    if not isinstance(value, LayerSearchConfig):
        raise InputError(f"layer_search must be a bool or a LayerSearchConfig, got {value!r}")
    return value


def _two_pass_config(value: bool | TwoPassConfig) -> TwoPassConfig | None:
    if value is True:
        return TwoPassConfig()
    if value is False:
        return None
    if not isinstance(value, TwoPassConfig):
        raise InputError(f"two_pass must be a bool or a TwoPassConfig, got {value!r}")
    return value


class DiffMatcher:
    """Dense matching with a trained DiffMatch model.

    Example:
        >>> m = DiffMatcher.from_checkpoint()                       # the bundled default model
        >>> r = m.match("a.jpg", "b.jpg", num_samples=3)            # doctest: +SKIP
        >>> r.flow.shape, r.uncertainty.shape                       # doctest: +SKIP
        (torch.Size([1, 2, Ht, Wt]), torch.Size([1, 1, Ht, Wt]))

    Args:
        model: a :class:`DiffMatch` model.
        device: where to run it.
        calibrator: the model's confidence calibration (``python -m diffmatch.calibrate``);
            ``None``: results have no ``confidence``.
        image_size: the square size images are processed at (see
            :meth:`DiffMatch.with_image_size`): ``None`` the model's own; an integer; or ``"auto"``:
            the larger side of the pair rounded up to the model's size step, no smaller than the
            model's own size and no larger than :data:`AUTO_MAX_IMAGE_SIZE`. The model's errors are
            a share of its grid's cells, so on large images ``"auto"`` is more precise in pixels,
            at a higher cost (README, "Processing size").
        refine: sub-pixel refinement of every hypothesis at the target's full resolution
            (:class:`~diffmatch.refinement.VariationalRefiner`): ``True`` (its defaults), a refiner,
            ``False`` (the model's flow as it is), or ``None``: as the calibration was fitted, and
            ``True`` for a model without calibration. A calibrated confidence is only given for
            results made the way its calibration was (:attr:`Calibrator.refined`).
        two_pass: match large viewpoint changes in two passes (:mod:`diffmatch.two_pass`): ``True``
            (the default: its default rule, which runs the second pass only where pass 1's
            homography moves the image a lot), a :class:`~diffmatch.two_pass.TwoPassConfig`, or
            ``False`` (one pass).
        layer_search: offer each pixel the planes the model's global cost sees, and take one where
            it matches clearly better (:mod:`diffmatch.refinement.layer_search`; layers that move
            apart on wide baselines): ``True`` (the default: its default rule, every pair), a
            :class:`~diffmatch.refinement.layer_search.LayerSearchConfig`, or ``False`` (none; README
            "Layer search" has what it gains and loses). The pixels it takes get
            their confidence from the calibration's part for them
            (:attr:`Calibrator.layer_search <diffmatch.confidence.Calibrator.layer_search>`); a
            calibration without one leaves them the confidence of the match they replaced.
        precision: the dtype of the model's networks (feature extractor and U-Net): ``"32"``
            (float32), ``"bf16"`` (bfloat16, CUDA or CPU) or ``"16"`` (float16, CUDA only); their
            weights are cast once, in place. The cost volume, ``F_init``, the DDIM update, the flows
            and the refinement stay float32 (:mod:`diffmatch.models.precision`). bfloat16 is fast only
            where the device has native bfloat16 arithmetic (a warning says when a CPU has not).
        compile: ``torch.compile`` the denoiser's U-Net (in place, on first use; the first match of
            each new shape pays the compilation). Opt-in: it helps where kernel launches dominate
            (small models on a GPU) and costs a compilation per process.
    """

    def __init__(
        self,
        model: DiffMatch,
        device: str | torch.device = "auto",
        calibrator: Calibrator | None = None,
        image_size: ImageSize = None,
        refine: bool | VariationalRefiner | None = None,
        two_pass: bool | TwoPassConfig = True,
        precision: Precision = "32",
        compile: bool = False,
        layer_search: bool | LayerSearchConfig = True,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device)
        if not isinstance(compile, bool):
            raise InputError(f"compile must be True or False, got {compile!r}")
        if self.precision == "bf16" and not native_bf16(self.device):
            warnings.warn(
                "precision bf16: this CPU has no native bfloat16 arithmetic (AVX512-BF16/AMX), so convolutions "
                "take a slow fallback, about 10x slower than precision 32",
                RuntimeWarning,
                stacklevel=2,
            )
        self.model = model.eval().to(device=self.device, dtype=precision_dtype(self.precision))
        if compile:
            self.model.denoiser.unet.compile()  # in place: parameter names (checkpoints) stay as they are
        self.compiled = compile
        self.calibrator = calibrator
        if refine is None:
            refine = calibrator.refined if calibrator is not None else True
        if not isinstance(refine, (bool, VariationalRefiner)):
            raise InputError(f"refine must be a bool, a VariationalRefiner or None, got {refine!r}")
        self.refiner: VariationalRefiner | None = VariationalRefiner() if refine is True else (refine or None)
        mismatch = _refinement_mismatch(calibrator, self.refiner)
        if mismatch is not None:
            warnings.warn(mismatch, UserWarning, stacklevel=2)
        if image_size is not None and image_size != "auto":
            try:
                self.model.with_image_size(image_size)
            except ValueError as err:
                raise InputError(str(err)) from None
        self.image_size = image_size
        self.two_pass = _two_pass_config(two_pass)
        self.layer_search = _layer_search_config(layer_search)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        image_size: ImageSize = None,
        refine: bool | VariationalRefiner | None = None,
        two_pass: bool | TwoPassConfig = True,
        precision: Precision = "32",
        compile: bool = False,
        layer_search: bool | LayerSearchConfig = True,
    ) -> DiffMatcher:
        """Load a Lightning ``.ckpt`` or an exported weights file (``None``: the bundled checkpoint).

        ``image_size``, ``refine``, ``two_pass``, ``precision``, ``compile``, ``layer_search``: the
        processing size, the sub-pixel refinement, two-pass matching, the networks' precision,
        ``torch.compile`` and the layer search (see :class:`DiffMatcher`).

        A file with a confidence calibration (``python -m diffmatch.calibrate``) gives results with
        ``confidence``; :attr:`calibrator` is ``None`` otherwise.

        Raises:
            InputError: missing or corrupt file, weights that do not fit the stored settings, or a
                damaged calibration.
        """
        path = BUNDLED_CHECKPOINT if path is None else Path(path)
        resolved = resolve_device(device)
        check_precision(precision, resolved)  # before the model loads: a bad option costs nothing
        model = load_checkpoint(path, device="cpu")
        stored = read_calibration(path)
        try:
            calibrator = None if stored is None else calibrator_from_dict(stored)
        except ValueError as err:
            raise InputError(f"{path}: damaged confidence calibration ({err})") from None
        return cls(model, resolved, calibrator, image_size, refine, two_pass, precision, compile, layer_search)

    @property
    def stride(self) -> int:
        """Input pixels per cell of the model's cost grid: the smallest image side it accepts."""
        config = self.model.config
        return -(-config.image_size // config.cost_size)

    def processing_size(self, source_size: tuple[int, int], target_size: tuple[int, int]) -> int:
        """The square size a pair of images of these ``(H, W)`` sizes is processed at."""
        own = self.model.config.image_size
        if self.image_size is None:
            return own
        if self.image_size != "auto":
            return int(self.image_size)
        step = self.model.image_size_step
        largest = max(*source_size, *target_size)
        return max(own, min(-(-largest // step) * step, AUTO_MAX_IMAGE_SIZE // step * step))

    def _model_for(self, src: torch.Tensor, tgt: torch.Tensor) -> DiffMatch:
        size = self.processing_size(tuple(src.shape[-2:]), tuple(tgt.shape[-2:]))
        return self.model.with_image_size(size)

    # ---------------------------------------------------------------------------------- matching
    def _pair(self, source: ImageInput | list[ImageInput], target: ImageInput | list[ImageInput]) -> tuple[torch.Tensor, torch.Tensor]:
        src = to_image_batch(source, "source").to(self.device)
        tgt = to_image_batch(target, "target").to(self.device)
        if src.shape[0] != tgt.shape[0]:
            raise InputError(f"source and target batch sizes differ: {src.shape[0]} vs {tgt.shape[0]}")
        for name, image in (("source", src), ("target", tgt)):
            h, w = image.shape[-2:]
            if min(h, w) < self.stride:  # one cost cell would span the whole image: a meaningless flow
                raise InputError(
                    f"{name} image is {w}x{h} px, smaller than the model's stride of {self.stride} px on a side"
                )
        return src, tgt

    def confidence_unavailable(self, refined: bool | None = None) -> str | None:
        """Why results would have no calibrated confidence (``None``: they will have one).

        ``refined``: whether the flow is refined (``None``: as :attr:`refiner` says).
        """
        if self.calibrator is None:
            return (
                "this checkpoint has no confidence calibration "
                "(add one with `python -m diffmatch.calibrate CKPT --out CKPT_CAL`)"
            )
        refined = self.refiner is not None if refined is None else refined
        if self.calibrator.refined != refined:
            fitted = "with" if self.calibrator.refined else "without"
            return (
                f"this checkpoint's confidence was calibrated {fitted} the sub-pixel refinement; match "
                f"with refine={self.calibrator.refined}, or recalibrate (`python -m diffmatch.calibrate"
                f"{'' if refined else ' --no-refine'} CKPT --out CKPT_CAL`)"
            )
        return None

    @torch.no_grad()
    def match(
        self,
        source: ImageInput | list[ImageInput],
        target: ImageInput | list[ImageInput],
        num_samples: int = 3,
        num_steps: int | None = None,
        generator: Generators = None,
        eta: float = 0.0,
        confidence_tau: float | None = None,
        refine: bool | None = None,
        two_pass: bool | TwoPassConfig | None = None,
        max_size: int | None = None,
        layer_search: bool | LayerSearchConfig | None = None,
    ) -> MatchResult:
        """Match ``target`` to ``source``.

        Args:
            source: path, PIL image, ``(H, W, C)`` array, ``(C, H, W)``/``(B, C, H, W)`` tensor, or a list.
            target: same kinds; its size sets the output size. Sizes of source and target may differ.
            num_samples: hypotheses ``N``; their mean is the flow and their variance the uncertainty.
            num_steps: DDIM steps, 1 to the model's ``T`` (``None``: the model's own default,
                ``config.sampling_steps`` or ``T``).
            generator: a ``torch.Generator`` (or one per pair) for reproducible sampling.
            eta: DDIM eta (0: deterministic given the initial noise).
            confidence_tau: the ``τ`` in px of ``confidence`` (one the calibration was fitted for;
                ``None``: its default, normally 3 px). Where a second pass ran, each pixel keeps the
                pass more confident at this ``τ``, and the layer search offers the planes of the matches
                confident at this ``τ``, so the flow can depend on it too.
            refine: refine every hypothesis at full resolution (:attr:`refiner`, or the default
                :class:`~diffmatch.refinement.VariationalRefiner`); ``None``: as the matcher was built.
            two_pass: a second pass on the source warped by pass 1's homography where the view
                changes a lot (:mod:`diffmatch.two_pass`); ``None``: as the matcher was built.
            max_size: match copies shrunk (area interpolation) so that their longer side is at most
                this many pixels, then bring the result back to the full-size target grid
                (:meth:`MatchResult.resized`): faster and lighter on large images, at the cost of
                detail; ``None``: at full size.
            layer_search: offer each pixel the planes of the model's global cost
                (:mod:`diffmatch.refinement.layer_search`); ``None``: as the matcher was built.

        Returns:
            :class:`MatchResult`: ``flow`` ``(B, 2, Ht, Wt)`` px, ``uncertainty`` ``(B, 1, Ht, Wt)`` px²,
            ``samples`` ``(B, N, 2, Ht, Wt)``; with a calibrated model also ``confidence``
            ``(B, 1, Ht, Wt)``, the probability that each match is within ``confidence_tau`` px
            (only when ``refine`` matches the calibration's; see :attr:`Calibrator.refined`).

        Raises:
            InputError: unreadable inputs, an image with a side below :attr:`stride`, or impossible
                options (a ``ValueError``).
            MissingCalibrationError: ``confidence_tau`` given to a model without calibration, or
                with a calibration fitted for the other ``refine`` setting (a ``ValueError``).
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise InputError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        limit = self.model.config.num_train_timesteps
        num_steps = self.model.default_steps() if num_steps is None else num_steps
        if not isinstance(num_steps, int) or not 1 <= num_steps <= limit:
            raise InputError(f"num_steps must be an integer in [1, {limit}], got {num_steps!r}")
        refiner = self.refiner
        if refine is not None:
            refiner = (refiner or VariationalRefiner()) if refine else None
        reason = self.confidence_unavailable(refiner is not None)
        if reason is not None and confidence_tau is not None:
            raise MissingCalibrationError(reason)
        tau = None
        if reason is None:
            assert self.calibrator is not None
            tau = self.calibrator.taus[self.calibrator.tau_index(confidence_tau)]
        passes = self.two_pass if two_pass is None else _two_pass_config(two_pass)
        layers = self.layer_search if layer_search is None else _layer_search_config(layer_search)
        if max_size is not None and (not isinstance(max_size, int) or max_size < self.stride):
            raise InputError(f"max_size must be an integer >= the model's stride of {self.stride} px, got {max_size!r}")
        full_src, full_tgt = self._pair(source, target)
        src, tgt = shrink_images(full_src, max_size), shrink_images(full_tgt, max_size)
        if min(*src.shape[-2:], *tgt.shape[-2:]) < self.stride:
            raise InputError(f"max_size {max_size} shrinks an image below the model's stride of {self.stride} px")
        if passes is None:
            result = self._match_tensors(src, tgt, num_samples, num_steps, generator, eta, tau, refiner)
        else:
            generators = generator if isinstance(generator, list) else [generator] * src.shape[0]

            def one_pass(s: torch.Tensor, t: torch.Tensor, g: torch.Generator | None) -> MatchResult:
                return self._match_tensors(s, t, num_samples, num_steps, g, eta, tau, refiner)

            result = concatenate_results(
                [
                    match_two_pass(
                        lambda s, t, g=g: one_pass(s, t, g),
                        src[i : i + 1],
                        tgt[i : i + 1],
                        passes,
                        # The rotation tries draw from a copy of the generator, so that the passes
                        # after them draw what they would have drawn without the search.
                        search=lambda s, t, g=g: one_pass(s, t, _fork(g)),
                    )[0]
                    for i, g in enumerate(generators)
                ]
            )
        if layers is not None:
            result = concatenate_results(
                [self._search(result.select(i), src[i : i + 1], tgt[i : i + 1], refiner, layers, tau) for i in range(src.shape[0])]
            )
        scale = (full_src.shape[-2] / src.shape[-2], full_src.shape[-1] / src.shape[-1])
        result = result.resized(tuple(full_tgt.shape[-2:]), scale)
        if reason is not None:
            result.no_confidence_reason = reason  # what require_confidence() says
        return result

    def _match_tensors(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        num_samples: int,
        num_steps: int,
        generator: Generators,
        eta: float,
        tau: float | None,
        refiner: VariationalRefiner | None,
    ) -> MatchResult:
        """One pass over checked image batches; ``tau``: the confidence's τ (``None``: no confidence)."""
        model = self._model_for(src, tgt)
        if tau is None:
            result = model(src, tgt, num_samples=num_samples, num_steps=num_steps, eta=eta, generator=generator)
            return result if refiner is None else refiner.refine_result(src, tgt, result)
        assert self.calibrator is not None
        reverse = self.calibrator.needs_reverse
        result, cues = match_with_cues(
            model, src, tgt, num_samples, num_steps, eta, generator, reverse, refiner, self.calibrator.reverse_samples,
            self.calibrator.cues,
        )
        result.confidence = self.calibrator.predict(cues, tau)
        result.confidence_tau = tau
        return result

    def _search(
        self,
        result: MatchResult,
        src: torch.Tensor,
        tgt: torch.Tensor,
        refiner: VariationalRefiner | None,
        config: LayerSearchConfig,
        tau: float | None,
    ) -> MatchResult:
        """The layer search of one pair; taken pixels get the confidence of the calibration's part for
        them (:attr:`Calibrator.layer_search <diffmatch.confidence.Calibrator.layer_search>`) when it has one."""
        model = self._model_for(src, tgt)
        part = None if self.calibrator is None else self.calibrator.layer_search
        # Later rounds offer the planes of what the search made confident alone (LayerSearchConfig.rounds).
        for round_ in range(config.rounds if config.confident_layers else 1):
            step = config if round_ == 0 else replace(config, max_layers=0)
            searched, taken, costs = search_layers(result, src, tgt, model.global_flows, refiner, step)
            if tau is not None and part is not None and costs:
                own = part.predict(search_cues(searched, costs), tau)
                searched.confidence = torch.where(taken, own, searched.confidence)
            if not bool(taken.any()):
                break
            result = searched
        return result

    @torch.no_grad()
    def match_raw(
        self,
        source: ImageInput | list[ImageInput],
        target: ImageInput | list[ImageInput],
        mode: Literal["hard", "soft"] = "hard",
        refine: bool = False,
    ) -> MatchResult:
        """The paper's "raw correlation" baseline: argmax (or soft-argmax) of the model's own cost, no learning.

        The flow is on the target grid, ``target(x) ≈ source(x + flow(x))``, px, channel 0 = x,
        ``(B, 2, Ht, Wt)``. ``refine``: refine it at full resolution as :meth:`match` refines the
        model's hypotheses (:attr:`refiner`, or the default
        :class:`~diffmatch.refinement.VariationalRefiner` when the matcher has none), so that the
        model can be compared with its own ``F_init`` brought to the same precision.
        """
        if mode not in ("hard", "soft"):
            raise InputError(f"mode must be 'hard' or 'soft', got {mode!r}")
        src, tgt = self._pair(source, target)
        result = MatchResult.from_samples(self._model_for(src, tgt).global_flow(src, tgt, mode).unsqueeze(1))
        return (self.refiner or VariationalRefiner()).refine_result(src, tgt, result) if refine else result

    # ---------------------------------------------------------------------------------- helpers
    @staticmethod
    def warp(source: ImageInput, flow: torch.Tensor) -> torch.Tensor:
        """Warp the source onto the target grid with ``flow`` ``(B, 2, Ht, Wt)``; returns ``(B, 3, Ht, Wt)``."""
        src = to_image_batch(source, "source").to(flow.device)
        return warp(src, flow)[0]

    @staticmethod
    def sample_matches(
        result: MatchResult,
        num: int = 5000,
        generator: torch.Generator | None = None,
        max_uncertainty: float | None = None,
        index: int = 0,
        source_size: tuple[int, int] | None = None,
        mode: Literal["sample", "top_k", "spread"] = "sample",
        min_confidence: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse matches drawn by confidence, or the ``top_k`` most confident in order.

        See :func:`diffmatch.geometry.estimation.sample_matches`: the calibrated ``result.confidence`` when the
        model has one, else ``1 / (1 + variance)``.

        Returns:
            ``(target_xy, source_xy, confidence)``: ``(K, 2)`` pixel coordinates in each image
            (``source_xy = target_xy + flow(target_xy)``) and ``(K,)`` confidences.
        """
        return matches.sample_matches(
            result, num, generator, max_uncertainty, index, source_size, mode, min_confidence
        )

    @staticmethod
    def estimate_homography(result: MatchResult, num: int = 2000, **kwargs: Any) -> GeometryEstimate:
        """Homography ``H`` (target → source pixels) by MAGSAC++ (or ``method="ransac"``) on ``num`` confident matches.

        See :func:`diffmatch.geometry.estimation.estimate_homography` for the options (``mode``, ``method``,
        ``threshold``, ``source_size``, ``min_confidence``, ...).
        """
        return matches.estimate_homography(result, num, **kwargs)

    @staticmethod
    def estimate_fundamental(result: MatchResult, num: int = 2000, **kwargs: Any) -> GeometryEstimate:
        """Fundamental matrix ``F`` (``source^T F target = 0``) by MAGSAC++ (or RANSAC) on confident matches.

        See :func:`diffmatch.geometry.estimation.estimate_fundamental` for the options.
        """
        return matches.estimate_fundamental(result, num, **kwargs)

    @staticmethod
    def estimate_relative_pose(
        result: MatchResult, K_source: Any, K_target: Any, num: int = 5000, **kwargs: Any
    ) -> matches.RelativePose:
        """Relative pose ``(R, t)`` from the target camera to the source camera (``X_source = R X_target + t``,
        ``t`` a unit direction) from ``num`` matches drawn by confidence, through OpenCV's essential matrix.

        See :func:`diffmatch.geometry.estimation.estimate_relative_pose` for the options (``mode``, ``method``,
        ``threshold`` in px, ``source_size``, ...).
        """
        return matches.estimate_relative_pose(result, K_source, K_target, num, **kwargs)
