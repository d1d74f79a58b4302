"""The DGC-Net / GLU-Net pair generator: one photo plus a homography, affine or TPS parameter row.

This is the generator behind GLU-Net's DPED-CityScape-ADE training set, which DenseMatching and the
official DiffMatch train on. The parameters come from DGC-Net's CSV files (``fname, aff/tps/homo,
t1 ... t18``) or are drawn from the same distributions (:func:`sample_warp_row`, the ``glunet``
preset of :class:`~diffmatch.data.WarpConfig`). Geometry, for an output of ``(H, W)`` and
``r = H / 240`` (the CSV parameters are expressed at DGC-Net's 240-pixel scale):

* **affine / TPS rows** (flags 0 and 1): an original larger than 1.5 × ``(480r, 640r)`` is
  centre-cropped (zero-padding a side that is too short) to that size, then resized to
  ``(480r, 640r)``. The *source* is the central 0.45 (= 0.8 × 9/16) of it in each axis, resampled
  to ``(H, W)``; the *target* samples the same image at ``T(v)``, where ``v`` are the target's
  normalised coordinates. Both use ``align_corners=True`` normalisation of the output grid
  (``v = 2x / (W - 1) - 1``), as DGC-Net's TPS grid and flow conversion do. An affine row is the
  2 × 3 matrix ``[A | t]``; a TPS row gives the 3 × 3 control points that the regular grid of the
  target maps to in the source, all x first (grid points ordered with x varying slowest), then y.
* **homography rows** (flag 2): the original is cropped likewise to 1.5 × ``(576r, 768r)`` and
  resized to ``(576r, 768r)``; the source is its central ``(H, W)`` crop. The row's 3 × 3 ``H``
  maps source to target pixels of the 768 × 576 image; scaled by ``S = diag(r, r, 1)`` it becomes
  ``S H S⁻¹``, and the target samples the full image through its inverse, then is cropped like
  the source.

In every case the **target is the warped image** and the flow lives on the target grid:
``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x. Images are sampled bilinearly with
zero padding (black where the target leaves the working image), as the reference does.

Where this differs from the reference code (GLU-Net's ``HomoAffTps_Dataset``, PyTorch >= 1.3):

* the reference builds the affine and identity grids with ``F.affine_grid``'s default
  ``align_corners=False`` but samples and converts to flow with ``align_corners=True``, and builds
  the TPS grid with ``align_corners=True``; its affine and TPS flows are therefore off by up to
  half a pixel (``u / 2`` px at normalised position ``u``). Here every grid uses the
  ``align_corners=True`` normalisation the flow conversion assumes, so the flow is exact;
* the working image is resized with ``cv2.resize`` (bilinear) rather than by ``grid_sample``;
* the validity mask is "the match lies in ``[-0.5, W - 0.5] × [-0.5, H - 0.5]``" (the project's
  frame) instead of "in ``[0, W - 1]``".

What the CSV rows contain (measured on the public test CSVs of DGC-Net and GLU-Net, which share
their parameters; DGC-Net's paper only says "random homography, affine and TPS"):
homography : affine : TPS rows = 2 : 1 : 1; homographies move the 4 corners of the central
240 × 240 crop of the 768 × 576 frame by integer offsets in ``[-80, 79]`` px, source to target
(the extreme offsets are about 20 % rarer than the central ones, presumably a rejection step of
the unpublished generator, not reproduced by :func:`sample_warp_row`); affine ``A = R(α) R(-φ) D R(φ)``
with ``α ~ U(±π/12)``, ``φ ~ U(±π/6)``, ``D ~ U(0.75, 1.25)²`` and ``t ~ U(±0.25)²``; TPS control
points are the regular 3 × 3 grid plus ``N(0, 0.2²)`` offsets.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from diffmatch.data.warps import WarpConfig, random_affine
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid, pixel_to_normalized

__all__ = [
    "CSV_KINDS",
    "PARAM_COUNTS",
    "WarpRow",
    "read_warp_csv",
    "render_pair",
    "row_mapping",
    "sample_warp_row",
]

CSV_KINDS: dict[int, str] = {0: "affine", 1: "tps", 2: "homography"}
PARAM_COUNTS: dict[str, int] = {"affine": 6, "tps": 18, "homography": 9}

_BASE = 240.0  # DGC-Net's output side: the scale the CSV parameters are written at
_AFF_TPS_FRAME = (480, 640)  # (H, W) working image of affine/TPS rows at that scale
_HOMOGRAPHY_FRAME = (576, 768)
_CROP_LIMIT = 1.5  # originals larger than this multiple of the working size are centre-cropped
_SOURCE_REGION = 0.8 * 9 / 16  # padding factor × crop factor: part of the working image the source spans


@dataclass(frozen=True)
class WarpRow:
    """One CSV row: an image path (relative to the image root), a warp kind and its parameters."""

    image: str
    kind: str
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in PARAM_COUNTS:
            raise InputError(f"warp kind must be one of {tuple(PARAM_COUNTS)}, got {self.kind!r}")
        if len(self.params) != PARAM_COUNTS[self.kind]:
            raise InputError(
                f"a {self.kind} row needs {PARAM_COUNTS[self.kind]} parameters, got {len(self.params)}"
            )


def read_warp_csv(path: str | os.PathLike) -> list[WarpRow]:
    """Read a DGC-Net/GLU-Net CSV (``fname, aff/tps/homo, t1 ... t18``, header line first).

    Raises:
        InputError: missing file, wrong header, or a malformed row (named by line number).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: warp CSV not found")
    rows: list[WarpRow] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["fname", "aff/tps/homo"]:
            raise InputError(f"{path}: expected a header starting with 'fname,aff/tps/homo', got {header}")
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            try:
                kind = CSV_KINDS[int(float(fields[1]))]
                count = PARAM_COUNTS[kind]
                params = tuple(float(v) for v in fields[2 : 2 + count])
                rows.append(WarpRow(fields[0], kind, params))
            except (IndexError, KeyError, ValueError) as err:
                raise InputError(f"{path}:{line}: malformed row ({err})") from None
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def sample_warp_row(config: WarpConfig, generator: torch.Generator) -> tuple[str, tuple[float, ...]]:
    """Draw a warp kind and its CSV-style parameters from ``config`` (``preset='glunet'``).

    Homographies move the corners of the central 240 × 240 crop of the 768 × 576 frame by whole
    pixels drawn uniformly from ``[-b, b)``, ``b = homography × 120`` (source to target); affine
    rows are :func:`~diffmatch.data.warps.random_affine`; TPS control points are the regular 3 × 3
    grid plus ``N(0, tps²)`` (or uniform) offsets.

    Args:
        config: the distributions (see :class:`~diffmatch.data.WarpConfig`, ``preset='glunet'``).
        generator: source of every random draw.

    Returns:
        ``(kind, params)`` as :func:`render_pair` takes them.
    """
    kind = config.choose(generator)
    if kind == "affine":
        matrix = random_affine(config, generator)
        return kind, tuple(matrix[:2].flatten().tolist())
    if kind == "tps":
        axis = torch.linspace(-1.0, 1.0, 3, dtype=torch.float64)
        px, py = torch.meshgrid(axis, axis, indexing="ij")  # x varies slowest, as in the CSV
        grid = torch.cat((px.flatten(), py.flatten()))
        if config.tps_distribution == "normal":
            offsets = torch.randn(18, generator=generator, dtype=torch.float64) * config.tps
        else:
            offsets = _uniform(generator, config.tps, 18)
        return kind, tuple((grid + offsets).tolist())
    if kind != "homography":
        raise InputError(f"preset 'glunet' cannot draw {kind!r} warps")
    h, w = _HOMOGRAPHY_FRAME
    x0, y0, side = (w - _BASE) / 2, (h - _BASE) / 2, _BASE
    corners = np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], np.float32)
    # Whole pixels at DGC-Net's scale, in [-b, b): the CSV's corner offsets are integers in [-80, 79].
    bound = max(1, round(config.homography * side / 2))
    offsets = torch.randint(-bound, bound, (4, 2), generator=generator)
    moved = corners + offsets.numpy().astype(np.float32)
    matrix = cv2.getPerspectiveTransform(corners, moved).astype(np.float64)
    return kind, tuple((matrix / matrix[2, 2]).flatten().tolist())


