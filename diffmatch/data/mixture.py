"""Two pair datasets mixed into one stream by a seeded share (e.g. 2D warps and 3D scenes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from diffmatch.errors import InputError

__all__ = ["MIXED_KEYS", "MixedPairs"]

# What every pair dataset yields, and so what a mixed batch can hold.
MIXED_KEYS: tuple[str, ...] = ("source", "target", "flow", "mask")


class MixedPairs(Dataset):
    """Item ``i`` comes from ``second`` with probability ``share``, else from ``first``.

    The choice is a pure function of ``(seed, epoch, i)``, so the stream is reproducible in every
    process and worker; the chosen dataset's item ``i % len(dataset)`` is returned with the keys
    both share (:data:`MIXED_KEYS`: ``source``, ``target``, ``flow`` on the target grid with
    ``target(x) ≈ source(x + flow(x))``, ``mask``), so the default collate can batch them. ``set_epoch``
    reaches both datasets.

    Args:
        first: the main dataset; it sets the length.
        second: the dataset mixed in.
        share: probability in ``[0, 1]`` that an item comes from ``second``.
        seed: seed of the choice.
    """

    def __init__(self, first: Dataset, second: Dataset, share: float, seed: int = 0) -> None:
        if not 0.0 <= share <= 1.0:
            raise InputError(f"the share of mixed-in pairs must be in [0, 1], got {share}")
        self.first, self.second = first, second
        self.share = float(share)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New choices, and new items from both datasets, for ``epoch``."""
        self.epoch = int(epoch)
        for dataset in (self.first, self.second):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.first)  # type: ignore[arg-type]

    def from_second(self, index: int) -> bool:
        """Whether item ``index`` comes from ``second`` this epoch."""
        state = np.random.SeedSequence([self.seed, self.epoch, index, 11]).generate_state(1, dtype=np.uint64)[0]
        draw = torch.rand((), generator=torch.Generator().manual_seed(int(state >> 1)), dtype=torch.float64)
        return float(draw) < self.share

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        dataset = self.second if self.from_second(index) else self.first
        item = dataset[index % len(dataset)]  # type: ignore[arg-type]
        return {key: item[key] for key in MIXED_KEYS}
