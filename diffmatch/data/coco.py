"""Object cut-outs from a COCO-style instance segmentation set (the pycocotools JSON format).

The layout is DenseMatching's: ``<root>/annotations/instances_<split><version>.json`` and the
images in ``<root>/images/<split><version>/``. Only non-crowd annotations whose ``area`` exceeds
``min_area`` are kept (DenseMatching: 1300 px²). Masks are decoded here from polygons or RLE
(compressed or not), so pycocotools is not needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from diffmatch.errors import InputError
from diffmatch.io import load_image

__all__ = ["CocoObject", "CocoObjects", "decode_segmentation"]


@dataclass(frozen=True)
class CocoObject:
    """One object: the image patch around it and its mask.

    Attributes:
        image: ``(h, w, 3)`` uint8 RGB patch (the annotation's mask bounding box).
        mask: ``(h, w)`` bool, the object's pixels in ``image``.
        name: ``<image file stem>_<annotation id>``.
    """

    image: np.ndarray
    mask: np.ndarray
    name: str


def _rle_counts(counts: str | list[int]) -> list[int]:
    """Run lengths of an RLE, decoding COCO's compressed string form (6 bits per char, offset 48)."""
    if not isinstance(counts, str):
        return [int(c) for c in counts]
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            chunk = ord(counts[position]) - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]  # run lengths after the second are stored as differences
        runs.append(value)
    return runs


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO ``segmentation`` (polygon list or RLE dict) to an ``(height, width)`` bool mask."""
    if isinstance(segmentation, list):
        mask = np.zeros((height, width), np.uint8)
        polygons = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in segmentation]
        polygons = [p for p in polygons if len(p) >= 3]
        if not polygons:
            raise InputError("segmentation polygon with fewer than 3 points")
        cv2.fillPoly(mask, polygons, 1)
        return mask.astype(bool)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        runs = _rle_counts(segmentation["counts"])
        flat = np.zeros(height * width, bool)
        position, value = 0, False
        for run in runs:  # runs alternate 0s and 1s, starting with 0s, in column-major order
            flat[position : position + run] = value
            position += run
            value = not value
        if position != height * width:
            raise InputError(f"RLE covers {position} pixels, expected {height * width}")
        return flat.reshape(width, height).T
    raise InputError(f"unknown segmentation format: {type(segmentation).__name__}")


class CocoObjects:
    """The objects of a COCO instance annotation file, each cut out with its mask.

    Args:
        root: COCO folder holding ``annotations/`` and ``images/``.
        split: ``train`` or ``val``.
        version: ``2014`` (DenseMatching and DiffMatch) or ``2017``.
        min_area: keep objects whose annotated area exceeds this (px²).

    Raises:
        InputError: a missing file or folder, a malformed annotation file, or no object left.
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "train", version: str = "2014", min_area: float = 1300.0
    ) -> None:
        self.root = Path(root)
        self.annotation_file = self.root / "annotations" / f"instances_{split}{version}.json"
        self.image_dir = self.root / "images" / f"{split}{version}"
        for path in (self.annotation_file, self.image_dir):
            if not path.exists():
                raise InputError(f"{path}: not found (expected the COCO layout, see data/README.md)")
        try:
            data = json.loads(self.annotation_file.read_text())
            images = {int(im["id"]): im for im in data["images"]}
            self.annotations = [
                a for a in data["annotations"] if not a.get("iscrowd", 0) and float(a["area"]) > min_area
            ]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise InputError(f"{self.annotation_file}: not a COCO instance file ({err})") from None
        if not self.annotations:
            raise InputError(f"{self.annotation_file}: no non-crowd object larger than {min_area} px²")
        self.images = images

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> CocoObject:
        if not 0 <= index < len(self):
            raise IndexError(f"object {index} out of range for {len(self)} objects")
        annotation = self.annotations[index]
        info = self.images[int(annotation["image_id"])]
        image = load_image(self.image_dir / info["file_name"])
        mask = decode_segmentation(annotation["segmentation"], image.shape[0], image.shape[1])
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            raise InputError(f"{self.annotation_file}: annotation {annotation.get('id')} has an empty mask")
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        return CocoObject(
            image[y0:y1, x0:x1].copy(),
            mask[y0:y1, x0:x1].copy(),
            f"{Path(info['file_name']).stem}_{annotation.get('id')}",
        )
