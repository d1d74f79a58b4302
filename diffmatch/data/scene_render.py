"""Ray casting and rendering of piecewise-planar scenes, the geometry behind :mod:`diffmatch.data.scenes`.

Conventions:

* **Cameras** are pinholes: a world point ``X`` has camera coordinates ``X_cam = R @ X + t`` (x right,
  y down, the camera looks along +z) and pixel ``(x, y) = (fx X_cam/Z + cx, fy Y_cam/Z + cy)`` with
  pixel centres at integer coordinates (the project's convention; an image of width ``W`` spans
  ``[-0.5, W - 0.5]``). Depth is ``Z``, the z of the camera coordinates.
* **Planes** are textured parallelograms ``P(u, v) = origin + u · axis_u + v · axis_v`` with
  ``(u, v) ∈ [0, 1]²``; an optional outline mask on ``(u, v)`` says which part of the parallelogram
  exists (a polygon, an ellipse, a segment of a photo). Texture pixel ``(i, j)`` has its centre at
  ``u = (j + ½) / W_tex``, ``v = (i + ½) / H_tex``.
* **Rendering** (:func:`render`) cuts every pixel into ``s × s`` sub-pixels; each sub-pixel's ray is
  intersected with every plane and the nearest hit inside its outline wins (a z-buffer per ray). Its
  colour is read from a mip-map of that plane's texture at the level of the ray's texel footprint
  (trilinear: bilinear within two levels, linear between them), so minified textures do not alias;
  the sub-pixels are then averaged (a box filter), which anti-aliases the layers' edges.
* **Correspondence** (:func:`scene_flow`): a target pixel centre's visible surface point is carried
  into the source view (with that plane's own motion when it moves independently) and projected;
  the match is valid where it lands inside the source frame, in front of the source camera, and the
  source ray through that exact point sees the same plane first (no occlusion). Flow follows the
  project convention: on the target grid, ``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x.

Geometry is computed in float64 (ground truth to well below 1e-3 px); texture sampling in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

__all__ = ["Camera", "Plane", "intersect", "nearest_hit", "render", "scene_flow", "rotation_matrix"]

_MIN_DEPTH = 1e-6


def rotation_matrix(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """``(3, 3)`` float64 rotation by ``angle`` radians about ``axis`` (Rodrigues; right-handed)."""
    axis = axis.double() / axis.double().norm()
    x, y, z = axis.tolist()
    skew = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    angle_t = torch.tensor(angle, dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + torch.sin(angle_t) * skew + (1 - torch.cos(angle_t)) * skew @ skew


@dataclass
class Camera:
    """A pinhole camera.

    Attributes:
        K: ``(3, 3)`` float64 intrinsics (pixel centres at integer coordinates).
        R: ``(3, 3)`` float64 world-to-camera rotation.
        t: ``(3,)`` float64 world-to-camera translation: ``X_cam = R @ X + t``.
        size: ``(H, W)`` of its image.
    """

    K: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    size: tuple[int, int]

    @property
    def center(self) -> torch.Tensor:
        """``(3,)`` the camera centre in world coordinates."""
        return -self.R.T @ self.t

    def rays(self, xy: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` world directions of the rays through pixels ``xy`` ``(N, 2)``, scaled so that a
        point ``center + λ · ray`` has depth ``λ`` (in the dtype of ``xy``)."""
        pixels = torch.cat((xy, torch.ones_like(xy[:, :1])), 1)
        return pixels @ (torch.linalg.inv(self.K).T @ self.R).to(xy.dtype)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels ``(N, 2)`` and depths ``(N,)`` of world points ``(N, 3)`` (depth ≤ 0: behind)."""
        cam = points.double() @ self.R.T + self.t
        depth = cam[:, 2]
        safe = torch.where(depth.abs() < _MIN_DEPTH, torch.full_like(depth, _MIN_DEPTH), depth)
        pixels = cam @ self.K.T
        return pixels[:, :2] / safe[:, None], depth


@dataclass
class Plane:
    """A textured parallelogram ``origin + u · axis_u + v · axis_v``, ``(u, v) ∈ [0, 1]²``.

    Attributes:
        origin, axis_u, axis_v: ``(3,)`` float64 world vectors.
        texture: ``(3, H_tex, W_tex)`` float32 RGB in ``[0, 1]``; ``u`` runs along its width.
        outline: optional ``(H_m, W_m)`` bool mask over ``(u, v)`` (same orientation as the texture):
            the part of the parallelogram that exists; ``None`` for all of it.
    """

    origin: torch.Tensor
    axis_u: torch.Tensor
    axis_v: torch.Tensor
    texture: torch.Tensor
    outline: torch.Tensor | None = None

    @property
    def normal(self) -> torch.Tensor:
        """``(3,)`` unit normal ``axis_u × axis_v``."""
        n = torch.linalg.cross(self.axis_u, self.axis_v)
        return n / n.norm()

    def point(self, uv: torch.Tensor) -> torch.Tensor:
        """World points ``(N, 3)`` of plane coordinates ``uv`` ``(N, 2)``."""
        return self.origin + uv[:, :1] * self.axis_u + uv[:, 1:] * self.axis_v

    def moved(self, rotation: torch.Tensor, translation: torch.Tensor) -> Plane:
        """The plane after the rigid motion ``X -> rotation @ X + translation``."""
        return replace(
            self,
            origin=rotation @ self.origin + translation,
            axis_u=rotation @ self.axis_u,
            axis_v=rotation @ self.axis_v,
        )


def _uv_of(plane: Plane, points: torch.Tensor) -> torch.Tensor:
    """Plane coordinates ``(N, 2)`` of world points lying on the plane (axes need not be orthogonal)."""
    basis = torch.stack((plane.axis_u, plane.axis_v))  # (2, 3)
    solve = (basis.T @ torch.linalg.inv(basis @ basis.T).T).to(points.dtype)
    return (points - plane.origin.to(points.dtype)) @ solve


def _inside_outline(outline: torch.Tensor | None, uv: torch.Tensor) -> torch.Tensor:
    inside = (uv[:, 0] >= 0) & (uv[:, 0] <= 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= 1)
    if outline is None:
        return inside
    hm, wm = outline.shape
    cols = (uv[:, 0] * wm).floor().clamp(0, wm - 1).long()
    rows = (uv[:, 1] * hm).floor().clamp(0, hm - 1).long()
    return inside & outline[rows, cols]


def intersect(
    planes: list[Plane], camera: Camera, xy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersect the rays through pixels ``xy`` with every plane.

    Args:
        planes: ``P`` planes.
        camera: the camera the rays start from.
        xy: ``(N, 2)`` pixel coordinates; the computation runs in their dtype (float64 for ground
            truth, float32 is enough for colours).

    Returns:
        ``(depth, uv, hit)``: ``(P, N)`` depth of each intersection (NaN where the ray is parallel),
        ``(P, N, 2)`` its plane coordinates, and ``(P, N)`` bool: in front of the camera and inside
        the plane's outline.
    """
    center, rays = camera.center, camera.rays(xy)
    depths, uvs, hits = [], [], []
    for plane in planes:
        n = plane.normal
        denom = rays @ n.to(rays.dtype)
        reach = float((plane.origin - center) @ n)
        depth = reach / torch.where(denom.abs() < 1e-12, torch.nan, denom)
        center_t = center.to(rays.dtype)
        uv = _uv_of(plane, center_t + depth[:, None] * rays)
        hit = torch.isfinite(depth) & (depth > _MIN_DEPTH) & _inside_outline(plane.outline, uv.nan_to_num(-1.0))
        depths.append(depth)
        uvs.append(uv)
        hits.append(hit)
    if not planes:
        n = len(xy)
        return xy.new_zeros((0, n)), xy.new_zeros((0, n, 2)), xy.new_zeros((0, n), dtype=torch.bool)
    return torch.stack(depths), torch.stack(uvs), torch.stack(hits)


