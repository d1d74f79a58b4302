"""Pure flow-field geometry.

Conventions used everywhere in :mod:`diffmatch`:

* **Flow** lives on the *target* grid and points into the *source* image:
  ``target(x) ≈ source(x + flow(x))``. Units are pixels, channel 0 is the horizontal
  (x) displacement, channel 1 the vertical (y) one. Tensors are ``(B, 2, H, W)``;
  arrays on disk are ``(H, W, 2)``. This is the DenseMatching convention.
* **Pixel coordinates** put the centre of pixel ``(i, j)`` at ``x = j, y = i``; an image
  of width ``W`` covers ``[-0.5, W - 0.5]``.
* **align_corners=False** everywhere (as kornia and ``F.interpolate`` default to). With it,
  resizing an image by a factor ``s`` maps ``x -> (x + 0.5) * s - 0.5``, so a displacement
  scales by exactly ``s``, and normalised coordinates are ``u = (2x + 1) / W - 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "check_flow",
    "coords_grid",
    "flow_magnitude",
    "flow_to_normalized",
    "normalized_to_flow",
    "pixel_to_normalized",
    "warp",
    "resize_flow",
    "homography_to_flow",
    "to_grid",
    "from_grid",
    "forward_backward_consistency",
]


def check_flow(flow: torch.Tensor, name: str = "flow") -> None:
    """Raise ``ValueError`` unless ``flow`` is a ``(B, 2, H, W)`` floating tensor."""
    if not isinstance(flow, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(flow).__name__}")
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name} must have shape (B, 2, H, W), got {tuple(flow.shape)}")
    if not flow.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {flow.dtype}")


def flow_magnitude(flow: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Per-pixel length of ``(B, 2, H, W)`` vectors: ``(B, H, W)``, or ``(B, 1, H, W)`` with ``keepdim``.

    The same values as ``flow.norm(dim=1)``, computed elementwise (``torch.hypot``): on the CPU a
    reduction over the two-channel dimension is about 100x slower at 512². Not for training losses:
    its gradient at a zero vector is undefined.

    Example:
        >>> flow_magnitude(torch.tensor([[[[3.0]], [[-4.0]]]])).item()
        5.0
    """
    check_flow(flow)
    length = torch.hypot(flow[:, 0], flow[:, 1])
    return length.unsqueeze(1) if keepdim else length


def coords_grid(
    batch: int,
    height: int,
    width: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pixel coordinates of every pixel centre.

    Returns:
        ``(B, 2, H, W)`` tensor; channel 0 is x (column), channel 1 is y (row).

    Example:
        >>> coords_grid(1, 2, 3)[0, :, 1, 2].tolist()
        [2.0, 1.0]
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys)).unsqueeze(0).expand(batch, -1, -1, -1).contiguous()


def pixel_to_normalized(coords: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Absolute pixel coordinates ``(B, 2, H, W)`` to ``grid_sample`` coordinates of an image of ``size=(H, W)``."""
    h, w = size
    scale = coords.new_tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)
    return (coords + 0.5) * scale - 1.0


def flow_to_normalized(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel flow to normalised flow (``grid_sample`` units, 2 = whole image).

    Args:
        flow: ``(B, 2, H, W)`` flow in pixels, target grid, ``target(x) ≈ source(x + flow(x))``.
        size: ``(H, W)`` of the image the flow points into (the source).
    """
    check_flow(flow)
    h, w = size
    return flow * flow.new_tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)


def normalized_to_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`flow_to_normalized`: normalised flow back to pixels of an image of ``size=(H, W)``."""
    check_flow(flow)
    h, w = size
    return flow * flow.new_tensor([w / 2.0, h / 2.0]).view(1, 2, 1, 1)


def warp(
    source: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward-warp ``source`` onto the target grid: ``out(x) = source(x + flow(x))``.

    Args:
        source: ``(B, C, Hs, Ws)`` image or feature map. It may differ in size from the flow.
        flow: ``(B, 2, Ht, Wt)`` flow in pixels of the source, on the target grid.
        mode: ``grid_sample`` interpolation mode.
        padding_mode: ``grid_sample`` padding mode.

    Returns:
        ``(warped, valid)``: ``(B, C, Ht, Wt)`` warped source and a ``(B, Ht, Wt)`` bool mask of
        target pixels whose match lies inside the source frame.
    """
    check_flow(flow)
    if source.ndim != 4 or source.shape[0] != flow.shape[0]:
        raise ValueError(f"source must be (B, C, H, W) with B={flow.shape[0]}, got {tuple(source.shape)}")
    b, _, ht, wt = flow.shape
    hs, ws = source.shape[-2:]
    coords = coords_grid(b, ht, wt, flow.device, flow.dtype) + flow
    grid = pixel_to_normalized(coords, (hs, ws)).permute(0, 2, 3, 1)
    warped = F.grid_sample(
        source, grid.to(source.dtype), mode=mode, padding_mode=padding_mode, align_corners=False
    )
    valid = (
        (coords[:, 0] >= -0.5)
        & (coords[:, 0] <= ws - 0.5)
        & (coords[:, 1] >= -0.5)
        & (coords[:, 1] <= hs - 0.5)
    )
    return warped, valid


