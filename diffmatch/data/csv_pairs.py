"""Pairs rendered from a DGC-Net/GLU-Net CSV of warp parameters over a folder of original photos.

With GLU-Net's ``homo_aff_tps_train_DPED_CityScape_ADE.csv`` and the DPED, Cityscapes and ADE20K
originals this is DPED-CityScape-ADE, rendered on the fly. (The official DiffMatch reads the same
pairs pre-rendered at 520 × 520 and saved as 8-bit images by GLU-Net's
``save_training_dataset_to_disk.py``; rendering here skips that 8-bit rounding of the target.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from diffmatch.data.glunet_warps import read_warp_csv, render_pair
from diffmatch.data.photometric import PhotometricConfig, photometric_augment
from diffmatch.errors import InputError
from diffmatch.io import load_image

__all__ = ["CSVWarpPairs"]


class CSVWarpPairs(Dataset):
    """One pair per CSV row: the row's original photo warped by the row's homography, affine or TPS.

    The geometry is DGC-Net's as GLU-Net adapted it (see :mod:`diffmatch.data.glunet_warps`): the
    target is the warped image and the flow lies on its grid. Items are fixed (no randomness)
    unless ``augment`` is set; the reference applies no photometric augmentation to this set.

    Args:
        image_root: folder the CSV's ``fname`` paths are relative to (for DPED-CityScape-ADE the
            one holding ``original_images/``, ``CityScape/``, ``CityScape_extra/`` and
            ``ADE20K_2016_07_26/``).
        csv_file: the CSV (``fname, aff/tps/homo, t1 ... t18``).
        size: output ``(H, W)``; the reference renders ``(520, 520)``.
        length: use only the first ``length`` rows.
        augment: apply seeded photometric augmentation to each image.
        photometric: its ranges (``None``: :class:`PhotometricConfig` defaults).
        seed: seed of that augmentation.

    Items are dicts: ``source``, ``target`` ``(3, H, W)`` float32 in ``[0, 1]``; ``flow``
    ``(2, H, W)`` float32, ``target(x) ≈ source(x + flow(x))`` in pixels; ``mask`` ``(H, W)`` bool
    (the match lies inside the source frame); ``name`` (row index and image stem).
    """

    def __init__(
        self,
        image_root: str | os.PathLike,
        csv_file: str | os.PathLike,
        size: tuple[int, int] = (520, 520),
        length: int | None = None,
        augment: bool = False,
        photometric: PhotometricConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(image_root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: image root not found")
        if len(size) != 2 or min(int(s) for s in size) < 8:
            raise InputError(f"size must be (H, W) with both >= 8, got {size}")
        self.size = (int(size[0]), int(size[1]))
        self.rows = read_warp_csv(csv_file)
        if length is not None:
            if length < 1:
                raise InputError(f"length must be >= 1, got {length}")
            self.rows = self.rows[:length]
        self.augment = augment
        self.photometric = photometric if photometric is not None else PhotometricConfig()
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Mix ``epoch`` into the photometric augmentation's seed (geometry is fixed by the CSV)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        row = self.rows[index]
        path = self.root / row.image
        if not path.is_file():
            raise InputError(f"{path}: image of CSV row {index} not found (is image_root right?)")
        item: dict[str, Any] = render_pair(load_image(path), row.kind, row.params, self.size)
        if self.augment:
            states = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint64)
            for key, state in zip(("source", "target"), states >> 1):
                generator = torch.Generator().manual_seed(int(state))
                item[key] = photometric_augment(item[key], self.photometric, generator)
        item["name"] = f"{index:06d}_{Path(row.image).stem}"
        return item
