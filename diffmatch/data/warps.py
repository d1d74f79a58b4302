"""Random dense warps for synthetic training pairs (the DenseMatching / GLU-Net generator).

Every sampler returns a *mapping*: a ``(1, 2, H, W)`` tensor holding, for each pixel ``x`` of the
target grid, the pixel coordinates of its match in the source image. The flow of the project
convention is ``mapping - coords_grid`` (``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x,
pixel centres at integers, ``align_corners=False``).

Parameters follow DenseMatching: transformations act on normalised coordinates in ``[-1, 1]``
(``u = (2x + 1) / W - 1``), so a translation of 0.25 moves by an eighth of the image width, and
for non-square images the affine rotation acts on the normalised (stretched) frame, as there.
All randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import kornia
import torch

from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid, pixel_to_normalized

__all__ = [
    "WARP_PRESETS",
    "WARP_TYPES",
    "WarpConfig",
    "sample_mapping",
    "sample_elastic",
    "normalized_to_pixel",
    "random_affine",
]

WARP_TYPES: tuple[str, ...] = ("homography", "affine", "tps", "afftps")
WARP_PRESETS: tuple[str, ...] = ("densematching", "glunet")

# Ranges each preset gives to the fields left as None (normalised units, radians).
# densematching: the on-the-fly generator of DenseMatching (GLU-Net-GOCor*, WarpC).
# glunet: the distributions behind DGC-Net's homo_aff_tps CSV rows, which GLU-Net reuses for
# DPED-CityScape-ADE (measured on the public test CSV, see diffmatch.data.glunet_warps):
# homography corners of the crop move by U(±1/3 of its side), affine R(α)R(-φ)D R(φ) with
# α ~ U(±π/12), φ ~ U(±π/6), D ~ U(0.75, 1.25)², t ~ U(±0.25), TPS control points N(0, 0.2²),
# and types homography : affine : TPS = 2 : 1 : 1.
_PRESETS: dict[str, dict[str, object]] = {
    "densematching": {
        "translation": 0.25,
        "scale": 0.45,
        "rotation": math.pi / 12,
        "scale_angle": math.pi / 12,
        "homography": 0.5,
        "tps": 0.5,
        "afftps": 0.15,
        "tps_distribution": "uniform",
        "types": WARP_TYPES,
        "weights": None,
    },
    "glunet": {
        "translation": 0.25,
        "scale": 0.25,
        "rotation": math.pi / 12,
        "scale_angle": math.pi / 6,
        "homography": 2.0 / 3.0,
        "tps": 0.2,
        "afftps": 0.15,
        "tps_distribution": "normal",
        "types": ("homography", "affine", "tps"),
        "weights": (2.0, 1.0, 1.0),
    },
}


@dataclass(frozen=True)
class WarpConfig:
    """Distributions of the random warps (normalised units: the image spans ``[-1, 1]``).

    Every field left as ``None`` takes the value of ``preset``; set a field to override it.

    Args:
        preset: ``densematching`` (default; DenseMatching's on-the-fly generator) or ``glunet``
            (the distributions of DGC-Net's CSV rows, i.e. of GLU-Net's DPED-CityScape-ADE, rendered
            with that generator's crops by :mod:`diffmatch.data.glunet_warps`).
        translation: affine translation range ``t``: uniform in ``[-t, t]``.
        scale: affine scale range ``s``: each axis scale is uniform in ``[1 - s, 1 + s]``.
        rotation: range of the affine rotation angle ``α`` (radians).
        scale_angle: range of ``φ``, the direction of the anisotropic scaling (radians).
        homography: displacement range of the four corners, ``t_hom``; for ``glunet`` the corners of
            the crop move from source to target (the target-to-source mapping is the inverse).
        tps: TPS control-point displacement: range ``t_tps`` (uniform) or standard deviation (normal).
        afftps: TPS control-point range when composed with an affine warp.
        tps_grid: the TPS control points form a ``tps_grid × tps_grid`` regular grid.
        tps_distribution: ``uniform`` or ``normal`` control-point displacements.
        types: warp types to draw from, a subset of :data:`WARP_TYPES`.
        weights: relative probability of each entry of ``types``; uniform when ``types`` is given
            without weights.
        elastic_probability: chance of adding local elastic perturbations to a warp.
        small_motion_probability: chance of shrinking a warp's displacement towards the identity,
            ``mapping = x + s (mapping(x) - x)`` with ``s`` uniform in ``small_motion_range``. The
            DenseMatching ranges rarely give near-identity pairs (small motion, stereo, an image
            matched with itself); this mixes them in. ``0`` (default) leaves the random stream of
            every existing dataset and benchmark unchanged.
        small_motion_range: ``(lo, hi)`` range of the shrink factor ``s``, within ``[0, 1]``.
    """

    preset: Literal["densematching", "glunet"] = "densematching"
    translation: float | None = None
    scale: float | None = None
    rotation: float | None = None
    scale_angle: float | None = None
    homography: float | None = None
    tps: float | None = None
    afftps: float | None = None
    tps_grid: int = 3
    tps_distribution: Literal["uniform", "normal"] | None = None
    types: tuple[str, ...] | None = None
    weights: tuple[float, ...] | None = None
    elastic_probability: float = 0.0
    small_motion_probability: float = 0.0
    small_motion_range: tuple[float, float] = (0.0, 0.3)

    def __post_init__(self) -> None:
        if self.preset not in _PRESETS:
            raise InputError(f"preset must be one of {WARP_PRESETS}, got {self.preset!r}")
        defaults = _PRESETS[self.preset]
        # The preset's type weights belong to its types: a config naming its own types without
        # weights draws them uniformly.
        if self.types is None and self.weights is None:
            object.__setattr__(self, "weights", defaults["weights"])
        for name, value in defaults.items():
            if name != "weights" and getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "types", tuple(self.types))
        if not self.types or any(kind not in WARP_TYPES for kind in self.types):
            raise InputError(f"types must be a non-empty subset of {WARP_TYPES}, got {self.types}")
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
            if len(self.weights) != len(self.types) or min(self.weights) < 0 or sum(self.weights) <= 0:
                raise InputError(
                    f"weights must be {len(self.types)} non-negative numbers, got {self.weights}"
                )
        if not 0.0 <= self.scale < 1.0:
            raise InputError(f"scale must be in [0, 1), got {self.scale}")
        if self.tps_grid < 2:
            raise InputError(f"tps_grid must be >= 2, got {self.tps_grid}")
        if self.tps_distribution not in ("uniform", "normal"):
            raise InputError(f"tps_distribution must be 'uniform' or 'normal', got {self.tps_distribution!r}")
        if not 0.0 <= self.elastic_probability <= 1.0:
            raise InputError(f"elastic_probability must be in [0, 1], got {self.elastic_probability}")
        if not 0.0 <= self.small_motion_probability <= 1.0:
            raise InputError(f"small_motion_probability must be in [0, 1], got {self.small_motion_probability}")
        object.__setattr__(self, "small_motion_range", tuple(float(v) for v in self.small_motion_range))
        if len(self.small_motion_range) != 2 or not 0.0 <= self.small_motion_range[0] <= self.small_motion_range[1] <= 1.0:
            raise InputError(f"small_motion_range must be (lo, hi) with 0 <= lo <= hi <= 1, got {self.small_motion_range}")
        if self.preset == "glunet" and (
            "afftps" in self.types
            or self.elastic_probability > 0
            or self.small_motion_probability > 0
            or self.tps_grid != 3
        ):
            raise InputError(
                "preset 'glunet' supports types homography/affine/tps, tps_grid 3 and no elastic or small-motion "
                f"warps, got types={self.types}, tps_grid={self.tps_grid}, "
                f"elastic_probability={self.elastic_probability}, "
                f"small_motion_probability={self.small_motion_probability}"
            )

    def shrink(self, mapping: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """With ``small_motion_probability``, pull a ``(B, 2, H, W)`` pixel mapping towards the identity.

        Draws nothing from ``generator`` when the probability is zero, so existing streams are kept.
        """
        if self.small_motion_probability <= 0:
            return mapping
        coin = float(torch.rand((), generator=generator))
        lo, hi = self.small_motion_range
        factor = lo + (hi - lo) * float(torch.rand((), generator=generator))
        if coin >= self.small_motion_probability:
            return mapping
        b, _, h, w = mapping.shape
        grid = coords_grid(b, h, w, mapping.device, mapping.dtype)
        return grid + factor * (mapping - grid)

    def choose(self, generator: torch.Generator) -> str:
        """Draw a warp type according to ``weights``."""
        weights = torch.tensor(self.weights or [1.0] * len(self.types), dtype=torch.float64)
        return self.types[int(torch.multinomial(weights, 1, generator=generator))]


def _uniform(generator: torch.Generator, bound: float, *shape: int) -> torch.Tensor:
    return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def normalized_to_pixel(coords: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`diffmatch.geometry.pixel_to_normalized` for ``(B, 2, H, W)`` coordinates."""
    h, w = size
    scale = coords.new_tensor([w / 2.0, h / 2.0]).view(1, 2, 1, 1)
    return (coords + 1.0) * scale - 0.5


def _angle_ranges(config: WarpConfig) -> torch.Tensor:
    """``(2,)`` float64 ranges of the affine angles ``α`` (rotation) and ``φ`` (scaling direction)."""
    return torch.tensor([config.rotation, config.scale_angle], dtype=torch.float64)


def random_affine(config: WarpConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw a ``(3, 3)`` float64 affine ``R(α) R(-φ) D R(φ)`` plus translation (normalised units).

    ``α``, ``φ``, the two scales of ``D`` and the translation are uniform in the ranges of ``config``
    (DenseMatching's and DGC-Net's parameterisation).
    """
    alpha, phi = _uniform(generator, 1.0, 2) * _angle_ranges(config)
    lam = 1.0 + _uniform(generator, config.scale, 2)
    t = _uniform(generator, config.translation, 2)

    def rot(a: torch.Tensor) -> torch.Tensor:
        c, s = torch.cos(a), torch.sin(a)
        return torch.stack((torch.stack((c, -s)), torch.stack((s, c))))

    matrix = torch.eye(3, dtype=torch.float64)
    matrix[:2, :2] = rot(alpha) @ rot(phi).T @ torch.diag(lam) @ rot(phi)
    matrix[:2, 2] = t
    return matrix


def _homography_matrix(config: WarpConfig, generator: torch.Generator) -> torch.Tensor:
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    moved = corners + _uniform(generator, config.homography, 4, 2)
    return kornia.geometry.transform.get_perspective_transform(corners[None], moved[None])[0]


def _tps(
    points: torch.Tensor, grid: int, bound: float, generator: torch.Generator, distribution: str = "uniform"
) -> torch.Tensor:
    """Thin-plate spline through a perturbed regular grid of control points, evaluated at ``points``.

    kornia's ``get_tps_transform`` centres its kernels on the destination points, which is not the
    classic interpolant, so the small ``(N + 3)`` system is solved here.

    Args:
        points: ``(M, 2)`` normalised target coordinates.

    Returns:
        ``(M, 2)`` normalised source coordinates.
    """
    axis = torch.linspace(-1.0, 1.0, grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    ctrl = torch.stack((xs.flatten(), ys.flatten()), dim=1)  # (N, 2)
    if distribution == "normal":
        moved = ctrl + torch.randn(*ctrl.shape, generator=generator, dtype=torch.float64) * bound
    else:
        moved = ctrl + _uniform(generator, bound, *ctrl.shape)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r2 = torch.cdist(a, b).square()
        return torch.where(r2 > 0, r2 * torch.log(r2.clamp_min(1e-12)), torch.zeros_like(r2))

    n = ctrl.shape[0]
    poly = torch.cat((torch.ones(n, 1, dtype=ctrl.dtype), ctrl), dim=1)
    system = torch.zeros(n + 3, n + 3, dtype=ctrl.dtype)
    system[:n, :n] = kernel(ctrl, ctrl)
    system[:n, n:] = poly
    system[n:, :n] = poly.T
    rhs = torch.cat((moved, torch.zeros(3, 2, dtype=ctrl.dtype)))
    weights = torch.linalg.solve(system, rhs)  # (N + 3, 2)
    pts = points.to(torch.float64)
    basis = torch.cat((kernel(pts, ctrl), torch.ones(len(pts), 1, dtype=pts.dtype), pts), dim=1)
    return basis @ weights


def sample_mapping(
    kind: str, size: tuple[int, int], config: WarpConfig, generator: torch.Generator
) -> torch.Tensor:
    """Draw a random warp and return its dense mapping.

    Args:
        kind: one of :data:`WARP_TYPES`.
        size: ``(H, W)`` of both the target grid and the source frame.
        config: parameter ranges.
        generator: source of randomness.

    Returns:
        ``(1, 2, H, W)`` float32 source pixel coordinates of every target pixel; the flow is this
        minus :func:`diffmatch.geometry.coords_grid` (``target(x) ≈ source(x + flow(x))``).
    """
    if kind not in WARP_TYPES:
        raise ValueError(f"unknown warp type {kind!r}, expected one of {WARP_TYPES}")
    h, w = size
    grid = pixel_to_normalized(coords_grid(1, h, w, dtype=torch.float64), size)  # (1, 2, H, W)
    points = grid.flatten(2)[0].T  # (HW, 2)
    if kind == "homography":
        matrix = _homography_matrix(config, generator)
        if config.preset == "glunet":
            # DGC-Net moves the corners from source to target; the mapping goes the other way.
            matrix = torch.linalg.inv(matrix)
        mapped = kornia.geometry.linalg.transform_points(matrix[None], points[None])[0]
    elif kind == "affine":
        mapped = kornia.geometry.linalg.transform_points(
            random_affine(config, generator)[None], points[None]
        )[0]
    elif kind == "tps":
        mapped = _tps(points, config.tps_grid, config.tps, generator, config.tps_distribution)
    else:  # afftps: a mild TPS followed by an affine warp
        mapped = _tps(points, config.tps_grid, config.afftps, generator)
        mapped = kornia.geometry.linalg.transform_points(
            random_affine(config, generator)[None], mapped[None]
        )[0]
    normalized = mapped.T.reshape(1, 2, h, w)
    return normalized_to_pixel(normalized, size).float()


def sample_elastic(
    size: tuple[int, int],
    generator: torch.Generator,
    num_regions: tuple[int, int] = (3, 10),
    region_sigma: tuple[float, float] = (0.03, 0.1),
    smoothness: tuple[float, float] = (0.02, 0.05),
    magnitude: tuple[float, float] = (0.01, 0.03),
) -> torch.Tensor:
    """Local elastic perturbations: smooth random displacements confined to a few Gaussian blobs.

    As in DenseMatching's ``AddElasticTransforms``, a dense elastic field (white noise smoothed by a
    Gaussian) is multiplied by a mask made of blobs at random places, each scaled by 2 and clipped
    to 1 so that it has a flat core and a smooth rim. Lengths are fractions of ``max(H, W)``.

    Args:
        size: ``(H, W)``.
        generator: source of randomness.
        num_regions: inclusive range of the number of blobs.
        region_sigma: range of each blob's standard deviation.
        smoothness: range of the standard deviation of the smoothing Gaussian.
        magnitude: range of the peak displacement.

    Returns:
        ``(1, 2, H, W)`` float32 displacement in pixels, to add to a mapping.
    """
    h, w = size
    side = float(max(h, w))

    def draw(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    sigma = max(draw(*smoothness) * side, 0.5)
    ksize = 2 * math.ceil(3 * sigma) + 1
    noise = torch.rand(1, 2, h, w, generator=generator) * 2 - 1
    field = kornia.filters.gaussian_blur2d(noise, (ksize, ksize), (sigma, sigma), border_type="reflect")
    field = field / field.abs().amax().clamp_min(1e-8) * draw(*magnitude) * side

    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    count = int(torch.randint(num_regions[0], num_regions[1] + 1, (), generator=generator))
    mask = torch.zeros(h, w)
    for _ in range(count):
        cx, cy = draw(0, w - 1), draw(0, h - 1)
        s = draw(*region_sigma) * side
        mask += (2.0 * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s**2))).clamp(max=1.0)
    return field * mask.clamp(max=1.0)
