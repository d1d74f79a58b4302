"""Any image pairs with ground-truth flow, listed in a text file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from diffmatch.data.photos import load_image_tensor
from diffmatch.data.synthetic import inside_frame
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid
from diffmatch.io import read_flow_file

__all__ = ["GenericPairs", "read_mask"]

_HEADER = ("source", "target", "flow")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a validity mask: an image (non-zero = valid) or a ``.npy`` array; returns ``(H, W)`` bool."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() == ".npy":
        mask = np.load(path, allow_pickle=False)
    else:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise InputError(f"{path}: not a readable mask image")
        if mask.ndim == 3:
            mask = mask.max(axis=2)
    if mask.ndim != 2:
        raise InputError(f"{path}: mask must be 2-D, got shape {mask.shape}")
    return mask.astype(bool)


class GenericPairs(Dataset):
    """Pairs listed one per line as ``source target flow [mask]``.

    Fields are separated by commas and/or whitespace (so paths may not contain either); ``#``
    starts a comment; a first line ``source,target,flow[,mask]`` is taken as a header. Relative
    paths are resolved against ``root`` (default: the list file's folder). The flow may be any
    format :func:`diffmatch.io.read_flow_file` reads (``.flo``, KITTI ``.png``, ``.npy``, ``.npz``);
    it lies on the target grid (same size as the target image), points into the source in source
    pixels (``target(x) ≈ source(x + flow(x))``); its own validity (KITTI, ``.npz`` ``valid``) is kept.
    The optional mask is an image (non-zero = valid) or a ``.npy`` bool array of the target size.

    Args:
        list_file: the pair list.
        root: folder that relative paths start from.

    Items are dicts: ``source`` ``(3, Hs, Ws)`` and ``target`` ``(3, Ht, Wt)`` float32 in ``[0, 1]``
    (sizes may differ), ``flow`` ``(2, Ht, Wt)`` float32 pixels, ``mask`` ``(Ht, Wt)`` bool (GT
    defined, finite, in the optional mask and landing inside the source frame), ``name`` (the
    target file's stem prefixed by the line index).
    """

    def __init__(self, list_file: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
        list_file = Path(list_file)
        if not list_file.is_file():
            raise InputError(f"{list_file}: pair list not found")
        self.root = Path(root) if root is not None else list_file.parent
        self.pairs: list[tuple[Path, ...]] = []
        for number, raw in enumerate(list_file.read_text().splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = [f for f in re.split(r"[,\s]+", line) if f]
            if not self.pairs and tuple(f.lower() for f in fields[:3]) == _HEADER:
                continue
            if len(fields) not in (3, 4):
                raise InputError(f"{list_file}:{number}: expected 'source target flow [mask]', got {line!r}")
            paths = tuple(self.root / f for f in fields)
            for path in paths:
                if not path.is_file():
                    raise InputError(f"{list_file}:{number}: file not found: {path}")
            self.pairs.append(paths)
        if not self.pairs:
            raise InputError(f"{list_file}: no pairs listed")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        source_path, target_path, flow_path, *mask_path = self.pairs[index]
        source = load_image_tensor(source_path)
        target = load_image_tensor(target_path)
        gt = read_flow_file(flow_path)
        ht, wt = target.shape[-2:]
        if gt["flow"].shape[:2] != (ht, wt):
            raise InputError(
                f"{flow_path}: flow is {gt['flow'].shape[:2]} but target {target_path} is {(ht, wt)}"
            )
        valid = gt["valid"] & np.isfinite(gt["flow"]).all(axis=2)
        if mask_path:
            mask = read_mask(mask_path[0])
            if mask.shape != (ht, wt):
                raise InputError(
                    f"{mask_path[0]}: mask is {mask.shape} but target {target_path} is {(ht, wt)}"
                )
            valid &= mask
        flow = np.where(valid[..., None], gt["flow"], 0.0).astype(np.float32)
        flow = torch.from_numpy(flow).permute(2, 0, 1)
        inside = inside_frame(flow[None] + coords_grid(1, ht, wt), tuple(source.shape[-2:]))[0]
        return {
            "source": source,
            "target": target,
            "flow": flow.contiguous(),
            "mask": torch.from_numpy(valid) & inside,
            "name": f"{index:05d}_{target_path.stem}",
        }
