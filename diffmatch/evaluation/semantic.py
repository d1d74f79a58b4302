"""Semantic keypoint transfer benchmarks: SPair-71k and PF-Pascal loaders and PCK@α.

A prediction is correct when the transferred source keypoint lies within ``α · L`` pixels of the
annotated target keypoint, with ``L`` either the larger side of the target bounding box (``bbox``,
SPair-71k's protocol) or the larger side of the target image (``img``, PF-Pascal's). Keypoints are
``(x, y)`` pixel coordinates of the original images (pixel centres at integers).

Layouts (as distributed, and as read by DenseMatching and CATs):

* SPair-71k, ``root = .../SPair-71k``: ``Layout/large/<split>.txt`` lists pair names (optional; else
  every json is used), ``PairAnnotation/<split>/<name>.json`` with ``src_imname, trg_imname,
  src_kps, trg_kps, src_bndbox, trg_bndbox, category``, images in ``JPEGImages/<category>/``.
  Splits: ``trn``, ``val``, ``test``.
* PF-Pascal, ``root = .../PF-dataset-PASCAL``: ``<split>_pairs_pf_pascal.csv`` (or
  ``<split>_pairs.csv``) with columns ``source_image, target_image, class[, flip]`` (``class`` is
  1-based in the 20 VOC classes), images in ``JPEGImages/``, annotations in
  ``Annotations/<class>/<image>.mat`` holding ``kps`` (``(K, 2)``, NaN rows = absent) and ``bbox``
  (``x1, y1, x2, y2``). Splits: ``trn``, ``val``, ``test``.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from diffmatch.errors import InputError

__all__ = [
    "KeypointPair",
    "KeypointTransfer",
    "SPairDataset",
    "PFPascalDataset",
    "PASCAL_CLASSES",
    "pck",
    "evaluate_pck",
]

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass(frozen=True)
class KeypointPair:
    """One annotated image pair.

    Attributes:
        source: path of the source image.
        target: path of the target image.
        source_kps: ``(K, 2)`` float32 ``(x, y)`` source keypoints in pixels.
        target_kps: ``(K, 2)`` float32 matching target keypoints.
        source_bbox: ``(4,)`` float32 ``x1, y1, x2, y2`` object box in the source.
        target_bbox: ``(4,)`` float32 box in the target.
        category: object class.
    """

    source: Path
    target: Path
    source_kps: np.ndarray
    target_kps: np.ndarray
    source_bbox: np.ndarray
    target_bbox: np.ndarray
    category: str


class KeypointTransfer(Protocol):
    """Anything with ``transfer_keypoints`` (e.g. :class:`~diffmatch.models.zeroshot.ZeroShotMatcher`)."""

    def transfer_keypoints(self, source: Any, target: Any, keypoints_source: torch.Tensor) -> torch.Tensor: ...


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    return path


def _keypoints(value: Any, name: str, where: Path) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32).reshape(-1, 2) if np.size(value) else np.zeros((0, 2), np.float32)
    if array.ndim != 2 or array.shape[1] != 2:
        raise InputError(f"{where}: {name} must be (K, 2), got shape {np.shape(value)}")
    return array


class SPairDataset(Sequence[KeypointPair]):
    """SPair-71k pairs (see the module docstring for the layout).

    Args:
        root: the ``SPair-71k`` folder.
        split: ``trn``, ``val`` or ``test``.
        categories: keep only these classes; ``None`` keeps all.

    Raises:
        InputError: missing folders or files, or malformed annotations.
    """

    def __init__(self, root: str | os.PathLike, split: str = "test", categories: Sequence[str] | None = None):
        self.root = Path(root)
        if split not in ("trn", "val", "test"):
            raise ValueError(f"SPair-71k split must be 'trn', 'val' or 'test', got {split!r}")
        ann_dir = _require(self.root / "PairAnnotation" / split, "SPair-71k annotation folder")
        layout = self.root / "Layout" / "large" / f"{split}.txt"
        if layout.is_file():
            names = [line.strip() for line in layout.read_text().splitlines() if line.strip()]
            files = [_require(ann_dir / f"{name}.json", "SPair-71k pair annotation") for name in names]
        else:
            files = sorted(ann_dir.glob("*.json"))
        if not files:
            raise InputError(f"{ann_dir}: no pair annotations (*.json)")
        self.pairs = [p for p in (self._read(f) for f in files) if categories is None or p.category in categories]

    def _read(self, path: Path) -> KeypointPair:
        try:
            ann = json.loads(path.read_text())
            category = str(ann["category"])
            images = self.root / "JPEGImages" / category
            pair = KeypointPair(
                source=images / ann["src_imname"],
                target=images / ann["trg_imname"],
                source_kps=_keypoints(ann["src_kps"], "src_kps", path),
                target_kps=_keypoints(ann["trg_kps"], "trg_kps", path),
                source_bbox=np.asarray(ann["src_bndbox"], np.float32).reshape(4),
                target_bbox=np.asarray(ann["trg_bndbox"], np.float32).reshape(4),
                category=category,
            )
        except (KeyError, ValueError, TypeError) as err:
            raise InputError(f"{path}: malformed SPair-71k annotation ({type(err).__name__}: {err})") from None
        if pair.source_kps.shape != pair.target_kps.shape:
            raise InputError(f"{path}: {len(pair.source_kps)} source but {len(pair.target_kps)} target keypoints")
        return pair

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> KeypointPair:  # type: ignore[override]
        return self.pairs[index]


class PFPascalDataset(Sequence[KeypointPair]):
    """PF-Pascal pairs (see the module docstring for the layout); keypoints absent in either image are dropped.

    Args:
        root: the ``PF-dataset-PASCAL`` folder.
        split: ``trn``, ``val`` or ``test``.

    Raises:
        InputError: missing folders or files, or malformed annotations.
    """

    def __init__(self, root: str | os.PathLike, split: str = "test"):
        from scipy.io import loadmat

        self._loadmat = loadmat
        self.root = Path(root)
        if split not in ("trn", "val", "test"):
            raise ValueError(f"PF-Pascal split must be 'trn', 'val' or 'test', got {split!r}")
        candidates = [self.root / f"{split}_pairs_pf_pascal.csv", self.root / f"{split}_pairs.csv"]
        table = next((c for c in candidates if c.is_file()), None)
        if table is None:
            raise InputError(f"{candidates[0]}: PF-Pascal pair list not found (nor {candidates[1].name})")
        with table.open(newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows or len(rows[0]) < 3:
            raise InputError(f"{table}: expected columns source_image,target_image,class[,flip]")
        self.pairs = [self._read(row, table, n) for n, row in enumerate(rows[1:], start=2) if row]

    def _annotation(self, image: str, category: str) -> tuple[np.ndarray, np.ndarray]:
        path = _require(self.root / "Annotations" / category / f"{Path(image).stem}.mat", "PF-Pascal annotation")
        try:
            mat = self._loadmat(str(path))
            kps = np.asarray(mat["kps"], np.float32).reshape(-1, 2)
            bbox = np.asarray(mat["bbox"], np.float32).reshape(-1)[:4]
        except (KeyError, ValueError, OSError) as err:
            raise InputError(f"{path}: malformed PF-Pascal annotation ({type(err).__name__}: {err})") from None
        return kps, bbox

    def _read(self, row: list[str], table: Path, line: int) -> KeypointPair:
        try:
            class_id = int(float(row[2]))
        except ValueError:
            raise InputError(f"{table}:{line}: class must be an integer in 1..20, got {row[2]!r}") from None
        if not 1 <= class_id <= len(PASCAL_CLASSES):
            raise InputError(f"{table}:{line}: class must be an integer in 1..20, got {row[2]!r}")
        category = PASCAL_CLASSES[class_id - 1]
        src_kps, src_box = self._annotation(row[0], category)
        trg_kps, trg_box = self._annotation(row[1], category)
        if src_kps.shape != trg_kps.shape:
            raise InputError(f"{table}:{line}: {len(src_kps)} source but {len(trg_kps)} target keypoint rows")
        keep = ~(np.isnan(src_kps).any(axis=1) | np.isnan(trg_kps).any(axis=1))
        images = self.root / "JPEGImages"
        return KeypointPair(
            source=images / Path(row[0]).name,  # the csv paths carry a dataset prefix; keep the file name
            target=images / Path(row[1]).name,
            source_kps=src_kps[keep],
            target_kps=trg_kps[keep],
            source_bbox=src_box,
            target_bbox=trg_box,
            category=category,
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> KeypointPair:  # type: ignore[override]
        return self.pairs[index]


def pck(predicted: torch.Tensor, target: torch.Tensor, threshold: float | torch.Tensor, alpha: float) -> torch.Tensor:
    """Which predicted keypoints are correct at PCK@α.

    Args:
        predicted: ``(K, 2)`` predicted ``(x, y)`` in pixels.
        target: ``(K, 2)`` ground truth in pixels.
        threshold: the reference length ``L`` in pixels (bbox or image side).
        alpha: the fraction ``α`` of ``L``.

    Returns:
        ``(K,)`` bool: ``‖predicted − target‖₂ <= α · L``.
    """
    if predicted.shape != target.shape or predicted.shape[-1] != 2:
        raise ValueError(f"predicted and target must both be (K, 2), got {tuple(predicted.shape)}, {tuple(target.shape)}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    return (predicted - target).norm(dim=-1) <= alpha * threshold


def evaluate_pck(
    matcher: KeypointTransfer,
    dataset: Sequence[KeypointPair],
    alphas: Sequence[float] = (0.05, 0.1, 0.15),
    limit: int | None = None,
) -> dict[str, Any]:
    """Transfer every pair's source keypoints to the target and score them with PCK@α.

    Args:
        matcher: has ``transfer_keypoints(source_path, target_path, (1, K, 2)) -> (1, K, 2)``.
        dataset: a sequence of :class:`KeypointPair`, e.g. :class:`SPairDataset`, :class:`PFPascalDataset`.
        alphas: thresholds ``α``.
        limit: evaluate only the first ``limit`` pairs.

    Returns:
        ``{"pck_bbox@α": ..., "pck_img@α": ..., "num_pairs", "num_keypoints", "per_category": {category:
        {"pck_bbox@α": ..., "pck_img@α": ..., "num_keypoints"}}}``. PCK values are fractions in
        ``[0, 1]`` averaged over all keypoints (per category: over that category's keypoints).
        ``bbox`` uses ``max(w, h)`` of the target box, ``img`` ``max(H, W)`` of the target image.
    """
    if not alphas:
        raise ValueError("alphas must not be empty")
    pairs = list(dataset) if limit is None else list(dataset)[:limit]
    if not pairs:
        raise ValueError("dataset has no pairs to evaluate")
    keys = [f"pck_{kind}@{a:g}" for kind in ("bbox", "img") for a in alphas]
    correct: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(keys, 0.0))
    counts: dict[str, int] = defaultdict(int)
    for pair in pairs:
        if len(pair.source_kps) == 0:
            continue
        with Image.open(_require(pair.target, "target image")) as image:
            width, height = image.size
        kps = torch.from_numpy(pair.source_kps).unsqueeze(0)
        predicted = matcher.transfer_keypoints(pair.source, pair.target, kps)[0].float().cpu()
        truth = torch.from_numpy(pair.target_kps)
        box = pair.target_bbox
        lengths = {"bbox": float(max(box[2] - box[0], box[3] - box[1])), "img": float(max(width, height))}
        for kind, length in lengths.items():
            for a in alphas:
                correct[pair.category][f"pck_{kind}@{a:g}"] += float(pck(predicted, truth, length, a).sum())
        counts[pair.category] += len(truth)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("dataset has no keypoints to evaluate")
    result: dict[str, Any] = {k: sum(c[k] for c in correct.values()) / total for k in keys}
    result["num_pairs"] = len(pairs)
    result["num_keypoints"] = total
    result["per_category"] = {
        cat: {**{k: correct[cat][k] / counts[cat] for k in keys}, "num_keypoints": counts[cat]}
        for cat in sorted(counts)
    }
    return result
