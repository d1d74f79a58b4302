"""The variational refinement's energy, minimised in PyTorch on any device and batched over flows.

The energy is Brox et al.'s (ECCV 2004) with Zimmer et al.'s data normalisation, as DIS (Kroeger et
al., ECCV 2016) uses it for its last stage and OpenCV implements it (``cv2.VariationalRefinement``):

* colour constancy, ``delta / 2 · ψ(Iz² / (|∇I|² + ζ²))``, and gradient constancy, ``gamma / 2 ·
  ψ(Ixz² / (|∇Ix|² + ζ²) + Iyz² / (|∇Iy|² + ζ²))``, linearised around the current flow;
* smoothness, ``alpha / 2 · ψ(|∇u|² + |∇v|²)`` with forward differences;
* ``ψ(s) = sqrt(s + ε²)``, ``ζ = 0.1``, ``ε = 0.001``, intensities in ``[0, 255]``.

:func:`variational_step` is one run of that solver: the source is warped once by the flow, then
``fixed_point_iterations`` times the robust weights are re-evaluated (lagged) and the linear system
for the flow increment is relaxed with ``sor_iterations`` sweeps of red-black successive
over-relaxation (red cells, ``(row + column)`` even, first). Red-black sweeps update one colour from
the other only, so a whole colour is one tensor operation and the result does not depend on the
order cells are visited in: it is the same iteration OpenCV runs cell by cell. It differs from
OpenCV only in the bilinear warp (exact here, 1/32-px fixed point there) and in float rounding.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x; tensors are
``(B, 2, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffmatch.geometry import warp

__all__ = ["to_gray255", "variational_step"]

_ZETA = 0.1
_EPSILON = 0.001
_OMEGA = 1.6


def to_gray255(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in ``[0, 1]`` to ``(B, 1, H, W)`` float luma in ``[0, 255]``, whole numbers.

    The values are OpenCV's ``COLOR_RGB2GRAY`` of the image rounded to 8 bits (ITU-R 601 luma in its
    15-bit fixed point), so both refinements see the same grayscale.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    rgb = (images.detach().float().clamp(0, 1) * 255).round()
    weights = rgb.new_tensor([9798.0, 19235.0, 3735.0]).view(1, 3, 1, 1)
    return torch.floor(((rgb * weights).sum(1, keepdim=True) + 16384.0) / 32768.0)


def _central_x(image: torch.Tensor) -> torch.Tensor:
    """``I(x + 1) - I(x - 1)`` with replicated borders (OpenCV's 1-tap Sobel)."""
    padded = F.pad(image, (1, 1, 0, 0), mode="replicate")
    return padded[..., 2:] - padded[..., :-2]


def _central_y(image: torch.Tensor) -> torch.Tensor:
    padded = F.pad(image, (0, 0, 1, 1), mode="replicate")
    return padded[..., 2:, :] - padded[..., :-2, :]


def _neighbours(field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The values left, right, above and below every cell (zero outside the image)."""
    padded = F.pad(field, (1, 1, 1, 1))
    return padded[..., 1:-1, :-2], padded[..., 1:-1, 2:], padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]


class _DataTerm:
    """The linearised data terms of one warp: everything that does not change between fixed-point
    iterations, and the system coefficients for a given increment."""

    def __init__(self, target: torch.Tensor, warped: torch.Tensor, delta: float, gamma: float) -> None:
        average, iz = 0.5 * (target + warped), warped - target
        ix, iy = _central_x(average), _central_y(average)
        ixz, iyz = _central_x(iz), _central_y(iz)
        ixx, ixy, iyy = _central_x(ix), _central_y(ix), _central_y(iy)
        zeta2 = _ZETA * _ZETA
        self.delta2, self.gamma2 = delta / 2, gamma / 2
        self.ix, self.iy, self.iz = ix, iy, iz
        self.ixx, self.ixy, self.iyy, self.ixz, self.iyz = ixx, ixy, iyy, ixz, iyz
        self.norm = ix * ix + iy * iy + zeta2
        norm_x, norm_y = ixx * ixx + ixy * ixy + zeta2, iyy * iyy + ixy * ixy + zeta2
        self.inv_norm_x, self.inv_norm_y = 1.0 / norm_x, 1.0 / norm_y
        # Colour constancy, per unit weight; gradient constancy, per unit weight.
        self.c11, self.c12, self.c22 = ix * ix, ix * iy, iy * iy
        self.c1, self.c2 = iz * ix, iz * iy
        self.g11 = ixx * ixx / norm_x + ixy * ixy / norm_y
        self.g12 = ixx * ixy / norm_x + ixy * iyy / norm_y
        self.g22 = ixy * ixy / norm_x + iyy * iyy / norm_y
        self.g1 = ixx * ixz / norm_x + ixy * iyz / norm_y
        self.g2 = ixy * ixz / norm_x + iyy * iyz / norm_y

    def system(self, du: torch.Tensor, dv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(a11, a12, a22, b1, b2)`` of the data terms, their robust weights taken at ``(du, dv)``."""
        eps2 = _EPSILON * _EPSILON
        residual = self.iz + self.ix * du + self.iy * dv
        colour = self.delta2 / torch.sqrt(residual * residual / self.norm + eps2) / self.norm
        rx = self.ixz + self.ixx * du + self.ixy * dv
        ry = self.iyz + self.ixy * du + self.iyy * dv
        gradient = self.gamma2 / torch.sqrt(rx * rx * self.inv_norm_x + ry * ry * self.inv_norm_y + eps2)
        zeta2 = _ZETA * _ZETA
        a11 = colour * self.c11 + gradient * self.g11 + zeta2
        a12 = colour * self.c12 + gradient * self.g12
        a22 = colour * self.c22 + gradient * self.g22 + zeta2
        b1 = -(colour * self.c1 + gradient * self.g1)
        b2 = -(colour * self.c2 + gradient * self.g2)
        return a11, a12, a22, b1, b2


def _smoothness_weights(flow: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust smoothness weights of every cell's right and lower edge (zero where there is none)."""
    dx = F.pad(flow[..., 1:] - flow[..., :-1], (0, 1))
    dy = F.pad(flow[..., 1:, :] - flow[..., :-1, :], (0, 0, 0, 1))
    weight = (alpha / 2) / torch.sqrt((dx * dx).sum(1, keepdim=True) + (dy * dy).sum(1, keepdim=True) + _EPSILON**2)
    right = weight.clone()
    right[..., -1] = 0
    down = weight
    down[..., -1, :] = 0
    return right, down


@torch.no_grad()
def variational_step(
    target: torch.Tensor,
    source: torch.Tensor,
    flow: torch.Tensor,
    fixed_point_iterations: int = 5,
    sor_iterations: int = 5,
    alpha: float = 20.0,
    delta: float = 5.0,
    gamma: float = 10.0,
) -> torch.Tensor:
    """One run of the variational refinement from ``flow`` (what ``cv2.VariationalRefinement.calc`` does).

    Args:
        target: ``(B, 1, H, W)`` grayscale in ``[0, 255]`` (:func:`to_gray255`), the flow's grid.
        source: ``(B, 1, H, W)`` grayscale in ``[0, 255]``, the image the flow points into, resized
            to the target's size.
        flow: ``(B, 2, H, W)`` float32, target grid, ``target(x) ≈ source(x + flow(x))``, pixels,
            channel 0 = x.
        fixed_point_iterations, sor_iterations, alpha, delta, gamma: as
            :class:`~diffmatch.refinement.VariationalRefiner`'s.

    Returns:
        The refined ``(B, 2, H, W)`` flow, on ``flow``'s device. It moves matches by a few pixels at
        most: the data terms are linearised around ``flow``.
    """
    warped, _ = warp(source, flow, padding_mode="border")
    data = _DataTerm(target, warped, delta, gamma)
    h, w = flow.shape[-2:]
    rows = torch.arange(h, device=flow.device).view(h, 1)
    cols = torch.arange(w, device=flow.device).view(1, w)
    colours = ((rows + cols) % 2 == 0, (rows + cols) % 2 == 1)  # red, then black
    du, dv = torch.zeros_like(flow[:, :1]), torch.zeros_like(flow[:, 1:])  # the increment
    for _ in range(fixed_point_iterations):
        a11, a12, a22, b1, b2 = data.system(du, dv)
        right, down = _smoothness_weights(flow + torch.cat((du, dv), 1), alpha)
        left, _, up, _ = _neighbours(torch.cat((right, down), 1))
        left, up = left[:, :1], up[:, 1:]
        diagonal = left + right + up + down
        # The smoothness term acts on the whole flow; the unknown is the increment.
        f_left, f_right, f_up, f_down = _neighbours(flow)
        pull = left * (f_left - flow) + right * (f_right - flow) + up * (f_up - flow) + down * (f_down - flow)
        inv11, inv22 = 1.0 / (a11 + diagonal), 1.0 / (a22 + diagonal)
        b1, b2 = b1 + pull[:, :1], b2 + pull[:, 1:]
        for _ in range(sor_iterations):
            for colour in colours:
                n_left, n_right, n_up, n_down = _neighbours(torch.cat((du, dv), 1))
                sigma = left * n_left + right * n_right + up * n_up + down * n_down
                du = torch.where(colour, du + _OMEGA * ((sigma[:, :1] + b1 - a12 * dv) * inv11 - du), du)
                dv = torch.where(colour, dv + _OMEGA * ((sigma[:, 1:] + b2 - a12 * du) * inv22 - dv), dv)
    return flow + torch.cat((du, dv), 1)
