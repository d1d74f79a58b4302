"""Checkpoints and exported weights.

A Lightning ``.ckpt`` is for resuming training. An *exported weights* file is for inference: a small
``torch.save`` dict ``{"format": "diffmatch-weights", "version": 1, "config": {...}, "state_dict":
{...}}`` holding the model settings and the (EMA) weights. Both load through :func:`load_checkpoint`,
which checks that weights and settings fit each other.

Cascade models (stage 1 + flow upsampler, :class:`~diffmatch.models.diffmatch.DiffMatch` with an upsampler) store the
stage-2 settings too: exported files get an ``"upsampler": {...}`` entry and Lightning checkpoints an
``upsampler`` hyperparameter; files without one are stage 1 only.
"""

from __future__ import annotations

import os
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
    "save_weights",
]

FORMAT = "diffmatch-weights"
VERSION = 1


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
    trained weights. Exported files hold one set, which either value reads.

    Raises:
        InputError: missing, unreadable or not a diffmatch file; settings this version does not know.
    """
    path = Path(path)
    data = read_torch_file(path, "diffmatch checkpoint")
    try:
        if data.get("format") == FORMAT:
            if data.get("version") != VERSION:
                raise InputError(f"{path}: weights format version {data.get('version')}, this code reads {VERSION}")
            return config_from_stored(data["config"]), _upsampler_or_none(data.get("upsampler")), data["state_dict"]
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
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: settings do not fit this version of diffmatch ({err})") from None
    raise InputError(f"{path}: not a diffmatch checkpoint (no model settings and weights)")


def read_calibration(path: str | os.PathLike) -> dict[str, Any] | None:
    """The calibration dict stored in a checkpoint (``python -m diffmatch.calibrate``), or ``None``.

    It is kept as plain numbers under the top-level key ``"calibration"`` of an exported weights file
    or a Lightning ``.ckpt``; :func:`diffmatch.confidence.calibrator_from_dict` turns it into a
    :class:`~diffmatch.confidence.Calibrator`.

    Raises:
        InputError: the file is missing or not a diffmatch checkpoint.
    """
    read_cascade_checkpoint(path)  # the same checks and messages as loading the model
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    return data.get("calibration")


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
    config, upsampler, state = read_cascade_checkpoint(path, ema=ema)
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
    config, upsampler, _ = read_cascade_checkpoint(path)
    model = _build(config, upsampler)
    load_model_weights(model, path)
    return model.eval().to(device)


def export_weights(
    checkpoint: str | os.PathLike, out: str | os.PathLike, half: bool | None = None, ema: bool = True
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
    """
    config, upsampler, state = read_cascade_checkpoint(checkpoint, ema=ema)
    if half is None:
        half = _stored_half(state)
    model = _build(config, upsampler)
    load_model_weights(model, checkpoint, ema=ema)  # validates before writing anything
    return save_weights(model, out, half=half, calibration=read_calibration(checkpoint))


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
    model: DiffMatch, out: str | os.PathLike, half: bool = False, calibration: dict[str, Any] | None = None
) -> Path:
    """Write a model's settings and weights as an exported inference file, atomically.

    Args:
        model: the model to save (a :class:`~diffmatch.models.diffmatch.DiffMatch` with an upsampler adds its ``upsampler`` settings).
        out: destination ``.pt`` file.
        half: store floating-point tensors as float16 (loaded back as float32).
        calibration: a confidence calibration (:meth:`~diffmatch.confidence.Calibrator.to_dict`) to keep.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(), "state_dict": state}
    if model.upsampler is not None:
        payload["upsampler"] = model.upsampler.config.to_dict()
    if calibration is not None:
        payload["calibration"] = calibration
    out = Path(out)
    with atomic_open(out, "wb") as handle:
        torch.save(payload, handle)
    return out


def _build(config: DiffMatchConfig, upsampler: UpsamplerConfig | None) -> DiffMatch:
    # The file holds the backbone's weights: its pretrained ones need not be found first.
    return DiffMatch(config, upsampler, pretrained_features=False)