def nearest_hit(depth: torch.Tensor, hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The z-buffer: per ray, the index of the nearest plane hit (``-1`` for none) and its depth (0 for none)."""
    if depth.shape[0] == 0:
        n = depth.shape[1]
        return torch.full((n,), -1, dtype=torch.long), torch.zeros(n, dtype=torch.float64)
    masked = torch.where(hit, depth, torch.full_like(depth, torch.inf))
    best, index = masked.min(0)
    none = ~torch.isfinite(best)
    return torch.where(none, -1, index), torch.where(none, 0.0, best).double()


def _pixel_grid(size: tuple[int, int], supersample: int = 1) -> torch.Tensor:
    """``(H·s · W·s, 2)`` sub-pixel centres in raster order (pixel centres for ``s = 1``)."""
    h, w = size
    s = supersample
    xs = (torch.arange(w * s, dtype=torch.float64) + 0.5) / s - 0.5
    ys = (torch.arange(h * s, dtype=torch.float64) + 0.5) / s - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx.flatten(), gy.flatten()), 1)


def _mip_pyramid(texture: torch.Tensor) -> list[torch.Tensor]:
    levels = [texture[None].float()]
    while min(levels[-1].shape[-2:]) >= 4:
        levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
    return levels


def _sample_mip(pyramid: list[torch.Tensor], uv: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``(3, N)`` trilinear texture samples at ``uv`` ``(N, 2)`` and mip ``level`` ``(N,)``."""
    grid = (uv.float() * 2 - 1).view(1, -1, 1, 2)
    top = len(pyramid) - 1
    level = level.float().clamp(0, top)
    low = level.floor().long()
    frac = (level - low)[None]
    samples = torch.stack(
        [F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, :, 0] for t in pyramid]
    )  # (L, 3, N)
    index = torch.arange(len(uv))
    lower = samples[low, :, index].T
    upper = samples[(low + 1).clamp(max=top), :, index].T
    return lower * (1 - frac) + upper * frac