def _uniform(generator: torch.Generator, bound: float, *shape: int) -> torch.Tensor:
    return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def _tps_apply(params: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Thin-plate spline sending the regular 3 × 3 grid to the row's control points, at ``points`` ``(M, 2)``."""
    axis = np.linspace(-1.0, 1.0, 3)
    px, py = np.meshgrid(axis, axis, indexing="ij")
    ctrl = np.stack((px.ravel(), py.ravel()), axis=1)
    dest = np.stack((params[:9], params[9:]), axis=1)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-300)), 0.0)

    n = len(ctrl)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = kernel(ctrl, ctrl)
    system[:n, n:] = np.concatenate((np.ones((n, 1)), ctrl), axis=1)
    system[n:, :n] = system[:n, n:].T
    weights = np.linalg.solve(system, np.concatenate((dest, np.zeros((3, 2)))))
    basis = np.concatenate((kernel(points, ctrl), np.ones((len(points), 1)), points), axis=1)
    return basis @ weights


def _frames(kind: str, size: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """Working-image size ``(Hw, Ww)`` and scale ``r`` of a row rendered at ``size``."""
    ratio = size[0] / _BASE
    base = _HOMOGRAPHY_FRAME if kind == "homography" else _AFF_TPS_FRAME
    return (int(base[0] * ratio), int(base[1] * ratio)), ratio


def row_mapping(
    kind: str, params: tuple[float, ...], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target pixel lies in the source crop, and in the working image.

    Args:
        kind: ``affine``, ``tps`` or ``homography``.
        params: the row's parameters (:data:`PARAM_COUNTS`).
        size: output ``(H, W)``.

    Returns:
        ``(mapping, working)``: ``(1, 2, H, W)`` float64 source-crop pixel coordinates of every
        target pixel (flow = mapping - grid, ``target(x) ≈ source(x + flow(x))``) and the same
        points in pixels of the working image.
    """
    if kind not in PARAM_COUNTS or len(params) != PARAM_COUNTS[kind]:
        raise InputError(f"bad warp row: kind {kind!r} with {len(params)} parameters")
    h, w = size
    (hw, ww), ratio = _frames(kind, size)
    grid = coords_grid(1, h, w, dtype=torch.float64)
    p = np.asarray(params, dtype=np.float64)
    if kind == "homography":
        scale = np.diag([ratio, ratio, 1.0])
        inverse = np.linalg.inv(scale @ p.reshape(3, 3) @ np.linalg.inv(scale))
        offset = np.array([ww // 2 - w // 2, hw // 2 - h // 2], dtype=np.float64)
        pts = grid.flatten(2)[0].T.numpy() + offset
        mapped = np.concatenate((pts, np.ones((len(pts), 1))), axis=1) @ inverse.T
        z = np.where(np.abs(mapped[:, 2:]) < 1e-12, 1e-12, mapped[:, 2:])
        working = torch.from_numpy(mapped[:, :2] / z).T.reshape(1, 2, h, w)
        return working - torch.from_numpy(offset).view(1, 2, 1, 1), working
    span = grid.new_tensor([w - 1.0, h - 1.0]).view(1, 2, 1, 1)
    v = (2.0 * grid / span - 1.0).flatten(2)[0].T.numpy()  # (HW, 2), align_corners=True
    if kind == "affine":
        u = v @ p.reshape(2, 3)[:, :2].T + p.reshape(2, 3)[:, 2]
    else:
        u = _tps_apply(p, v)
    u = torch.from_numpy(u).T.reshape(1, 2, h, w)
    mapping = (u + 1.0) * span / 2.0
    working = (_SOURCE_REGION * u + 1.0) * grid.new_tensor([ww - 1.0, hw - 1.0]).view(1, 2, 1, 1) / 2.0
    return mapping, working


def _crop_or_pad_center(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop to ``size = (W, H)``, zero-padding (symmetrically, rounded up) a side that is too short."""
    w, h = size
    pad_w = math.ceil((w - image.shape[1]) / 2) if image.shape[1] < w else 0
    pad_h = math.ceil((h - image.shape[0]) / 2) if image.shape[0] < h else 0
    if pad_w or pad_h:
        image = cv2.copyMakeBorder(image, pad_h, pad_h, pad_w, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    x1, y1 = image.shape[1] // 2 - w // 2, image.shape[0] // 2 - h // 2
    return image[y1 : y1 + h, x1 : x1 + w]


def _working_image(image: np.ndarray, frame: tuple[int, int]) -> torch.Tensor:
    hw, ww = frame
    limit = (int(ww * _CROP_LIMIT), int(hw * _CROP_LIMIT))
    if image.shape[0] > limit[1] or image.shape[1] > limit[0]:
        image = _crop_or_pad_center(image, limit)
    resized = cv2.resize(image, (ww, hw), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float() / 255.0


def _sample(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    grid = pixel_to_normalized(coords.float(), tuple(image.shape[-2:])).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def render_pair(
    image: np.ndarray, kind: str, params: tuple[float, ...], size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Render one pair of the reference generator from an original photo.

    Args:
        image: ``(H0, W0, 3)`` uint8 RGB original.
        kind: ``affine``, ``tps`` or ``homography``.
        params: the row's parameters (see the module docstring).
        size: output ``(H, W)`` of both images (the reference renders 520 × 520).

    Returns:
        ``source``, ``target`` ``(3, H, W)`` float32 in ``[0, 1]``; ``flow`` ``(2, H, W)`` float32 on
        the target grid, ``target(x) ≈ source(x + flow(x))`` in pixels; ``mask`` ``(H, W)`` bool,
        where ``x + flow(x)`` lies inside the source frame.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image must be an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    h, w = size
    frame, _ = _frames(kind, size)
    if kind == "homography" and w > frame[1]:
        raise InputError(f"size {size} is too wide for the homography working image {frame}")
    mapping, working = row_mapping(kind, params, size)
    work = _working_image(image, frame)
    if kind == "homography":
        oy, ox = frame[0] // 2 - h // 2, frame[1] // 2 - w // 2
        source = work[0, :, oy : oy + h, ox : ox + w]
    else:
        _, source_working = row_mapping("affine", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), size)
        source = _sample(work, source_working)
    target = _sample(work, working)
    grid = coords_grid(1, h, w, dtype=torch.float64)
    x, y = mapping[0, 0], mapping[0, 1]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)  # the source frame
    return {
        "source": source.clamp(0.0, 1.0).contiguous(),
        "target": target.clamp(0.0, 1.0).contiguous(),
        "flow": (mapping - grid)[0].float(),
        "mask": inside,
    }
