"""Turning user inputs (paths, PIL images, arrays, tensors) into image batches."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from diffmatch.errors import InputError
from diffmatch.io import load_image

__all__ = ["ImageInput", "resolve_device", "shrink_images", "to_gray_uint8", "to_image_batch"]

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def _check_finite(values: np.ndarray | torch.Tensor, name: str) -> None:
    """Refuse NaN and infinite pixel values: one would spread through the whole flow and uncertainty."""
    finite = np.isfinite(values) if isinstance(values, np.ndarray) else torch.isfinite(values)
    if not finite.all():
        raise InputError(
            f"{name}: {int((~finite).sum())} pixel value(s) are NaN or infinite; images must be finite "
            "(uint8, uint16, or float in [0, 1])"
        )


def _array_to_tensor(array: np.ndarray, name: str = "image") -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"image array must be (H, W), (H, W, 1|3|4), got shape {array.shape}")
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        _check_finite(array, name)
        scaled = array.astype(np.float32)
    else:
        raise InputError(f"image array dtype must be uint8, uint16 or float, got {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1)
    return _to_rgb(tensor)


def _to_rgb(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.shape[-3] == 1:
        return tensor.expand(*tensor.shape[:-3], 3, *tensor.shape[-2:]).contiguous()
    if tensor.shape[-3] == 4:
        return tensor[..., :3, :, :]
    return tensor


def _one_image(image: ImageInput, name: str) -> torch.Tensor:
    if isinstance(image, (str, os.PathLike)):
        return _array_to_tensor(load_image(Path(image)), name)
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)  # upright, as load_image reads files
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        return _array_to_tensor(np.asarray(image), name)
    if isinstance(image, np.ndarray):
        return _array_to_tensor(image, name)
    raise InputError(
        f"unsupported image type {type(image).__name__}; expected a path, PIL image, array or tensor"
    )


def to_image_batch(images: ImageInput | list[ImageInput], name: str = "image") -> torch.Tensor:
    """Convert one image or a batch of images to a ``(B, 3, H, W)`` float tensor in ``[0, 1]``.

    Accepted: a path, a PIL image, an ``(H, W[, C])`` uint8/uint16/float array, a ``(C, H, W)`` or
    ``(B, C, H, W)`` tensor (uint8 or float in ``[0, 1]``) with ``C`` in 1, 3, 4, or a list of those
    with one size. Grayscale is replicated and alpha is dropped. Files and PIL images are turned
    upright by their EXIF orientation.

    Raises:
        InputError: unreadable file, wrong shape, dtype or mixed sizes, NaN or infinite values.
    """
    if isinstance(images, torch.Tensor):
        tensor = images
        if tensor.ndim == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 4 or tensor.shape[1] not in (1, 3, 4):
            raise InputError(
                f"{name} tensor must be (C, H, W) or (B, C, H, W) with C in 1, 3, 4, got {tuple(images.shape)}"
            )
        tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
        _check_finite(tensor, name)
        return _to_rgb(tensor)
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError(f"{name}: empty list of images")
        batch = [_one_image(im, name) for im in images]
        sizes = {tuple(b.shape[-2:]) for b in batch}
        if len(sizes) > 1:
            raise InputError(f"{name}: images in one batch must share a size, got {sorted(sizes)}")
        return torch.stack(batch)
    return _one_image(images, name).unsqueeze(0)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU; also ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.

    Raises:
        InputError: an unknown device, or CUDA without a GPU.
    """
    if isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device != "cpu" and not device.startswith("cuda"):
            raise InputError(f"--device must be auto, cpu or cuda, got {device!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device must be auto, cpu or cuda, got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA GPU is available; use --device cpu or auto")
    return device


def to_gray_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float RGB in ``[0, 1]`` to an ``(H, W)`` uint8 grayscale array (ITU-R 601 luma)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    rgb = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def shrink_images(images: torch.Tensor, max_size: int | None) -> torch.Tensor:
    """``(B, 3, H, W)`` images shrunk (area interpolation, OpenCV's) so that their longer side is at most
    ``max_size``; returned as they are when already small enough or ``max_size`` is ``None``."""
    h, w = images.shape[-2:]
    if max_size is None or max(h, w) <= max_size:
        return images
    scale = max_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    arrays = images.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    small = np.stack([cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_AREA) for a in arrays])
    return torch.from_numpy(small).permute(0, 3, 1, 2).to(device=images.device, dtype=images.dtype)
