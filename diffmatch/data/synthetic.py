"""Synthetic training pairs generated on the fly from any folder of photos (DenseMatching style).

Each item is made from one photo: the photo is resized to a random working scale, the *source* is
a random crop of the training size, and the *target* is the working image sampled through a known
random warp (homography, affine, TPS or affine+TPS, optionally with local elastic perturbations).
Because the target is sampled from the whole working image rather than from the crop, target
pixels whose match leaves the source frame still show real content; they are masked out, unless
``supervise_out_of_frame`` keeps them (the warp defines their flow all the same).
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from diffmatch.data.glunet_warps import render_pair, sample_warp_row
from diffmatch.data.photometric import PhotometricConfig, photometric_augment
from diffmatch.data.photos import list_images
from diffmatch.data.warps import WarpConfig, sample_elastic, sample_mapping
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid, pixel_to_normalized
from diffmatch.io import load_image

__all__ = ["SyntheticPairs", "inside_frame"]


def inside_frame(coords: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` bool: which absolute pixel coordinates ``(B, 2, H, W)`` lie in a frame of ``size=(H, W)``.

    The frame is ``[-0.5, W - 0.5] × [-0.5, H - 0.5]``, as in :func:`diffmatch.geometry.warp`.
    """
    h, w = size
    x, y = coords[:, 0], coords[:, 1]
    return torch.isfinite(x) & torch.isfinite(y) & (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or min(int(s) for s in size) < 8:
        raise InputError(f"size must be (H, W) with both >= 8, got {size}")
    return int(size[0]), int(size[1])


class SyntheticPairs(Dataset):
    """Random but reproducible synthetic pairs with dense ground truth.

    Item ``i`` depends only on ``(seed, epoch, i)``: it uses photo ``i % num_images`` and a private
    ``torch.Generator`` seeded from those three numbers (no global RNG), so it is identical in
    every process, worker and run. Call :meth:`set_epoch` to draw new warps each epoch.

    Args:
        image_dir: folder of photos (any size, colour or gray), e.g.
            :func:`diffmatch.data.bundled_photos`, or a list of such folders.
        size: ``(H, W)`` of both images.
        seed: base seed.
        length: number of items; default ``pairs_per_image * num_images``.
        pairs_per_image: items per photo when ``length`` is not given.
        warp: warp ranges and type mix (DenseMatching defaults); see :class:`WarpConfig`. With
            ``preset='glunet'`` the pair is rendered by DGC-Net's generator
            (:func:`diffmatch.data.glunet_warps.render_pair`: its crops, parameters drawn from the
            distributions of the DPED-CityScape-ADE CSV), and ``context`` is not used.
        photometric: augmentation ranges; ``None`` gives :class:`PhotometricConfig` defaults.
        augment: apply photometric augmentation (independently to source and target).
        context: range of the working-image scale, relative to the smallest scale at which a
            ``size`` crop fits; larger values crop a smaller part of the photo.
        supervise_out_of_frame: set ``mask`` wherever the flow is defined, including pixels whose
            match leaves the source frame. The warp defines their flow, and leaving them out biases
            a model trained on the mask at the borders: a border pixel's flow is then only ever
            supervised when it points into the frame, so the model learns to point inwards there
            (checkpoints/README.md, "Where it falls short").

    Items are dicts:
        * ``source``, ``target``: ``(3, H, W)`` float32 in ``[0, 1]``;
        * ``flow``: ``(2, H, W)`` float32, pixels, on the target grid, ``target(x) ≈ source(x + flow(x))``;
        * ``mask``: ``(H, W)`` bool, where ``x + flow(x)`` lies inside the source frame (everywhere
          with ``supervise_out_of_frame``).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike | list[str | os.PathLike],
        size: tuple[int, int] = (256, 256),
        seed: int = 0,
        length: int | None = None,
        pairs_per_image: int = 100,
        warp: WarpConfig | None = None,
        photometric: PhotometricConfig | None = None,
        augment: bool = True,
        context: tuple[float, float] = (1.0, 2.0),
        supervise_out_of_frame: bool = False,
    ) -> None:
        self.images = list_images(image_dir)
        self.size = _check_size(size)
        if pairs_per_image < 1:
            raise InputError(f"pairs_per_image must be >= 1, got {pairs_per_image}")
        if length is not None and length < 1:
            raise InputError(f"length must be >= 1, got {length}")
        if not 1.0 <= context[0] <= context[1]:
            raise InputError(f"context must be a range (lo, hi) with 1 <= lo <= hi, got {context}")
        self.seed = int(seed)
        self.length = length if length is not None else pairs_per_image * len(self.images)
        self.warp = warp if warp is not None else WarpConfig()
        self.photometric = photometric if photometric is not None else PhotometricConfig()
        self.augment = augment
        self.context = (float(context[0]), float(context[1]))
        self.supervise_out_of_frame = bool(supervise_out_of_frame)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Mix ``epoch`` into every item's seed (call before creating the DataLoader iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _generators(self, index: int) -> list[torch.Generator]:
        """Independent generators for geometry, source photometry and target photometry."""
        sequence = np.random.SeedSequence([self.seed, self.epoch, index])
        return [
            torch.Generator().manual_seed(int(s)) for s in sequence.generate_state(3, dtype=np.uint64) >> 1
        ]

    def _working_image(self, index: int, generator: torch.Generator) -> np.ndarray:
        """The photo of ``index`` resized so that a ``size`` crop covers ``1 / context`` of it."""
        image = load_image(self.images[index % len(self.images)])
        h, w = self.size
        h0, w0 = image.shape[:2]
        lo, hi = self.context
        ratio = (lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))) * max(
            h / h0, w / w0
        )
        new_w, new_h = max(w, round(w0 * ratio)), max(h, round(h0 * ratio))
        interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        return cv2.resize(image, (new_w, new_h), interpolation=interpolation)

    def make_pair(
        self, index: int, warp: WarpConfig, photometric: PhotometricConfig | None
    ) -> dict[str, Any]:
        """Build item ``index`` with the given warp ranges and photometric config (``None``: none)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        geometry, photo_source, photo_target = self._generators(index)
        if warp.preset == "glunet":
            pair = self._glunet_pair(index, warp, geometry)
        else:
            pair = self._crop_pair(index, warp, geometry)
        if self.supervise_out_of_frame:
            pair["mask"] = torch.isfinite(pair["flow"]).all(0)
        if photometric is not None:
            pair["source"] = photometric_augment(pair["source"], photometric, photo_source)
            pair["target"] = photometric_augment(pair["target"], photometric, photo_target)
        pair["source"] = pair["source"].clamp(0.0, 1.0)
        pair["target"] = pair["target"].clamp(0.0, 1.0)
        return pair

    def _glunet_pair(self, index: int, warp: WarpConfig, geometry: torch.Generator) -> dict[str, Any]:
        """DGC-Net's generator with freshly drawn parameters: its own crops, ``context`` unused."""
        kind, params = sample_warp_row(warp, geometry)
        return render_pair(load_image(self.images[index % len(self.images)]), kind, params, self.size)

    def _crop_pair(self, index: int, warp: WarpConfig, geometry: torch.Generator) -> dict[str, Any]:
        """DenseMatching's generator: a crop of a rescaled photo and that photo seen through the warp."""
        h, w = self.size
        work = self._working_image(index, geometry)
        oy = int(torch.randint(0, work.shape[0] - h + 1, (), generator=geometry))
        ox = int(torch.randint(0, work.shape[1] - w + 1, (), generator=geometry))
        work_t = torch.from_numpy(work).permute(2, 0, 1)[None].float() / 255.0
        source = work_t[0, :, oy : oy + h, ox : ox + w].contiguous()

        mapping = sample_mapping(warp.choose(geometry), self.size, warp, geometry)
        # Always draw the coin so the stream does not depend on elastic_probability being zero.
        if float(torch.rand((), generator=geometry)) < warp.elastic_probability:
            mapping = mapping + sample_elastic(self.size, geometry)
        mapping = warp.shrink(mapping, geometry)
        offset = mapping.new_tensor([ox, oy]).view(1, 2, 1, 1)
        grid = pixel_to_normalized(mapping + offset, work.shape[:2]).permute(0, 2, 3, 1)
        target = F.grid_sample(work_t, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        target = target[0]
        return {
            "source": source,
            "target": target,
            "flow": (mapping - coords_grid(1, h, w))[0],
            "mask": inside_frame(mapping, self.size)[0],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.make_pair(index, self.warp, self.photometric if self.augment else None)
