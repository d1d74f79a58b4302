"""Evaluation datasets: which pairs a run visits, and the groups each pair is reported in.

A run is a list of :class:`EvalSubset`: a pair dataset plus the tags its pairs share (the
synthetic difficulty level, the scene benchmark's level, the ETH3D frame interval, the HPatches
pair ``1_k``, the MegaDepth-1500 / ScanNet-1500 scene). With corruptions,
each subset is wrapped in :class:`~diffmatch.data.Corrupted`, so every pair is seen under every
listed corruption and its item carries a ``corruption`` tag too.

HPatches and ETH3D are evaluated under a *protocol* (:data:`PROTOCOLS`): ``paper`` is the DiffMatch
paper's Table 2 (HPatches at the original resolution, the source resized to the target's size, see
:class:`SourceAtTargetSize`; ETH3D's AEPE per rate averaged over scenes, see
:func:`diffmatch.evaluation.report.summarize_records`), ``240`` the DGC-Net/GLU-Net 240×240 HPatches
and ETH3D's AEPE averaged over all images of a rate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from diffmatch.data import (
    BENCHMARK_LEVELS,
    CORRUPTIONS,
    ETH3D,
    ETH3D_RATES,
    SCENE_LEVELS,
    SEVERITIES,
    Corrupted,
    GenericPairs,
    HPatches,
    MegaDepth1500,
    ScanNet1500,
    SceneBenchmark,
    SyntheticBenchmark,
    bundled_photos,
    inside_frame,
)
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid, homography_to_flow

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "PAPER_SAMPLES",
    "EvalSubset",
    "SourceAtTargetSize",
    "default_protocol",
    "parse_corruptions",
    "build_subsets",
]

DATASETS: tuple[str, ...] = ("synthetic", "scenes", "generic", "hpatches", "eth3d", "megadepth1500", "scannet1500")
# The scene benchmark's pairs per level (its default size), and the size of its views.
SCENE_PAIRS = 30
SCENE_SIZE = (384, 512)
PROTOCOLS: tuple[str, ...] = ("paper", "240")
# Hypotheses N of the paper (App. A): 3 on HPatches, 4 on ETH3D.
PAPER_SAMPLES: dict[str, int] = {"hpatches": 3, "eth3d": 4}
_NEEDS_ROOT = {
    "generic": "the pair list file",
    "hpatches": "the hpatches-sequences-release folder",
    "eth3d": "the ETH3D folder",
    "megadepth1500": "the megadepth_test_1500 folder with LoFTR's index files",
    "scannet1500": "the scannet_test_1500 folder with LoFTR's test.npz and intrinsics.npz",
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


def default_protocol(dataset: str, protocol: str | None) -> str | None:
    """The protocol a run uses: ``paper`` by default for hpatches and eth3d, none for the others.

    Raises:
        InputError: an unknown protocol, or one given for a dataset without protocols.
    """
    if dataset not in PAPER_SAMPLES:
        if protocol is not None:
            raise InputError(f"--protocol applies to hpatches and eth3d, not to {dataset}")
        return None
    if protocol is None:
        return "paper"
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}, expected one of {', '.join(PROTOCOLS)}")
    return protocol


def _pixel_scale(old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """Homogeneous map of pixel coordinates under a resize, pixel centres kept: ``x' = (x + ½) s - ½``."""
    sy, sx = new[0] / old[0], new[1] / old[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


class SourceAtTargetSize(Dataset):
    """HPatches at the original resolution, the paper's protocol: the source is resized to the target's size.

    The official DiffMatch evaluation (``HPatchesDataset(use_original_size=True)``) resizes image 1
    to image k's size with ``cv2.resize`` (bilinear) and scores the flow at the target's original
    size; so does this wrapper, around a :class:`~diffmatch.data.HPatches` built with ``size=None``.
    The homography follows the resize exactly (pixel centres kept; the official code scales by
    ``w_t / w_s`` alone, which differs by under half a pixel where the sizes differ).

    Items are the wrapped dataset's, with ``source`` at the target's size and ``flow``, ``mask``
    and ``homography`` recomputed: flow on the target grid, ``target(x) ≈ source(x + flow(x))``,
    in pixels of the resized source, ``(2, Ht, Wt)``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        source, target = item["source"], item["target"]
        old, new = tuple(source.shape[-2:]), tuple(target.shape[-2:])
        if old == new:
            return item
        image = cv2.resize(source.permute(1, 2, 0).numpy(), (new[1], new[0]), interpolation=cv2.INTER_LINEAR)
        homography = item["homography"].numpy() @ np.linalg.inv(_pixel_scale(old, new))
        flow = homography_to_flow(torch.linalg.inv(torch.from_numpy(homography)), new)
        mask = inside_frame(flow + coords_grid(1, *new, dtype=flow.dtype), new)[0]
        item.update(
            source=torch.from_numpy(image).permute(2, 0, 1).contiguous().clamp(0, 1),
            flow=flow[0].float(),
            mask=mask,
            homography=torch.from_numpy(homography),
        )
        return item


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


def _base_subsets(name: str, root: str | os.PathLike | None, protocol: str | None) -> list[EvalSubset]:
    if name == "synthetic":
        image_dir = bundled_photos("val") if root is None else Path(root)
        return [
            EvalSubset(SyntheticBenchmark(image_dir, level=level), {"level": level})
            for level in BENCHMARK_LEVELS
        ]
    if name == "scenes":
        image_dir = bundled_photos("val") if root is None else Path(root)
        return [
            EvalSubset(SceneBenchmark(image_dir, level=level, size=SCENE_SIZE, num_pairs=SCENE_PAIRS), {"level": level})
            for level in SCENE_LEVELS
        ]
    if root is None:
        raise InputError(f"--dataset {name} needs --root ({_NEEDS_ROOT[name]})")
    if name == "megadepth1500":
        return [EvalSubset(MegaDepth1500(root))]
    if name == "scannet1500":
        return [EvalSubset(ScanNet1500(root))]
    if name == "generic":
        return [EvalSubset(GenericPairs(root))]
    if name == "hpatches":
        if protocol == "240":
            return [EvalSubset(HPatches(root, pairs=(k,)), {"pair": f"1_{k}"}) for k in range(2, 7)]
        return [
            EvalSubset(SourceAtTargetSize(HPatches(root, size=None, pairs=(k,))), {"pair": f"1_{k}"})
            for k in range(2, 7)
        ]
    return [EvalSubset(ETH3D(root, rates=(rate,)), {"rate": f"rate_{rate}"}) for rate in ETH3D_RATES]


def build_subsets(
    name: str,
    root: str | os.PathLike | None = None,
    corruptions: Sequence[str] = (),
    severity: int = 5,
    limit: int | None = None,
    seed: int = 0,
    protocol: str | None = None,
) -> list[EvalSubset]:
    """The subsets of a dataset to evaluate.

    Args:
        name: one of :data:`DATASETS`.
        root: ``generic``: the pair list; ``hpatches``/``eth3d``/``megadepth1500``/``scannet1500``: the
            dataset folder; ``synthetic``/``scenes``: an optional photo folder instead of the bundled
            held-out photos ``bundled_photos("val")``.
        corruptions: ImageNet-C names (empty: clean images).
        severity: corruption severity 1..5.
        limit: at most this many pairs of each subset (level, rate or ``1_k``), before corruption.
        seed: seed of the corruption noise (the synthetic benchmark itself is fixed).
        protocol: ``paper`` or ``240`` for hpatches and eth3d (``None``: ``paper``); see the module docstring.

    Raises:
        InputError: unknown dataset, missing or bad ``root``, bad severity, limit or protocol.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}, expected one of {', '.join(DATASETS)}")
    if severity not in SEVERITIES:
        raise InputError(f"--severity must be an integer in 1..5, got {severity}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    if root is not None and not Path(root).exists():
        raise InputError(f"--root {root}: no such file or folder")
    protocol = default_protocol(name, protocol)
    subsets = _base_subsets(name, root, protocol)
    for subset in subsets:
        if limit is not None and limit < len(subset.dataset):
            subset.dataset = Subset(subset.dataset, range(limit))
        if corruptions:
            cached = _LastItemCache(subset.dataset)
            subset.dataset = Corrupted(cached, tuple(corruptions), severity=severity, seed=seed)
    return subsets
