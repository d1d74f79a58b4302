"""HPatches sequences (Balntas et al., CVPR 2017) as dense-flow pairs, the DGC-Net/GLU-Net protocol."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from diffmatch.data.photos import image_to_tensor
from diffmatch.data.synthetic import inside_frame
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid, homography_to_flow
from diffmatch.io import load_image

__all__ = ["HPatches", "HPATCHES_SUBSETS"]

HPATCHES_SUBSETS: tuple[str, ...] = ("viewpoint", "illumination", "all")


def _resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """Pixel-centre resize ``x -> (x + 0.5) * s - 0.5`` from ``old=(H, W)`` to ``new=(H', W')`` as a 3×3 matrix."""
    sy, sx = new[0] / old[0], new[1] / old[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


class HPatches(Dataset):
    """Pairs ``1 → k`` (k = 2..6) of the ``hpatches-sequences-release`` folder.

    Layout: ``<root>/<sequence>/{1..6}.ppm`` and ``<root>/<sequence>/H_1_<k>``, a 3×3 text matrix
    mapping image-1 pixels to image-k pixels (origin at the centre of the top-left pixel, as in
    this project). The source is image 1, the target image k; the flow is that of ``H⁻¹`` on the
    target grid, so ``target(x) ≈ source(x + flow(x))`` in pixels.

    With ``size`` both images are resized (area interpolation) and the homography follows:
    ``H' = S_t H S_s⁻¹`` with the exact pixel-centre scale matrices (DenseMatching uses plain
    scalings, which differ by under half a pixel at 240×240).

    Args:
        root: the ``hpatches-sequences-release`` folder.
        size: ``(H, W)`` to resize both images to (the usual protocol uses ``(240, 240)``), or
            ``None`` for the original sizes.
        subset: ``"viewpoint"`` (``v_*`` sequences, as DenseMatching evaluates), ``"illumination"``
            (``i_*``) or ``"all"``.
        pairs: which ``k`` of the ``1 → k`` pairs to use.

    Items are dicts: ``source``, ``target`` ``(3, H, W)`` float32 in ``[0, 1]``; ``flow`` ``(2, Ht, Wt)``
    float32 pixels; ``mask`` ``(Ht, Wt)`` bool (match inside the source frame); ``homography``
    ``(3, 3)`` float64 mapping source to target pixels at the returned sizes; ``name``
    ``"<sequence>/1_<k>"``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: tuple[int, int] | None = (240, 240),
        subset: str = "viewpoint",
        pairs: tuple[int, ...] = (2, 3, 4, 5, 6),
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: HPatches folder not found")
        if subset not in HPATCHES_SUBSETS:
            raise InputError(f"subset must be one of {HPATCHES_SUBSETS}, got {subset!r}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise InputError(f"size must be (H, W) of positive ints or None, got {size}")
        if not pairs or any(k not in range(2, 7) for k in pairs):
            raise InputError(f"pairs must be a non-empty subset of 2..6, got {pairs}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        prefix = {"viewpoint": ("v_",), "illumination": ("i_",), "all": ("v_", "i_")}[subset]
        sequences = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(prefix))
        self.items = [(seq, k) for seq in sequences for k in pairs if (seq / f"H_1_{k}").is_file()]
        if not self.items:
            raise InputError(f"{self.root}: no {subset} sequences with H_1_k files found")

    def __len__(self) -> int:
        return len(self.items)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        h, w = self.size
        if image.shape[:2] == (h, w):
            return image
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        sequence, k = self.items[index]
        try:
            homography = np.loadtxt(sequence / f"H_1_{k}", dtype=np.float64)
        except ValueError as err:
            raise InputError(f"{sequence / f'H_1_{k}'}: not a 3x3 matrix ({err})") from None
        if homography.shape != (3, 3):
            raise InputError(f"{sequence / f'H_1_{k}'}: expected a 3x3 matrix, got shape {homography.shape}")
        source, target = load_image(sequence / "1.ppm"), load_image(sequence / f"{k}.ppm")
        if self.size is not None:
            resize_s, resize_t = (
                _resize_matrix(source.shape[:2], self.size),
                _resize_matrix(target.shape[:2], self.size),
            )
            homography = resize_t @ homography @ np.linalg.inv(resize_s)
            source, target = self._resize(source), self._resize(target)
        ht, wt = target.shape[:2]
        matrix = torch.from_numpy(homography)
        flow = homography_to_flow(torch.linalg.inv(matrix), (ht, wt))
        mask = inside_frame(flow + coords_grid(1, ht, wt, dtype=flow.dtype), source.shape[:2])[0]
        return {
            "source": image_to_tensor(source),
            "target": image_to_tensor(target),
            "flow": flow[0].float(),
            "mask": mask,
            "homography": matrix,
            "name": f"{sequence.name}/1_{k}",
        }
