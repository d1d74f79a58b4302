"""Helpers shared by the pretrained extractors: loading with one clear error, and image sizing.

Every zero-shot extractor takes ``pretrained_model_name_or_path``: either a local directory (used as
is, never touching the network) or a Hub model id. A model id is first looked up in the local cache
only; the network is tried only when the caller allows it, the process is not offline
(``HF_HUB_OFFLINE``) and the Hub answers a connection within a few seconds (otherwise the Hub
client would retry for about half a minute before failing). Any failure becomes a single
:class:`~diffmatch.errors.InputError` that names the model id and the installed ``huggingface_hub``'s
download command (:func:`download_command`).
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import torch
import torch.nn.functional as F

from diffmatch.errors import InputError

__all__ = [
    "as_size",
    "crop_to_image",
    "download_command",
    "hub_offline",
    "hub_reachable",
    "load_pretrained",
    "pad_to_multiple",
    "resize_image",
]

T = TypeVar("T")
HUB_PROBE_SECONDS = 3.0  # a reachable Hub answers a TCP connection well within this


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network access."""
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def download_command() -> str:
    """The download command of the installed ``huggingface_hub``: ``hf download`` (0.34 and later), else
    ``huggingface-cli download`` (the older name, removed in 1.0)."""
    try:
        version = metadata.version("huggingface_hub")
    except metadata.PackageNotFoundError:
        return "hf download"
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    return "hf download" if tuple(parts) >= (0, 34) else "huggingface-cli download"


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers/transformers
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the Hugging Face Hub (``HF_ENDPOINT``), or the proxy that reaches it, accepts a connection.

    One TCP connection with a short timeout: without it, an offline machine spends about half a
    minute in the Hub client's retries before failing.
    """
    parts = urlsplit(_hub_endpoint())
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme) if host else None
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    # A Hub id is "name" or "org/name"; anything else that is not an existing folder is a missing path.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or os.path.exists(name)


def _cache_dir() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface")), "hub"
    )


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_pretrained(
    name_or_path: str | os.PathLike,
    loader: Callable[[str, bool], T],
    what: str,
    cli_flag: str,
    local_files_only: bool = False,
    required: tuple[str, ...] = (),
) -> T:
    """Load a model with ``loader(source, local_files_only)`` or raise one clear error.

    Args:
        name_or_path: a local directory or a Hugging Face Hub model id.
        loader: builds the model from a directory or id; it must honour ``local_files_only``.
        what: human name for the error message, e.g. ``"Stable Diffusion"``.
        cli_flag: the ``infer.py`` flag that takes a local directory, e.g. ``"--sd-model"``.
        local_files_only: never use the network, even when not offline.
        required: entries that a local directory must contain (e.g. ``("unet", "vae")``).

    Returns:
        Whatever ``loader`` returns.

    Raises:
        InputError: the directory is missing or incomplete, or the model id is neither cached nor
            downloadable.
    """
    name = os.fspath(name_or_path)
    folder = Path(name).expanduser()
    if folder.is_dir():
        missing = [entry for entry in required if not (folder / entry).exists()]
        if missing:
            raise InputError(f"{folder}: not a {what} directory, missing {missing}")
        try:
            return loader(str(folder), True)
        except Exception as err:  # the libraries raise OSError, ValueError, KeyError, ... on bad folders
            raise InputError(f"{folder}: could not load {what} weights ({_reason(err)})") from None
    if _looks_like_path(name):
        raise InputError(f"{name}: no such {what} model directory")
    hint = (
        f"download it with `{download_command()} {name} --local-dir DIR` and pass `{cli_flag} DIR` "
        f"(pretrained_model_name_or_path=DIR), or set HF_HOME to the cache that holds it"
    )
    try:
        return loader(name, True)
    except Exception as err:  # not cached (or a broken cache entry)
        first = err
    if local_files_only or hub_offline():
        raise InputError(
            f"{what} model {name!r} is not in the local Hugging Face cache ({_cache_dir()}) and downloads are "
            f"off; {hint} ({_reason(first)})"
        ) from None
    if not hub_reachable():
        raise InputError(
            f"{what} model {name!r} is not in the local Hugging Face cache ({_cache_dir()}) and the Hub "
            f"({_hub_endpoint()}) cannot be reached; {hint}"
        )
    try:
        return loader(name, False)
    except Exception as err:  # network down, repository gated or renamed, ...
        raise InputError(
            f"{what} model {name!r} is not in the local Hugging Face cache ({_cache_dir()}) and could not be "
            f"downloaded; {hint} ({_reason(err)})"
        ) from None


# ------------------------------------------------------------------- image sizing shared by the extractors
def as_size(size: int | tuple[int, int] | list[int] | None, name: str = "image_size") -> tuple[int, int] | None:
    """``None``, ``S`` or ``(H, W)`` as ``None`` or an ``(H, W)`` tuple of positive ints."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (H, W), got {size!r}")
    return pair  # type: ignore[return-value]


def resize_image(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinearly resize ``(B, C, H, W)`` to ``size`` (antialiased when shrinking); ``None`` keeps it."""
    if size is None or tuple(image.shape[-2:]) == size:
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad ``(B, C, H, W)`` on the bottom and right up to multiples of ``multiple``."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")


def crop_to_image(features: torch.Tensor, image_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Keep the ``ceil(H / stride) x ceil(W / stride)`` cells of a padded map that overlap the image."""
    h, w = (-(-image_size[0] // stride), -(-image_size[1] // stride))
    return features[..., :h, :w]