def resize_flow(
    flow: torch.Tensor,
    size: tuple[int, int],
    source_scale: tuple[float, float] | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resize a flow field to a new target size; the values follow the resize.

    The target grid is resized from ``flow.shape[-2:]`` to ``size``. The source image is assumed
    to be resized by ``source_scale = (sy, sx)``; by default by the same factors as the target,
    in which case the displacement simply scales by ``(W'/W, H'/H)``.

    Args:
        flow: ``(B, 2, H, W)`` pixel flow, target grid, ``target(x) ≈ source(x + flow(x))``.
        size: new target size ``(H', W')``.
        source_scale: ``(sy, sx)`` factor by which the source image is resized.
        mode: interpolation used for the field (``bilinear`` or ``nearest``).

    Returns:
        ``(B, 2, H', W')`` flow in pixels of the resized images.
    """
    check_flow(flow)
    b, _, h, w = flow.shape
    th, tw = size
    ty, tx = th / h, tw / w
    sy, sx = (ty, tx) if source_scale is None else source_scale
    # Interpolate the displacement (not absolute coordinates, whose edge extrapolation would be
    # clamped), then re-express it: new target x' sits at old x = (x' + 0.5) / t - 0.5 and a source
    # point p moves to (p + 0.5) * s - 0.5, so flow' = s * flow + (x' + 0.5) * (s / t - 1).
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(flow, size=(th, tw), mode=mode, **kwargs)
    scale = flow.new_tensor([sx, sy]).view(1, 2, 1, 1)
    ratio = flow.new_tensor([sx / tx, sy / ty]).view(1, 2, 1, 1)
    grid = coords_grid(b, th, tw, flow.device, flow.dtype)
    return resized * scale + (grid + 0.5) * (ratio - 1.0)


def to_grid(flow: torch.Tensor, size: int, source_size: tuple[int, int]) -> torch.Tensor:
    """Pixel flow to the *normalised* flow on a square ``size × size`` grid over both images.

    The target grid is resized to ``size²`` and the source image, of ``source_size = (Hs, Ws)``, is
    mapped to ``size²`` too; the displacement is then divided by ``size`` (so crossing the whole
    image is about 1, as DiffMatch's diffusion expects).

    Args:
        flow: ``(B, 2, Ht, Wt)`` pixel flow, target grid, ``target(x) ≈ source(x + flow(x))``.
        size: side of the square grid.
        source_size: ``(Hs, Ws)`` of the image the flow points into.

    Returns:
        ``(B, 2, size, size)`` normalised flow.
    """
    hs, ws = source_size
    return resize_flow(flow, (size, size), source_scale=(size / hs, size / ws)) / size


def from_grid(
    flow: torch.Tensor, target_size: tuple[int, int], source_size: tuple[int, int], align_corners: bool = False
) -> torch.Tensor:
    """Inverse of :func:`to_grid`: normalised ``(B, 2, s, s)`` flow to pixel flow at ``target_size``.

    With ``align_corners`` the normalised field is resized with ``align_corners=True`` and scaled
    by the source size, as the official DiffMatch evaluation does (the one exception to this
    module's ``align_corners=False``, kept for parity with it).

    Returns:
        ``(B, 2, Ht, Wt)`` flow in pixels of the source of ``source_size = (Hs, Ws)``.
    """
    check_flow(flow)
    size = flow.shape[-1]
    hs, ws = source_size
    if align_corners:
        resized = F.interpolate(flow, size=tuple(target_size), mode="bilinear", align_corners=True)
        return resized * flow.new_tensor([ws, hs]).view(1, 2, 1, 1)
    return resize_flow(flow * size, tuple(target_size), source_scale=(hs / size, ws / size))


def homography_to_flow(homography: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Dense flow induced by a homography.

    Args:
        homography: ``(B, 3, 3)`` or ``(3, 3)`` matrix mapping *target* pixel coordinates to *source*
            pixel coordinates (pixel-centre convention). If yours maps source to target (as the
            HPatches files do), pass its inverse.
        size: target size ``(H, W)``.

    Returns:
        ``(B, 2, H, W)`` flow with ``target(x) ≈ source(x + flow(x))`` in pixels.
    """
    if homography.ndim == 2:
        homography = homography.unsqueeze(0)
    if homography.shape[-2:] != (3, 3):
        raise ValueError(f"homography must be (B, 3, 3), got {tuple(homography.shape)}")
    h, w = size
    b = homography.shape[0]
    dtype = homography.dtype if homography.is_floating_point() else torch.float32
    grid = coords_grid(b, h, w, homography.device, dtype)
    pts = torch.cat((grid.flatten(2), torch.ones_like(grid[:, :1].flatten(2))), dim=1)  # (B, 3, HW)
    mapped = homography.to(dtype) @ pts
    z = mapped[:, 2:]
    z = torch.where(z.abs() < 1e-8, torch.full_like(z, 1e-8), z)
    src = (mapped[:, :2] / z).view(b, 2, h, w)
    return src - grid


def forward_backward_consistency(
    flow_fw: torch.Tensor, flow_bw: torch.Tensor, alpha: float = 0.01, beta: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward–backward consistency check (Sundaram et al., as used by UnFlow and PDC-Net).

    Args:
        flow_fw: ``(B, 2, Ht, Wt)`` flow on the target grid into the source.
        flow_bw: ``(B, 2, Hs, Ws)`` flow on the source grid into the target.
        alpha: relative tolerance on the squared magnitudes.
        beta: absolute tolerance in squared pixels.

    Returns:
        ``(mask, error)``: a ``(B, Ht, Wt)`` bool mask of consistent target pixels and the
        ``(B, Ht, Wt)`` cycle error in pixels (``|fw(x) + bw(x + fw(x))|``).
    """
    check_flow(flow_fw, "flow_fw")
    check_flow(flow_bw, "flow_bw")
    bw_warped, valid = warp(flow_bw, flow_fw, padding_mode="border")
    cycle = flow_fw + bw_warped
    sq_err = (cycle**2).sum(1)
    bound = alpha * ((flow_fw**2).sum(1) + (bw_warped**2).sum(1)) + beta
    return (sq_err < bound) & valid, sq_err.sqrt()
