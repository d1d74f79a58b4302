"""Image folders: the photos bundled with the package, listing any image folder, image tensors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from diffmatch.assets import fetched_photos, fetched_photos_hint, photo_folder
from diffmatch.errors import InputError
from diffmatch.io import load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "PHOTO_SPLITS",
    "bundled_photos",
    "list_images",
    "load_image_tensor",
    "image_to_tensor",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
)
PHOTO_SPLITS: tuple[str, ...] = ("train", "val")


def bundled_photos(split: str = "train") -> Path:
    """Folder of the scikit-image sample photos shipped in the package (``diffmatch/assets/photos/<split>``).

    ``train`` feeds the default synthetic training pairs; ``val`` is held out for the synthetic
    benchmark. They are written by ``scripts/export_bundled_photos.py``; :mod:`diffmatch.assets`
    finds them.

    Args:
        split: ``"train"`` or ``"val"``.

    Returns:
        The absolute folder path.

    Raises:
        InputError: unknown split, or the folder is missing or empty (a package built without its
            assets).
    """
    if split not in PHOTO_SPLITS:
        raise InputError(f"split must be one of {PHOTO_SPLITS}, got {split!r}")
    folder = photo_folder(split)
    if not folder.is_dir() or not list_images(folder, required=False):
        raise InputError(
            f"{folder}: bundled photos not found; the package was built without its assets "
            "(a checkout restores them with `python scripts/export_bundled_photos.py`)"
        )
    return folder


def list_images(image_dir: str | os.PathLike | Sequence[str | os.PathLike], required: bool = True) -> list[Path]:
    """Sorted image files directly inside ``image_dir`` (by extension, case-insensitive).

    ``image_dir`` may also be a list of folders: their images are concatenated, folder by folder.

    Raises:
        InputError: a folder is missing, or (if ``required``) one holds no image.
    """
    if not isinstance(image_dir, (str, os.PathLike)):
        return [image for folder in image_dir for image in list_images(folder, required)]
    folder = Path(image_dir)
    if not folder.is_dir():
        hint = f"; {fetched_photos_hint()}" if folder.resolve() == fetched_photos().resolve() else ""
        raise InputError(f"{folder}: image folder not found{hint}")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if required and not images:
        raise InputError(f"{folder}: no images with extensions {IMAGE_EXTENSIONS}")
    return images


def load_image_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Load an image as a ``(3, H, W)`` float32 RGB tensor in ``[0, 1]`` (see :func:`diffmatch.io.load_image`)."""
    return image_to_tensor(load_image(path))


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 array to a ``(3, H, W)`` float32 tensor in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
