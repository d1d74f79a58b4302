"""Checkpoints and exported weights.

A Lightning ``.ckpt`` is for resuming training. An *exported weights* file is for inference: a small
``torch.save`` dict ``{"format": "diffmatch-weights", "version": 1, "config": {...}, "state_dict":
{...}}`` holding the model settings and the (EMA) weights. Both load through :func:`load_checkpoint`,
which checks that weights and settings fit each other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from diffmatch.io import InputError, atomic_open
from diffmatch.model import DiffMatch, DiffMatchConfig, config_from_dict

__all__ = ["FORMAT", "export_weights", "load_checkpoint", "load_model_weights", "read_checkpoint", "save_weights"]

FORMAT = "diffmatch-weights"
VERSION = 1


def read_checkpoint(path: str | os.PathLike) -> tuple[DiffMatchConfig, dict[str, torch.Tensor]]:
    """Read the model settings and model state dict from a ``.ckpt`` or exported weights file.

    Raises:
        InputError: missing, unreadable or not a diffmatch file; settings this version does not know.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a diffmatch checkpoint")
    try:
        if data.get("format") == FORMAT:
            if data.get("version") != VERSION:
                raise InputError(f"{path}: weights format version {data.get('version')}, this code reads {VERSION}")
            return config_from_dict(data["config"]), data["state_dict"]
        if "state_dict" in data and "hyper_parameters" in data and "model" in data["hyper_parameters"]:
            config = config_from_dict(data["hyper_parameters"]["model"])
            state = data["state_dict"]
            prefix = "ema.module." if any(k.startswith("ema.module.") for k in state) else None
            model_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
            if prefix:  # prefer the EMA denoiser for inference
                for key, value in state.items():
                    if key.startswith(prefix):
                        model_state["denoiser." + key[len(prefix) :]] = value
            return config, model_state
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: settings do not fit this version of diffmatch ({err})") from None
    raise InputError(f"{path}: not a diffmatch checkpoint (no model settings and weights)")


def load_model_weights(model: DiffMatch, path: str | os.PathLike, strict_config: bool = False) -> None:
    """Load weights from a checkpoint into ``model``, checking that every tensor fits.

    Args:
        model: the model to fill.
        path: Lightning ``.ckpt`` or exported weights.
        strict_config: also require the stored settings to equal ``model.config``.

    Raises:
        InputError: the weights do not fit the model (names the mismatching tensors).
    """
    config, state = read_checkpoint(path)
    if strict_config and config.to_dict() != model.config.to_dict():
        raise InputError(f"{path}: stored settings differ from the model's")
    own = model.state_dict()
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


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> DiffMatch:
    """Build a :class:`DiffMatch` from a ``.ckpt`` or exported weights file, in eval mode on ``device``."""
    config, _ = read_checkpoint(path)
    model = DiffMatch(config_from_dict({**config.to_dict(), "feature_kwargs": _offline_kwargs(config)}))
    load_model_weights(model, path)
    model.config = config
    return model.eval().to(device)


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, half: bool = False) -> Path:
    """Turn a Lightning ``.ckpt`` (or exported file) into a small inference file, written atomically.

    Args:
        checkpoint: source checkpoint.
        out: destination ``.pt`` file.
        half: store floating-point tensors as float16 (halves the size; loaded back as float32).
    """
    config, _ = read_checkpoint(checkpoint)
    model = DiffMatch(config_from_dict({**config.to_dict(), "feature_kwargs": _offline_kwargs(config)}))
    load_model_weights(model, checkpoint)  # validates before writing anything
    model.config = config
    return save_weights(model, out, half=half)


def save_weights(model: DiffMatch, out: str | os.PathLike, half: bool = False) -> Path:
    """Write a model's settings and weights as an exported inference file, atomically.

    Args:
        model: the model to save.
        out: destination ``.pt`` file.
        half: store floating-point tensors as float16 (loaded back as float32).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(), "state_dict": state}
    out = Path(out)
    with atomic_open(out, "wb") as handle:
        torch.save(payload, handle)
    return out


def _offline_kwargs(config: DiffMatchConfig) -> dict[str, Any]:
    # The VGG weights are restored from the file, so never fetch pretrained ones to build the model.
    kwargs = dict(config.feature_kwargs)
    if config.features == "vgg16":
        kwargs["weights"] = "random"
    return kwargs
