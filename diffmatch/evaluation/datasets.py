"""Evaluation datasets: which pairs a run visits, and the groups each pair is reported in.

A run is a list of :class:`EvalSubset`: a pair dataset plus the tags its pairs share (the
synthetic difficulty level, the ETH3D frame interval, the HPatches pair ``1_k``). With corruptions,
each subset is wrapped in :class:`~diffmatch.data.Corrupted`, so every pair is seen under every
listed corruption and its item carries a ``corruption`` tag too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from diffmatch.data import (
    BENCHMARK_LEVELS,
    CORRUPTIONS,
    ETH3D,
    ETH3D_RATES,
    SEVERITIES,
    Corrupted,
    GenericPairs,
    HPatches,
    SyntheticBenchmark,
    bundled_photos,
)
from diffmatch.io import InputError

__all__ = ["DATASETS", "EvalSubset", "parse_corruptions", "build_subsets"]

DATASETS: tuple[str, ...] = ("synthetic", "generic", "hpatches", "eth3d")
_NEEDS_ROOT = {
    "generic": "the pair list file",
    "hpatches": "the hpatches-sequences-release folder",
    "eth3d": "the ETH3D folder",
}


@dataclass
class EvalSubset:
    """Pairs evaluated together.

    Attributes:
        dataset: items with ``source``, ``target``, ``flow``, ``mask``, ``name`` (and ``corruption``,
            ``severity`` when corrupted).
        tags: tag name to value shared by every pair, e.g. ``{"level": "easy"}``.
    """

    dataset: Dataset
    tags: dict[str, str] = field(default_factory=dict)


class _LastItemCache(Dataset):
    """Remember the last item read: :class:`Corrupted` reads each base item once per corruption in a row."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._last: tuple[int, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._last is None or self._last[0] != index:
            self._last = (index, self.dataset[index])
        return dict(self._last[1])


def parse_corruptions(spec: str) -> tuple[str, ...]:
    """``"none"`` → ``()``; ``"all"`` → the 15 ImageNet-C types; else a comma list of names.

    Raises:
        InputError: an unknown or repeated name, or an empty list.
    """
    spec = spec.strip()
    if spec.lower() in ("none", "clean", ""):
        return ()
    if spec.lower() == "all":
        return CORRUPTIONS
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown:
        raise InputError(
            f"unknown corruption {unknown[0]!r}; expected 'all', 'none' or a comma list of {', '.join(CORRUPTIONS)}"
        )
    if len(set(names)) != len(names):
        raise InputError(f"corruption list {spec!r} names a corruption twice")
    if not names:
        raise InputError(f"--corruptions {spec!r} names no corruption")
    return names


def _base_subsets(name: str, root: str | os.PathLike | None) -> list[EvalSubset]:
    if name == "synthetic":
        image_dir = bundled_photos("val") if root is None else Path(root)
        return [
            EvalSubset(SyntheticBenchmark(image_dir, level=level), {"level": level})
            for level in BENCHMARK_LEVELS
        ]
    if root is None:
        raise InputError(f"--dataset {name} needs --root ({_NEEDS_ROOT[name]})")
    if name == "generic":
        return [EvalSubset(GenericPairs(root))]
    if name == "hpatches":
        return [EvalSubset(HPatches(root, pairs=(k,)), {"pair": f"1_{k}"}) for k in range(2, 7)]
    return [EvalSubset(ETH3D(root, rates=(rate,)), {"rate": f"rate_{rate}"}) for rate in ETH3D_RATES]


def build_subsets(
    name: str,
    root: str | os.PathLike | None = None,
    corruptions: Sequence[str] = (),
    severity: int = 5,
    limit: int | None = None,
    seed: int = 0,
) -> list[EvalSubset]:
    """The subsets of a dataset to evaluate.

    Args:
        name: one of :data:`DATASETS`.
        root: ``generic``: the pair list; ``hpatches``/``eth3d``: the dataset folder; ``synthetic``:
            an optional photo folder instead of the bundled held-out photos ``bundled_photos("val")``.
        corruptions: ImageNet-C names (empty: clean images).
        severity: corruption severity 1..5.
        limit: at most this many pairs of each subset (level, rate or ``1_k``), before corruption.
        seed: seed of the corruption noise (the synthetic benchmark itself is fixed).

    Raises:
        InputError: unknown dataset, missing or bad ``root``, bad severity or limit.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}, expected one of {', '.join(DATASETS)}")
    if severity not in SEVERITIES:
        raise InputError(f"--severity must be an integer in 1..5, got {severity}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    if root is not None and not Path(root).exists():
        raise InputError(f"--root {root}: no such file or folder")
    subsets = _base_subsets(name, root)
    for subset in subsets:
        if limit is not None and limit < len(subset.dataset):
            subset.dataset = Subset(subset.dataset, range(limit))
        if corruptions:
            cached = _LastItemCache(subset.dataset)
            subset.dataset = Corrupted(cached, tuple(corruptions), severity=severity, seed=seed)
    return subsets