def render(
    planes: list[Plane], camera: Camera, supersample: int = 2, background: tuple[float, float, float] = (0.5, 0.5, 0.5)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render the planes seen by ``camera`` with a z-buffer and anti-aliased texture sampling.

    Args:
        planes: the scene, in this view's world coordinates.
        camera: the view.
        supersample: sub-pixels per side ``s`` (edges are averaged over ``s²`` rays).
        background: RGB of rays that hit no plane.

    Returns:
        ``(image, depth, index)``: ``(3, H, W)`` float32 RGB in ``[0, 1]``; ``(H, W)`` float64 depth of
        the surface at each pixel centre (0 where none); ``(H, W)`` long index of that plane (-1: none).
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    h, w = camera.size
    s = supersample
    xy = _pixel_grid((h, w), s).float()
    depth_all, uv_all, hit = intersect(planes, camera, xy)
    index, _ = nearest_hit(depth_all, hit)
    colour = torch.tensor(background, dtype=torch.float32)[:, None].repeat(1, len(xy))
    for j, plane in enumerate(planes):
        selected = index == j
        if not selected.any():
            continue
        texels = uv_all[j].view(h * s, w * s, 2) * uv_all.new_tensor(plane.texture.shape[:0:-1])
        dx = torch.diff(texels, dim=1, append=texels[:, -1:] * 2 - texels[:, -2:-1])
        dy = torch.diff(texels, dim=0, append=texels[-1:] * 2 - texels[-2:-1])
        # Texels per sub-pixel step; a pixel averages s of them per side.
        footprint = torch.maximum(dx.norm(dim=-1), dy.norm(dim=-1)).nan_to_num(1.0).flatten()
        level = torch.log2(footprint[selected].clamp(min=1.0))
        colour[:, selected] = _sample_mip(_mip_pyramid(plane.texture), uv_all[j, selected], level)
    image = F.avg_pool2d(colour.view(1, 3, h * s, w * s), s)[0] if s > 1 else colour.view(3, h, w)
    centre_depth, _, centre_hit = intersect(planes, camera, _pixel_grid((h, w)))
    centre_index, depth = nearest_hit(centre_depth, centre_hit)
    return image.clamp(0, 1), depth.view(h, w), centre_index.view(h, w)


def scene_flow(
    target_planes: list[Plane], source_planes: list[Plane], target: Camera, source: Camera
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth flow and validity of a target view into a source view.

    Args:
        target_planes: the planes as the target view sees them.
        source_planes: the same planes (same order) as the source view sees them; they differ from
            ``target_planes`` only for planes that move independently of the camera.
        target, source: the two cameras.

    Returns:
        ``(flow, mask)``: ``(2, H, W)`` float64 flow on the target grid, ``target(x) ≈ source(x +
        flow(x))`` in source pixels (0 where the target sees no plane), and ``(H, W)`` bool: the
        match exists, lies inside the source frame, in front of the source camera, and is not
        occluded in the source.
    """
    if len(target_planes) != len(source_planes):
        raise ValueError(f"{len(target_planes)} target planes but {len(source_planes)} source planes")
    h, w = target.size
    hs, ws = source.size
    xy = _pixel_grid((h, w))
    depth_all, uv_all, hit = intersect(target_planes, target, xy)
    index, _ = nearest_hit(depth_all, hit)
    matched = torch.zeros_like(xy)
    matched_depth = torch.zeros(len(xy), dtype=torch.float64)
    for j, plane in enumerate(source_planes):
        selected = index == j
        if selected.any():
            matched[selected], matched_depth[selected] = source.project(plane.point(uv_all[j, selected]))
    flow = torch.where((index >= 0)[:, None], matched - xy, torch.zeros_like(xy))
    inside = (
        (index >= 0)
        & (matched_depth > _MIN_DEPTH)
        & (matched[:, 0] >= -0.5)
        & (matched[:, 0] <= ws - 0.5)
        & (matched[:, 1] >= -0.5)
        & (matched[:, 1] <= hs - 0.5)
    )
    visible = torch.zeros_like(inside)
    if inside.any():
        src_depth, _, src_hit = intersect(source_planes, source, matched[inside])
        src_index, _ = nearest_hit(src_depth, src_hit)
        visible[inside] = src_index == index[inside]
    return flow.T.reshape(2, h, w), visible.view(h, w)
