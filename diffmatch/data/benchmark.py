"""A fixed, download-free synthetic benchmark: HPatches-like homography pairs on held-out photos."""

from __future__ import annotations

import os
from typing import Any

from diffmatch.data.photometric import PhotometricConfig
from diffmatch.data.synthetic import SyntheticPairs
from diffmatch.data.warps import WarpConfig
from diffmatch.errors import InputError

__all__ = ["BENCHMARK_LEVELS", "SyntheticBenchmark"]

# Corner displacement range of the homographies (normalised units, image = [-1, 1]); training
# draws up to 0.5, so "hard" sits at the edge of the training distribution.
BENCHMARK_LEVELS: dict[str, float] = {"easy": 0.1, "medium": 0.25, "hard": 0.45}
_MILD_PHOTOMETRIC = PhotometricConfig(
    jitter_probability=1.0,
    brightness=0.1,
    contrast=0.15,
    saturation=0.15,
    hue=0.0,
    grayscale_probability=0.0,
    blur_probability=0.0,
)
_LEVEL_SEED = {"easy": 101, "medium": 202, "hard": 303}


class SyntheticBenchmark(SyntheticPairs):
    """Deterministic evaluation pairs of growing viewpoint change, like HPatches' sequences.

    Each pair is a crop of a photo (source) and the same scene seen through a random homography
    (target), with a mild, independent colour change on each image. The homography moves the four
    image corners by up to ``BENCHMARK_LEVELS[level]`` of the half-size (0.1, 0.25 or 0.45). The
    set depends only on ``(image_dir, level, size, num_pairs, seed)``; :meth:`set_epoch` is a no-op.

    Args:
        image_dir: folder of photos, normally ``bundled_photos("val")`` (held out from training).
        level: ``"easy"``, ``"medium"`` or ``"hard"``.
        size: ``(H, W)`` of both images (HPatches is usually evaluated at 240×240).
        num_pairs: number of pairs, spread round-robin over the photos.
        seed: base seed (mixed with the level, so the levels use different crops).

    Items are those of :class:`SyntheticPairs` (``source``, ``target`` ``(3, H, W)`` in ``[0, 1]``;
    ``flow`` ``(2, H, W)`` pixels with ``target(x) ≈ source(x + flow(x))``; ``mask`` ``(H, W)`` bool)
    plus ``name``: ``"<level>/<index>_<photo stem>"``.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        level: str = "medium",
        size: tuple[int, int] = (240, 240),
        num_pairs: int = 100,
        seed: int = 0,
    ) -> None:
        if level not in BENCHMARK_LEVELS:
            raise InputError(f"level must be one of {tuple(BENCHMARK_LEVELS)}, got {level!r}")
        super().__init__(
            image_dir,
            size=size,
            seed=seed * 1000 + _LEVEL_SEED[level],
            length=num_pairs,
            warp=WarpConfig(types=("homography",), homography=BENCHMARK_LEVELS[level]),
            photometric=_MILD_PHOTOMETRIC,
            context=(1.0, 1.5),
        )
        self.level = level

    def set_epoch(self, epoch: int) -> None:
        """Do nothing: the benchmark is fixed."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.make_pair(index, self.warp, self.photometric)
        item["name"] = f"{self.level}/{index:04d}_{self.images[index % len(self.images)].stem}"
        return item
