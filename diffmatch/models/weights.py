"""Checkpoints and exported weights.

A Lightning ``.ckpt`` is for resuming training. An *exported weights* file is for inference: a small
``torch.save`` dict ``{"format": "diffmatch-weights", "version": 1, "config": {...}, "state_dict":
{...}}`` holding the model settings and the (EMA) weights. Both load through :func:`load_checkpoint`,
which checks that weights and settings fit each other.

Cascade models (stage 1 + flow upsampler, :class:`~diffmatch.models.diffmatch.DiffMatch` with an upsampler) store the
stage-2 settings too: exported files get an ``"upsampler": {...}`` entry and Lightning checkpoints an
``upsampler`` hyperparameter; files without one are stage 1 only.

A cascade can also be stored as a *stage-2 file*: only the ``upsampler.*`` tensors, plus a
``"stage1": {"file": ..., "digest": ...}`` entry naming the stage-1 file it was trained on (a path
relative to the stage-2 file's folder) and a digest of that file's weights
(:func:`weights_digest`). It loads like any cascade file, :func:`read_cascade_checkpoint` joining the
two, and it is refused in one line when the stage-1 file is missing or holds other weights. The
bundled default, a cascade, ships this way beside its stage 1 (two files of 15 and 14 MB instead of one of 30:
:func:`save_weights` with ``stage1=``, ``diffmatch export --stage1``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from diffmatch.errors import InputError
from diffmatch.io import atomic_open, read_torch_file
from diffmatch.models.config import (
    DiffMatchConfig,
    UpsamplerConfig,
    config_from_stored,
    upsampler_config_from_dict,
)
from diffmatch.models.diffmatch import DiffMatch

__all__ = [
    "FORMAT",
    "export_weights",
    "interpolate_weights",
    "load_checkpoint",
    "load_model_weights",
    "read_calibration",
    "read_checkpoint",
    "read_cascade_checkpoint",
    "rewrite_weights_file",
    "save_weights",
    "weights_digest",
]

FORMAT = "diffmatch-weights"
VERSION = 1
# The entry of a stage-2 file that names its stage-1 file (module docstring).
STAGE1_KEY = "stage1"
# The stage-2 settings that only inference reads, which an export may change (export_weights).
STAGE2_INFERENCE_SETTINGS: tuple[str, ...] = ("refine", "reverse_pass")
_STAGE2_PREFIX = "upsampler."


def read_checkpoint(path: str | os.PathLike) -> tuple[DiffMatchConfig, dict[str, torch.Tensor]]:
    """Read the (stage-1) model settings and model state dict from a ``.ckpt`` or exported weights file.

    For a cascade file the state dict includes the ``upsampler.*`` weights; use
    :func:`read_cascade_checkpoint` to get the stage-2 settings too.

    Raises:
        InputError: missing, unreadable or not a diffmatch file; settings this version does not know.
    """
    config, _, state = read_cascade_checkpoint(path)
    return config, state


def read_cascade_checkpoint(
    path: str | os.PathLike, ema: bool = True
) -> tuple[DiffMatchConfig, UpsamplerConfig | None, dict[str, torch.Tensor]]:
    """Like :func:`read_checkpoint`, plus the upsampler settings (``None`` for a stage-1 file).

    A Lightning checkpoint of a run with ``ema_decay`` holds two denoisers: the trained one and its
    moving average. ``ema=True`` reads the average (what validation scored), ``ema=False`` the
    trained weights. Exported files hold one set, which either value reads. A stage-2 file (module
    docstring) comes back joined with its stage-1 file: the whole cascade's state dict.

    Raises:
        InputError: missing, unreadable or not a diffmatch file; settings this version does not know;
            a stage-2 file whose stage-1 file is missing, is not a stage-1 file, or holds other
            settings or weights than the ones it names.
    """
    return _read(Path(path), ema, follow_stage1=True)


def _read(
    path: Path, ema: bool, follow_stage1: bool
) -> tuple[DiffMatchConfig, UpsamplerConfig | None, dict[str, torch.Tensor]]:
    data = read_torch_file(path, "diffmatch checkpoint")
    try:
        if data.get("format") == FORMAT:
            if data.get("version") != VERSION:
                raise InputError(f"{path}: weights format version {data.get('version')}, this code reads {VERSION}")
            config = config_from_stored(data["config"])
            upsampler = _upsampler_or_none(data.get("upsampler"))
            state = data["state_dict"]
            if STAGE1_KEY in data:
                if not follow_stage1:
                    raise InputError(f"{path}: a stage-2 file, where a stage-1 file was expected")
                state = _join_stage1(path, data[STAGE1_KEY], config, upsampler, state)
            return config, upsampler, state
        if "state_dict" in data and "hyper_parameters" in data and "model" in data["hyper_parameters"]:
            config = config_from_stored(data["hyper_parameters"]["model"])
            upsampler = _upsampler_or_none(data["hyper_parameters"].get("upsampler"))
            state = data["state_dict"]
            prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else None
            model_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
            if prefix and ema:  # prefer the EMA denoiser (stage 2's in a cascade run) for inference
                trained = "denoiser." if upsampler is None else "upsampler.denoiser."
                for key, value in state.items():
                    if key.startswith(prefix):
                        model_state[trained + key[len(prefix) :]] = value
            return config, upsampler, model_state
    except InputError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise InputError(f"{path}: settings do not fit this version of diffmatch ({err})") from None
    raise InputError(f"{path}: not a diffmatch checkpoint (no model settings and weights)")


def _join_stage1(
    path: Path,
    reference: dict[str, str],
    config: DiffMatchConfig,
    upsampler: UpsamplerConfig | None,
    state: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """A stage-2 file's tensors joined with those of the stage-1 file it names (checked against it)."""
    if upsampler is None or any(not k.startswith(_STAGE2_PREFIX) for k in state):
        raise InputError(f"{path}: names a stage-1 file but is not a stage-2 file (tensors outside upsampler.*)")
    base = path.parent / reference["file"]
    if not base.is_file():
        raise InputError(
            f"{path}: holds stage 2 only; its stage-1 file {reference['file']} is missing "
            f"(put it at {base}, or load a whole cascade exported where both are)"
        )
    base_config, base_upsampler, base_state = _read(base, ema=True, follow_stage1=False)
    if base_upsampler is not None:
        raise InputError(f"{path}: its stage-1 file {base} is a cascade, not a stage-1 file")
    if base_config.to_dict() != config.to_dict():
        raise InputError(f"{path}: its stage-1 file {base} has other model settings than stage 2 was trained with")
    if weights_digest(base_state) != reference["digest"]:
        raise InputError(
            f"{path}: its stage-1 file {base} holds other weights than the ones stage 2 was trained on "
            "(a stage-2 file only works with its own stage 1)"
        )
    return {**base_state, **state}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A SHA-256 of a state dict's names, shapes and values, floating-point ones rounded to float16.

    The rounding makes a float16 file and its float32 copy agree (float16 values survive float32
    exactly), so a stage-2 file accepts its stage 1 in either precision, and a refitted confidence
    calibration, which changes no weight, leaves the digest alone.
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu()
        if value.is_floating_point():
            value = value.half()
        digest.update(f"{key}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def rewrite_weights_file(checkpoint: str | os.PathLike, out: str | os.PathLike, **entries: Any) -> Path:
    """Copy a checkpoint file to ``out`` with top-level ``entries`` set (e.g. ``calibration``), atomically.

    A stage-2 file's reference to its stage-1 file is rewritten relative to ``out``'s folder, so the
    copy still finds it.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    data = read_torch_file(checkpoint, "diffmatch checkpoint")
    data.update(entries)
    if isinstance(data.get(STAGE1_KEY), dict) and "file" in data[STAGE1_KEY]:
        base = (checkpoint.parent / data[STAGE1_KEY]["file"]).resolve()
        data[STAGE1_KEY] = {**data[STAGE1_KEY], "file": _relative_to_folder(base, out)}
    with atomic_open(out, "wb") as handle:
        torch.save(data, handle)
    return out


def _relative_to_folder(target: Path, out: Path) -> str:
    return os.path.relpath(target.resolve(), out.resolve().parent)


def read_calibration(path: str | os.PathLike) -> dict[str, Any] | None:
    """The calibration dict stored in a checkpoint (``python -m diffmatch.calibrate``), or ``None``.

    It is kept as plain numbers under the top-level key ``"calibration"`` of an exported weights file
    or a Lightning ``.ckpt``; :func:`diffmatch.confidence.calibrator_from_dict` turns it into a
    :class:`~diffmatch.confidence.Calibrator`.

    Raises:
        InputError: the file is missing or not a diffmatch checkpoint.
    """
    read_cascade_checkpoint(path)  # the same checks and messages as loading the model
    return read_torch_file(Path(path), "diffmatch checkpoint").get("calibration")


def _upsampler_or_none(data: dict[str, Any] | None) -> UpsamplerConfig | None:
    return None if data is None else upsampler_config_from_dict(data)


def load_model_weights(
    model: DiffMatch, path: str | os.PathLike, strict_config: bool = False, ema: bool = True
) -> None:
    """Load weights from a checkpoint into ``model``, checking that every tensor fits.

    A stage-1 file loaded into a :class:`~diffmatch.models.diffmatch.DiffMatch` with an upsampler fills stage 1 and
    starts the upsampler from the stage-1 denoiser (:meth:`~diffmatch.models.diffmatch.DiffMatch.init_from_stage1`); the
    ``upsampler.*`` tensors are then the only ones allowed to be absent from the file.

    Args:
        model: the model to fill.
        path: Lightning ``.ckpt`` or exported weights.
        strict_config: also require the stored settings (both stages) to equal the model's.
        ema: from a Lightning checkpoint with an EMA, load the average (else the trained weights).

    Raises:
        InputError: the weights do not fit the model (names the mismatching tensors).
    """
    _fill(model, path, *read_cascade_checkpoint(path, ema=ema), strict_config=strict_config)


def _fill(
    model: DiffMatch,
    path: str | os.PathLike,
    config: DiffMatchConfig,
    upsampler: UpsamplerConfig | None,
    state: dict[str, torch.Tensor],
    strict_config: bool = False,
) -> None:
    """:func:`load_model_weights` from what :func:`read_cascade_checkpoint` read from ``path``."""
    cascade = model.upsampler is not None
    if strict_config and (
        config.to_dict() != model.config.to_dict()
        or (upsampler is None) == cascade
        or (cascade and upsampler.to_dict() != model.upsampler.config.to_dict())
    ):
        raise InputError(f"{path}: stored settings differ from the model's")
    own = model.state_dict()
    from_stage1 = cascade and upsampler is None
    if from_stage1:  # expected absent: exactly the stage-2 tensors, filled from stage 1 below
        state = {**{k: v for k, v in own.items() if k.startswith("upsampler.")}, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise InputError(f"{path}: weights do not fit the model ({detail})")
    model.load_state_dict(state)
    if from_stage1:
        try:
            model.init_from_stage1()
        except ValueError as err:
            raise InputError(f"{path}: {err}") from None


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> DiffMatch:
    """Build the model of a ``.ckpt`` or exported weights file, in eval mode on ``device``.

    Returns:
        A :class:`DiffMatch`, with an upsampler for a file with upsampler settings.
    """
    stored = read_cascade_checkpoint(path)  # read once: a stage-2 file also reads and digests its stage 1
    model = _build(*stored[:2])
    _fill(model, path, *stored)
    return model.eval().to(device)


def export_weights(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    half: bool | None = None,
    ema: bool = True,
    stage1: str | os.PathLike | None = None,
    stage2: dict[str, Any] | None = None,
) -> Path:
    """Turn a Lightning ``.ckpt`` (or exported file) into a small inference file, written atomically.

    Args:
        checkpoint: source checkpoint.
        out: destination ``.pt`` file.
        half: store floating-point tensors as float16 (halves the size; loaded back as float32);
            ``False``: as float32; ``None``: as the checkpoint stores them (float16 when all of its
            floating-point weights are, as in a file exported with ``half=True``).
        ema: export the denoiser's moving average when the checkpoint has one, else the trained
            weights (:func:`read_cascade_checkpoint`).
        stage1: for a cascade, write a stage-2 file that refers to this stage-1 file (see
            :func:`save_weights`); ``None``: a whole file (also from a stage-2 file).
        stage2: for a cascade, stage-2 settings to change that only inference reads (``refine``,
            ``reverse_pass``; :class:`~diffmatch.models.config.UpsamplerConfig`). A calibration fitted
            under other settings describes other flows and cues, so it is left out when they change.

    Raises:
        InputError: ``stage2`` for a model without stage 2, or a setting it cannot change or value.
    """
    config, upsampler, state = read_cascade_checkpoint(checkpoint, ema=ema)
    calibration = read_calibration(checkpoint)
    if stage2:
        changed = _with_inference_settings(checkpoint, upsampler, stage2)
        if changed != upsampler:
            calibration, upsampler = None, changed
    if half is None:
        half = _stored_half(state)
    model = _build(config, upsampler)
    _fill(model, checkpoint, config, upsampler, state)  # validates before writing anything
    return save_weights(model, out, half=half, calibration=calibration, stage1=stage1)


def _with_inference_settings(
    checkpoint: str | os.PathLike, upsampler: UpsamplerConfig | None, settings: dict[str, Any]
) -> UpsamplerConfig:
    if upsampler is None:
        raise InputError(f"{checkpoint}: stage-2 settings apply to cascades; this model has no stage 2")
    unknown = sorted(set(settings) - set(STAGE2_INFERENCE_SETTINGS))
    if unknown:
        raise InputError(f"stage-2 settings {unknown} cannot be changed after training; only {list(STAGE2_INFERENCE_SETTINGS)}")
    try:
        return replace(upsampler, **settings)
    except ValueError as err:
        raise InputError(str(err)) from None


def interpolate_weights(
    checkpoint: str | os.PathLike,
    other: str | os.PathLike,
    alpha: float,
    out: str | os.PathLike,
    half: bool | None = None,
    ema: bool = True,
) -> Path:
    """Write the weights ``(1 - alpha) * checkpoint + alpha * other``, atomically (weight-space ensembling).

    Two fine-tunings of one model (e.g. the default and the same fine-tuned on new data, "WiSE-FT")
    can be mixed along the line between them: a point on it often keeps most of what the
    fine-tuning gained at a fraction of what it cost elsewhere. Only floating-point tensors are
    mixed; integer ones (counters) come from ``checkpoint``. The result carries no confidence
    calibration: a calibration fits one set of weights (refit it, ``python -m diffmatch.calibrate``).

    Args:
        checkpoint: the first model (a Lightning ``.ckpt`` or exported file); ``alpha = 0`` gives it.
        other: the second, with the same settings (architecture, features, sampling).
        alpha: the mixing weight of ``other``, in ``[0, 1]``.
        out: destination ``.pt`` file.
        half: as in :func:`export_weights` (``None``: float16 when both files store float16).
        ema: read the moving averages of Lightning checkpoints that have one.

    Raises:
        InputError: ``alpha`` outside ``[0, 1]``; files that are not diffmatch checkpoints, or whose
            settings or tensors differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    config, upsampler, state = read_cascade_checkpoint(checkpoint, ema=ema)
    config_b, upsampler_b, state_b = read_cascade_checkpoint(other, ema=ema)
    if config != config_b or upsampler != upsampler_b:
        raise InputError(f"{other}: its model settings differ from {checkpoint}'s, so their weights cannot be mixed")
    if state.keys() != state_b.keys():
        raise InputError(f"{other}: its tensors differ from {checkpoint}'s ({len(state_b.keys() ^ state.keys())} names in one only)")
    mixed = {}
    for key, value in state.items():
        if value.shape != state_b[key].shape:
            raise InputError(f"{other}: tensor {key} has shape {tuple(state_b[key].shape)}, {checkpoint} has {tuple(value.shape)}")
        if value.is_floating_point():
            mixed[key] = torch.lerp(value.float(), state_b[key].float(), alpha)
        else:
            mixed[key] = value
    if half is None:
        half = _stored_half(state) and _stored_half(state_b)
    model = _build(config, upsampler)
    try:
        model.load_state_dict(mixed)
    except RuntimeError as err:  # tensors that do not fit the settings both files declare
        raise InputError(f"{checkpoint}: its weights do not fit its settings ({' '.join(str(err).split())[:200]})") from None
    return save_weights(model, out, half=half)


def _stored_half(state: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of ``state`` is stored as float16 (``False`` without any)."""
    floats = [v for v in state.values() if v.is_floating_point()]
    return bool(floats) and all(v.dtype == torch.float16 for v in floats)


def save_weights(
    model: DiffMatch,
    out: str | os.PathLike,
    half: bool = False,
    calibration: dict[str, Any] | None = None,
    stage1: str | os.PathLike | None = None,
) -> Path:
    """Write a model's settings and weights as an exported inference file, atomically.

    Args:
        model: the model to save (a :class:`~diffmatch.models.diffmatch.DiffMatch` with an upsampler adds its ``upsampler`` settings).
        out: destination ``.pt`` file.
        half: store floating-point tensors as float16 (loaded back as float32).
        calibration: a confidence calibration (:meth:`~diffmatch.confidence.Calibrator.to_dict`) to keep.
        stage1: a cascade only: write a *stage-2 file* (module docstring), its ``upsampler.*``
            tensors and a reference to this exported stage-1 file, which must hold the model's stage
            1 (same settings and weights, up to float16 rounding). Keep the two files where the
            reference finds them (it is relative to ``out``'s folder).

    Raises:
        InputError: ``stage1`` for a model without an upsampler, or a ``stage1`` file that is not
            the model's stage 1.
    """
    out = Path(out)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict()}
    if stage1 is not None:
        payload[STAGE1_KEY] = _stage1_reference(model, state, Path(stage1), out)
        state = {k: v for k, v in state.items() if k.startswith(_STAGE2_PREFIX)}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload["state_dict"] = state
    if model.upsampler is not None:
        payload["upsampler"] = model.upsampler.config.to_dict()
    if calibration is not None:
        payload["calibration"] = calibration
    with atomic_open(out, "wb") as handle:
        torch.save(payload, handle)
    return out


def _stage1_reference(model: DiffMatch, state: dict[str, torch.Tensor], stage1: Path, out: Path) -> dict[str, str]:
    """The ``stage1`` entry of a stage-2 file: ``stage1``'s place from ``out``'s folder and its digest."""
    if model.upsampler is None:
        raise InputError(f"{stage1}: only a cascade's stage 2 can be saved apart from its stage 1; this model has no upsampler")
    config, upsampler, base_state = _read(stage1, ema=True, follow_stage1=False)
    if upsampler is not None:
        raise InputError(f"{stage1}: a cascade, not a stage-1 file")
    digest = weights_digest(base_state)
    own = {k: v for k, v in state.items() if not k.startswith(_STAGE2_PREFIX)}
    if config.to_dict() != model.config.to_dict() or weights_digest(own) != digest:
        raise InputError(f"{stage1}: not this model's stage 1 (other settings or weights); a stage-2 file must name its own")
    return {"file": _relative_to_folder(stage1, out), "digest": digest}


def _build(config: DiffMatchConfig, upsampler: UpsamplerConfig | None) -> DiffMatch:
    # The file holds the backbone's weights: its pretrained ones need not be found first.
    return DiffMatch(config, upsampler, pretrained_features=False)
