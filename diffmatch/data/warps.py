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

import kornia
import torch

from diffmatch.geometry import coords_grid, pixel_to_normalized

__all__ = ["WARP_TYPES", "WarpConfig", "sample_mapping", "sample_elastic", "normalized_to_pixel"]

WARP_TYPES: tuple[str, ...] = ("homography", "affine", "tps", "afftps")


@dataclass(frozen=True)
class WarpConfig:
    """Ranges of the random warps; every parameter is drawn uniformly from ``[-r, r]`` (normalised units).

    Args:
        translation: affine translation range ``t``.
        scale: affine scale range ``s``: each axis scale is in ``[1 - s, 1 + s]``.
        rotation: affine rotation and shear angle range ``α`` (radians).
        homography: displacement range of the four corners, ``t_hom``.
        tps: displacement range of the TPS control points, ``t_tps``.
        afftps: TPS control-point range when composed with an affine warp.
        tps_grid: the TPS control points form a ``tps_grid × tps_grid`` regular grid.
        types: warp types to draw from, a subset of :data:`WARP_TYPES`.
        weights: relative probability of each entry of ``types``; ``None`` means uniform.
        elastic_probability: chance of adding local elastic perturbations to a warp.
    """

    translation: float = 0.25
    scale: float = 0.45
    rotation: float = math.pi / 12
    homography: float = 0.5
    tps: float = 0.5
    afftps: float = 0.15
    tps_grid: int = 3
    types: tuple[str, ...] = WARP_TYPES
    weights: tuple[float, ...] | None = None
    elastic_probability: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", tuple(self.types))
        if not self.types or any(kind not in WARP_TYPES for kind in self.types):
            raise ValueError(f"types must be a non-empty subset of {WARP_TYPES}, got {self.types}")
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
            if len(self.weights) != len(self.types) or min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError(
                    f"weights must be {len(self.types)} non-negative numbers, got {self.weights}"
                )
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"scale must be in [0, 1), got {self.scale}")
        if self.tps_grid < 2:
            raise ValueError(f"tps_grid must be >= 2, got {self.tps_grid}")
        if not 0.0 <= self.elastic_probability <= 1.0:
            raise ValueError(f"elastic_probability must be in [0, 1], got {self.elastic_probability}")

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


def _affine_matrix(config: WarpConfig, generator: torch.Generator) -> torch.Tensor:
    """``(3, 3)`` affine ``R(α) R(-φ) D R(φ)`` plus translation, as in DenseMatching."""
    alpha, phi = _uniform(generator, config.rotation, 2)
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


def _tps(points: torch.Tensor, grid: int, bound: float, generator: torch.Generator) -> torch.Tensor:
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
        mapped = kornia.geometry.linalg.transform_points(
            _homography_matrix(config, generator)[None], points[None]
        )[0]
    elif kind == "affine":
        mapped = kornia.geometry.linalg.transform_points(
            _affine_matrix(config, generator)[None], points[None]
        )[0]
    elif kind == "tps":
        mapped = _tps(points, config.tps_grid, config.tps, generator)
    else:  # afftps: a mild TPS followed by an affine warp
        mapped = _tps(points, config.tps_grid, config.afftps, generator)
        mapped = kornia.geometry.linalg.transform_points(
            _affine_matrix(config, generator)[None], mapped[None]
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
