"""Export scikit-image's sample photos into the package's assets: ``photos/{train,val}`` and ``samples``.

By default into ``diffmatch/assets/`` (the folder :mod:`diffmatch.assets` finds them in).

Reproducible: the same scikit-image version writes the same files. Only real photographs are used
(no synthetic drawings such as colorwheel, logo, chessboard, phantom or horse). Large photos are
downscaled with area interpolation so that their long side is at most ``--max-side`` pixels.

Usage:
    python scripts/export_bundled_photos.py [--out diffmatch/assets] [--max-side 768] [--quality 92]
"""

from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import skimage
import skimage.data

from diffmatch.io import atomic_write_bytes, save_image

# Held out for validation: colour and gray, object and texture.
VAL = ("chelsea", "coffee", "rocket", "brick", "coins")
TRAIN = (
    "astronaut",
    "camera",
    "clock",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
    "cell",
)
SAMPLE_WIDTH = 512


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = skimage.util.img_as_ubyte(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def export(out: Path, max_side: int, quality: int) -> None:
    for split, names in (("train", TRAIN), ("val", VAL)):
        for name in names:
            image = _downscale(_as_uint8(getattr(skimage.data, name)()), max_side)
            path = out / "photos" / split / f"{name}.jpg"
            save_jpeg(path, image, quality)
            print(f"{path}  {image.shape}")
    left, right, _ = skimage.data.stereo_motorcycle()
    for name, image in (("motorcycle_left", left), ("motorcycle_right", right)):
        image = _downscale(_as_uint8(image), SAMPLE_WIDTH)
        path = out / "samples" / f"{name}.png"
        save_image(path, image)
        print(f"{path}  {image.shape}")


def save_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    """Write a JPEG through cv2 with an explicit quality (``save_image`` uses OpenCV's default)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"{path}: JPEG encoding failed")
    atomic_write_bytes(path, encoded.tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=files("diffmatch.assets"), help="default: diffmatch/assets")
    parser.add_argument("--max-side", type=int, default=768)
    parser.add_argument("--quality", type=int, default=92)
    args = parser.parse_args()
    print(f"scikit-image {skimage.__version__}")
    export(args.out, args.max_side, args.quality)


if __name__ == "__main__":
    main()
