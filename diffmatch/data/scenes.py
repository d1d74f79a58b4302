"""Scene pairs with depth: two views of a piecewise-planar 3D world textured with photos.

Unlike the 2D warps of :class:`~diffmatch.data.SyntheticPairs`, these pairs have parallax (near
layers move more than far ones), occlusion (a layer hides different parts of the background in each
view) and a camera pose. Each item is drawn from one seed:

* **World** (target camera at the origin, looking along +z, ``D`` the background depth): a
  background plane through ``(0, 0, D)``, tilted by up to ``background_tilt`` degrees, large enough to
  fill both views, textured with a photo; and ``K`` foreground layers (``K`` uniform in ``layers``),
  each a planar parallelogram at depth ``layer_depth · D`` centred on a random point of the target's
  view, ``layer_width`` of the view wide at its depth, tilted by up to ``layer_tilt`` degrees and
  spun by up to ``layer_spin``, textured with a random crop of a photo and cut to an outline
  (``rectangle``, ``ellipse``, a random star-shaped ``polygon``, or a ``segment`` of its own photo
  from a graph-based segmentation). With ``moving_probability`` a layer also moves on its own between
  the views (a rigid motion: up to ``moving_rotation`` degrees about its centre and
  ``moving_translation`` of its depth), so its flow does not follow the camera, like the COCO
  objects of :class:`~diffmatch.data.MovingObjects`.
* **Cameras**: pinholes with a horizontal field of view in ``fov`` (the source's focal length times
  ``zoom``), principal point near the centre. The source camera's motion is one of
  :data:`MOTIONS`: ``stereo`` (translation along x by ``stereo_baseline · D``), ``forward`` (along
  the optical axis by ``forward_translation · D``, either way), ``sideways`` (in the image plane by
  ``sideways_translation · D``, half of the time turning to look at the scene's centre), ``wide``
  (an orbit of ``wide_rotation`` degrees about the scene's centre at depth ``0.7 D``, about an axis
  within 30° of the vertical) or ``inplane`` (a rotation about the optical axis by
  ``inplane_rotation`` degrees plus a small translation); every motion adds a random rotation of up
  to ``rotation_jitter`` degrees.
* **Rendering and ground truth** (:mod:`diffmatch.data.scene_render`): both views ray-cast with a
  z-buffer, 2×2 super-sampling and mip-mapped textures; the flow on the target grid and its mask
  (target pixels whose surface point is occluded in the source or falls outside it are invalid);
  the depth of both views, both intrinsics and the relative pose.

Items are dicts:

* ``source``, ``target``: ``(3, H, W)`` float32 in ``[0, 1]`` (photometric augmentation applied,
  independently per image, when ``augment``);
* ``flow``: ``(2, H, W)`` float32, target grid, ``target(x) ≈ source(x + flow(x))``, pixels, channel
  0 = x; ``mask``: ``(H, W)`` bool;
* ``depth_source``, ``depth_target``: ``(H, W)`` float32 depth (z) at each pixel centre, 0 where no
  surface;
* ``K_source``, ``K_target``: ``(3, 3)`` float64 intrinsics (pixel centres at integer coordinates);
* ``R``, ``t``: ``(3, 3)``, ``(3,)`` float64, the relative pose **from the target camera to the
  source camera**, ``X_source = R @ X_target + t`` (a moving layer does not follow it);
* ``motion``: the motion preset's name; ``name``: ``"<index>"`` (the benchmark: ``"<level>/<index>"``).

``data/README.md`` lists every range with its default.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from diffmatch.data.photometric import PhotometricConfig, photometric_augment
from diffmatch.data.photos import image_to_tensor, list_images
from diffmatch.data.scene_render import Camera, Plane, render, rotation_matrix, scene_flow
from diffmatch.errors import InputError
from diffmatch.io import load_image

__all__ = [
    "MOTIONS",
    "OUTLINES",
    "SCENE_LEVELS",
    "SceneConfig",
    "ScenePairs",
    "SceneBenchmark",
    "intrinsics",
    "sample_motion",
    "sample_scene",
]

MOTIONS: tuple[str, ...] = ("stereo", "forward", "sideways", "wide", "inplane")
OUTLINES: tuple[str, ...] = ("rectangle", "ellipse", "polygon", "segment")
# The benchmark's levels and the motions each draws from.
SCENE_LEVELS: dict[str, tuple[str, ...]] = {
    "stereo": ("stereo",),
    "medium": ("forward", "sideways", "inplane"),
    "wide": ("wide",),
}
_SCENE_CENTRE = 0.7  # depth of the point the sideways and wide motions look at, × background depth
_OUTLINE_SIZE = 128


def _check_range(name: str, value: tuple[float, float], low: float = 0.0) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1]:
        raise ValueError(f"{name} must be a range (lo, hi) with {low} <= lo <= hi, got {value}")


@dataclass(frozen=True)
class SceneConfig:
    """Ranges of the scene generator (see the module docstring for what each one moves).

    Depths and translations are fractions of the background depth ``D``, angles are in degrees.
    """

    motions: tuple[str, ...] = MOTIONS
    layers: tuple[int, int] = (0, 6)
    outlines: tuple[str, ...] = OUTLINES
    fov: tuple[float, float] = (45.0, 75.0)
    zoom: tuple[float, float] = (0.9, 1.1)
    background_depth: tuple[float, float] = (6.0, 12.0)
    background_tilt: float = 35.0
    layer_depth: tuple[float, float] = (0.4, 0.85)
    layer_width: tuple[float, float] = (0.15, 0.5)
    layer_tilt: float = 45.0
    layer_spin: float = 30.0
    stereo_baseline: tuple[float, float] = (0.02, 0.08)
    forward_translation: tuple[float, float] = (0.08, 0.25)
    sideways_translation: tuple[float, float] = (0.05, 0.25)
    wide_rotation: tuple[float, float] = (15.0, 40.0)
    inplane_rotation: tuple[float, float] = (10.0, 60.0)
    rotation_jitter: float = 2.0
    moving_probability: float = 0.0
    moving_rotation: float = 15.0
    moving_translation: float = 0.08
    supersample: int = 2

    def __post_init__(self) -> None:
        if not self.motions or any(m not in MOTIONS for m in self.motions):
            raise InputError(f"motions must be a non-empty list of {', '.join(MOTIONS)}, got {self.motions}")
        if not self.outlines or any(o not in OUTLINES for o in self.outlines):
            raise InputError(f"outlines must be a non-empty list of {', '.join(OUTLINES)}, got {self.outlines}")
        if len(self.layers) != 2 or not 0 <= self.layers[0] <= self.layers[1]:
            raise InputError(f"layers must be a range (lo, hi) with 0 <= lo <= hi, got {self.layers}")
        for name in (
            "fov", "zoom", "background_depth", "layer_depth", "layer_width", "stereo_baseline",
            "forward_translation", "sideways_translation", "wide_rotation", "inplane_rotation",
        ):
            _check_range(name, getattr(self, name))
        if not (1.0 <= self.fov[0] and self.fov[1] < 170.0):
            raise InputError(f"fov must lie in [1, 170) degrees, got {self.fov}")
        if self.zoom[0] <= 0 or self.background_depth[0] <= 0 or self.layer_depth[0] <= 0:
            raise InputError("zoom, background_depth and layer_depth must be positive")
        if self.layer_depth[1] >= 1.0:
            raise InputError(f"layer_depth must stay in front of the background (< 1), got {self.layer_depth}")
        if not 0.0 <= self.moving_probability <= 1.0:
            raise InputError(f"moving_probability must be in [0, 1], got {self.moving_probability}")
        if self.supersample < 1:
            raise InputError(f"supersample must be >= 1, got {self.supersample}")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _sign(generator: torch.Generator) -> float:
    return 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0


def _choice(generator: torch.Generator, options: tuple[Any, ...] | list[Any]) -> Any:
    return options[int(torch.randint(len(options), (), generator=generator))]


def _axis_in_image_plane(generator: torch.Generator) -> torch.Tensor:
    angle = _uniform(generator, 0.0, 2 * math.pi)
    return torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=torch.float64)


def _random_axis(generator: torch.Generator) -> torch.Tensor:
    axis = torch.randn(3, generator=generator, dtype=torch.float64)
    return axis / axis.norm().clamp(min=1e-9)


def _jitter(generator: torch.Generator, degrees: float) -> torch.Tensor:
    return rotation_matrix(_random_axis(generator), math.radians(_uniform(generator, 0.0, degrees)))


def intrinsics(size: tuple[int, int], fov_degrees: float, offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """``(3, 3)`` float64 intrinsics of a square-pixel camera with horizontal field of view
    ``fov_degrees``, principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)`` plus ``offset``."""
    h, w = size
    f = w / (2.0 * math.tan(math.radians(fov_degrees) / 2))
    return torch.tensor(
        [[f, 0.0, (w - 1) / 2 + offset[0]], [0.0, f, (h - 1) / 2 + offset[1]], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def _look_at(centre: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """World-to-camera rotation of a camera at ``centre`` looking at ``point``, its y axis close to world y."""
    z = point - centre
    z = z / z.norm()
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    return torch.stack((x, y, z))


def sample_motion(
    kind: str, config: SceneConfig, depth: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source camera's extrinsics ``(R, t)`` (``X_source = R @ X + t``) for a motion preset.

    The target camera is the world frame; ``depth`` is the background's depth ``D``.
    """
    jitter = _jitter(generator, config.rotation_jitter)  # camera-to-world, applied in every preset
    zero = torch.zeros(3, dtype=torch.float64)
    scene_centre = torch.tensor([0.0, 0.0, _SCENE_CENTRE * depth], dtype=torch.float64)
    if kind == "stereo":
        centre = torch.tensor([_sign(generator) * _uniform(generator, *config.stereo_baseline) * depth, 0.0, 0.0])
        cam_to_world = jitter
    elif kind == "forward":
        side = 0.03 * depth
        centre = torch.tensor(
            [
                _uniform(generator, -side, side),
                _uniform(generator, -side, side),
                _sign(generator) * _uniform(generator, *config.forward_translation) * depth,
            ]
        )
        cam_to_world = jitter
    elif kind == "sideways":
        centre = _axis_in_image_plane(generator) * _uniform(generator, *config.sideways_translation) * depth
        look = float(torch.rand((), generator=generator)) < 0.5
        cam_to_world = (_look_at(centre.double(), scene_centre).T if look else torch.eye(3, dtype=torch.float64)) @ jitter
    elif kind == "wide":
        tilt = math.radians(_uniform(generator, -30.0, 30.0))
        axis = torch.tensor([math.sin(tilt), math.cos(tilt), 0.0], dtype=torch.float64)
        orbit = rotation_matrix(axis, _sign(generator) * math.radians(_uniform(generator, *config.wide_rotation)))
        centre = scene_centre + orbit @ (zero - scene_centre)
        cam_to_world = orbit @ jitter
    elif kind == "inplane":
        roll = rotation_matrix(
            torch.tensor([0.0, 0.0, 1.0]), _sign(generator) * math.radians(_uniform(generator, *config.inplane_rotation))
        )
        centre = _axis_in_image_plane(generator) * _uniform(generator, 0.0, 0.05) * depth
        cam_to_world = roll @ jitter
    else:
        raise ValueError(f"unknown motion {kind!r}, expected one of {', '.join(MOTIONS)}")
    rotation = cam_to_world.T.double()
    return rotation, -rotation @ centre.double()


def _crop_texture(photo: np.ndarray, aspect: float, generator: torch.Generator, min_share: float) -> torch.Tensor:
    """A random crop of ``photo`` with width/height ``aspect``, covering ``min_share``..1 of the largest such crop."""
    h0, w0 = photo.shape[:2]
    w_max = min(w0, h0 * aspect)
    share = _uniform(generator, min_share, 1.0)
    w = max(4, int(round(w_max * share)))
    h = max(4, min(h0, int(round(w / aspect))))
    y = int(torch.randint(0, h0 - h + 1, (), generator=generator))
    x = int(torch.randint(0, w0 - w + 1, (), generator=generator))
    return image_to_tensor(np.ascontiguousarray(photo[y : y + h, x : x + w]))


def _outline(kind: str, texture: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    """A ``(128, 128)`` bool mask over the plane's ``(u, v)``: which part of the parallelogram exists."""
    if kind == "rectangle":
        return None
    n = _OUTLINE_SIZE
    mask = np.zeros((n, n), np.uint8)
    if kind == "ellipse":
        axes = (int(n / 2 * _uniform(generator, 0.7, 1.0)), int(n / 2 * _uniform(generator, 0.7, 1.0)))
        cv2.ellipse(mask, (n // 2, n // 2), axes, 0.0, 0.0, 360.0, 1, -1)
    elif kind == "polygon":
        count = int(torch.randint(3, 10, (), generator=generator))
        angles = np.sort(torch.rand(count, generator=generator, dtype=torch.float64).numpy()) * 2 * np.pi
        radii = 0.5 + 0.5 * torch.rand(count, generator=generator, dtype=torch.float64).numpy()
        points = np.stack((np.cos(angles) * radii, np.sin(angles) * radii), 1) * (n / 2) + n / 2
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    elif kind == "segment":
        from skimage.segmentation import felzenszwalb

        small = cv2.resize(texture.permute(1, 2, 0).numpy(), (n, n), interpolation=cv2.INTER_AREA)
        labels = felzenszwalb(small, scale=float(_uniform(generator, 100.0, 400.0)), sigma=0.8, min_size=n * n // 50)
        mask = (labels == labels[n // 2, n // 2]).astype(np.uint8)
        if mask.mean() < 0.15:  # a sliver: fall back to an ellipse around the segment's pick point
            mask[:] = 0
            cv2.ellipse(mask, (n // 2, n // 2), (n // 2 - 2, n // 3), 0.0, 0.0, 360.0, 1, -1)
    else:
        raise ValueError(f"unknown outline {kind!r}, expected one of {', '.join(OUTLINES)}")
    return torch.from_numpy(mask.astype(bool))


def _frame_points(size: tuple[int, int], per_side: int = 8) -> torch.Tensor:
    """``(4·per_side, 2)`` pixel coordinates around the border of a frame (its outer edges)."""
    h, w = size
    s = torch.linspace(0.0, 1.0, per_side, dtype=torch.float64)
    xs, ys = s * w - 0.5, s * h - 0.5
    return torch.cat(
        (
            torch.stack((xs, torch.full_like(xs, -0.5)), 1),
            torch.stack((xs, torch.full_like(xs, h - 0.5)), 1),
            torch.stack((torch.full_like(ys, -0.5), ys), 1),
            torch.stack((torch.full_like(ys, w - 0.5), ys), 1),
        )
    )


def _background(
    cameras: tuple[Camera, Camera], depth: float, config: SceneConfig, photo: np.ndarray, generator: torch.Generator
) -> Plane:
    """A textured background plane at depth ``depth`` covering both views (tilt redrawn until it does)."""
    for attempt in range(20):
        tilt = config.background_tilt if attempt < 19 else 0.0
        normal = rotation_matrix(_axis_in_image_plane(generator), math.radians(_uniform(generator, 0.0, tilt))) @ torch.tensor(
            [0.0, 0.0, 1.0], dtype=torch.float64
        )
        anchor = torch.tensor([0.0, 0.0, depth], dtype=torch.float64)
        e1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        e1 = e1 - (e1 @ normal) * normal
        e1 = e1 / e1.norm()
        e2 = torch.linalg.cross(normal, e1)
        points, ok = [], True
        for camera in cameras:
            rays = camera.rays(_frame_points(camera.size))
            denom = rays @ normal
            lam = ((anchor - camera.center) @ normal) / denom
            if not bool(((denom.abs() > 1e-9) & (lam > 0) & (lam < 50 * depth)).all()):
                ok = False
                break
            points.append(camera.center + lam[:, None] * rays)
        if ok:
            break
    else:  # pragma: no cover - a frontal plane at positive depth always covers views under 170°
        raise RuntimeError("no background plane covers both views")
    coords = (torch.cat(points) - anchor) @ torch.stack((e1, e2), 1)
    low, high = coords.min(0).values, coords.max(0).values
    margin = 0.05 * (high - low)
    low, high = low - margin, high + margin
    extent = high - low
    texture = _crop_texture(photo, float(extent[0] / extent[1]), generator, min_share=0.85)
    return Plane(anchor + low[0] * e1 + low[1] * e2, extent[0] * e1, extent[1] * e2, texture)


def _layer(
    target: Camera,
    source: Camera,
    depth: float,
    config: SceneConfig,
    photo: np.ndarray,
    generator: torch.Generator,
) -> tuple[Plane, Plane] | None:
    """A foreground layer as each view sees it, or ``None`` if no draw stayed in front of both cameras."""
    h, w = target.size
    f = float(target.K[0, 0])
    for _ in range(5):
        z = _uniform(generator, *config.layer_depth) * depth
        pixel = torch.tensor([[_uniform(generator, -0.1, 1.1) * w, _uniform(generator, -0.1, 1.1) * h]])
        centre = target.center + z * target.rays(pixel)[0]
        width = _uniform(generator, *config.layer_width) * z * w / f
        height = width * _uniform(generator, 0.6, 1.6)
        spin = rotation_matrix(torch.tensor([0.0, 0.0, 1.0]), math.radians(_uniform(generator, -1, 1) * config.layer_spin))
        tilt = rotation_matrix(_axis_in_image_plane(generator), math.radians(_uniform(generator, 0.0, config.layer_tilt)))
        orientation = tilt @ spin
        axis_u = orientation @ torch.tensor([width, 0.0, 0.0], dtype=torch.float64)
        axis_v = orientation @ torch.tensor([0.0, height, 0.0], dtype=torch.float64)
        origin = centre - axis_u / 2 - axis_v / 2
        moving = float(torch.rand((), generator=generator)) < config.moving_probability
        motion = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        if moving:
            spin_about = rotation_matrix(_random_axis(generator), math.radians(_uniform(generator, 0.0, config.moving_rotation)))
            shift = _random_axis(generator) * _uniform(generator, 0.0, config.moving_translation) * z
            motion = spin_about, centre - spin_about @ centre + shift
        corners = torch.stack([origin, origin + axis_u, origin + axis_v, origin + axis_u + axis_v])
        moved_corners = corners @ motion[0].T + motion[1]
        _, depth_target = target.project(corners)
        _, depth_source = source.project(moved_corners)
        if bool((depth_target > 0.1 * depth).all() and (depth_source > 0.15 * depth).all()):
            break
    else:
        return None
    texture = _crop_texture(photo, width / height, generator, min_share=0.3)
    outline = _outline(_choice(generator, config.outlines), texture, generator)
    plane = Plane(origin, axis_u, axis_v, texture, outline)
    return plane, plane.moved(*motion)


def sample_scene(
    photos: list[np.ndarray],
    size: tuple[int, int],
    config: SceneConfig,
    generator: torch.Generator,
    motion: str | None = None,
) -> dict[str, Any]:
    """Draw a scene and its two cameras.

    Args:
        photos: ``(H, W, 3)`` uint8 photos; the first textures the background, the layers draw from all.
        size: ``(H, W)`` of both views.
        config: the ranges.
        generator: the only source of randomness.
        motion: the motion preset (``None``: drawn from ``config.motions``).

    Returns:
        ``target_planes``, ``source_planes`` (the same planes as each view sees them), the cameras
        ``target`` and ``source`` (:class:`~diffmatch.data.scene_render.Camera`, the target at the
        world origin), and ``motion``.
    """
    motion = motion if motion is not None else _choice(generator, config.motions)
    depth = _uniform(generator, *config.background_depth)
    fov = _uniform(generator, *config.fov)
    h, w = size

    def offset() -> tuple[float, float]:
        return (_uniform(generator, -0.02, 0.02) * w, _uniform(generator, -0.02, 0.02) * h)

    k_target = intrinsics(size, fov, offset())
    k_source = intrinsics(size, fov, offset())
    k_source[:2, :2] *= _uniform(generator, *config.zoom)
    eye = torch.eye(3, dtype=torch.float64)
    target = Camera(k_target, eye, torch.zeros(3, dtype=torch.float64), size)
    source = Camera(k_source, *sample_motion(motion, config, depth, generator), size)
    background = _background((target, source), depth, config, photos[0], generator)
    target_planes, source_planes = [background], [background]
    count = int(torch.randint(config.layers[0], config.layers[1] + 1, (), generator=generator))
    for _ in range(count):
        layer = _layer(target, source, depth, config, _choice(generator, photos), generator)
        if layer is not None:
            target_planes.append(layer[0])
            source_planes.append(layer[1])
    return {
        "target_planes": target_planes,
        "source_planes": source_planes,
        "target": target,
        "source": source,
        "motion": motion,
    }


class ScenePairs(Dataset):
    """Random but reproducible scene pairs with depth (module docstring), drawn from a photo folder.

    Item ``i`` depends only on ``(seed, epoch, i)`` (a private ``torch.Generator``, no global RNG):
    its background is photo ``i % num_images`` and its layers draw from all photos.

    Args:
        image_dir: folder of photos, or a list of folders.
        size: ``(H, W)`` of both views.
        seed: base seed.
        length: number of items; default ``pairs_per_image * num_images``.
        pairs_per_image: items per photo when ``length`` is not given.
        scenes: the generator's ranges (``None``: :class:`SceneConfig` defaults).
        photometric: augmentation ranges (``None``: :class:`PhotometricConfig` defaults).
        augment: apply photometric augmentation (independently to source and target).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike | list[str | os.PathLike],
        size: tuple[int, int] = (256, 256),
        seed: int = 0,
        length: int | None = None,
        pairs_per_image: int = 100,
        scenes: SceneConfig | None = None,
        photometric: PhotometricConfig | None = None,
        augment: bool = True,
    ) -> None:
        self.images = list_images(image_dir)
        if len(size) != 2 or min(int(s) for s in size) < 8:
            raise InputError(f"size must be (H, W) with both >= 8, got {size}")
        if pairs_per_image < 1 or (length is not None and length < 1):
            raise InputError(f"length and pairs_per_image must be >= 1, got {length} and {pairs_per_image}")
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.length = length if length is not None else pairs_per_image * len(self.images)
        self.scenes = scenes if scenes is not None else SceneConfig()
        self.photometric = photometric if photometric is not None else PhotometricConfig()
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Mix ``epoch`` into every item's seed (call before creating the DataLoader iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _generators(self, index: int) -> list[torch.Generator]:
        sequence = np.random.SeedSequence([self.seed, self.epoch, index, 3])
        return [torch.Generator().manual_seed(int(s)) for s in sequence.generate_state(3, dtype=np.uint64) >> 1]

    def _photos(self, index: int, generator: torch.Generator, count: int = 3) -> list[np.ndarray]:
        """The background photo of ``index`` and ``count`` random others for the layers."""
        picks = [index % len(self.images)]
        picks += [int(torch.randint(len(self.images), (), generator=generator)) for _ in range(count)]
        return [load_image(self.images[p]) for p in picks]

    def make_pair(self, index: int, motion: str | None = None) -> dict[str, Any]:
        """Build item ``index`` (with the given motion preset; ``None``: drawn from the config)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        geometry, photo_source, photo_target = self._generators(index)
        scene = sample_scene(self._photos(index, geometry), self.size, self.scenes, geometry, motion)
        target_cam, source_cam = scene["target"], scene["source"]
        s = self.scenes.supersample
        target, depth_target, _ = render(scene["target_planes"], target_cam, s)
        source, depth_source, _ = render(scene["source_planes"], source_cam, s)
        flow, mask = scene_flow(scene["target_planes"], scene["source_planes"], target_cam, source_cam)
        if self.augment:
            source = photometric_augment(source, self.photometric, photo_source)
            target = photometric_augment(target, self.photometric, photo_target)
        # Target camera = world: its points map to the source camera by the source's extrinsics.
        return {
            "source": source.clamp(0, 1).contiguous(),
            "target": target.clamp(0, 1).contiguous(),
            "flow": flow.float(),
            "mask": mask,
            "depth_source": depth_source.float(),
            "depth_target": depth_target.float(),
            "K_source": source_cam.K,
            "K_target": target_cam.K,
            "R": source_cam.R,
            "t": source_cam.t,
            "motion": scene["motion"],
            "name": str(index),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.make_pair(index)


class SceneBenchmark(ScenePairs):
    """A fixed scene benchmark at one level of :data:`SCENE_LEVELS` (``stereo``, ``medium``, ``wide``).

    Pairs do not depend on any epoch, have no photometric augmentation and no independently moving
    layers (every match follows the relative pose), 2 to 6 foreground layers (one plane alone would
    leave the pose ambiguous), and item ``i`` of a level uses the motion
    ``SCENE_LEVELS[level][i % len]``. Build it from held-out photos (``bundled_photos("val")``).

    Args:
        image_dir: photo folder(s).
        level: ``stereo`` (small-baseline stereo), ``medium`` (forward, sideways and in-plane
            motion) or ``wide`` (orbits of 15–40° about the scene).
        size: ``(H, W)`` of both views.
        num_pairs: pairs in the level.
        seed: base seed (each level mixes in its own name).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike | list[str | os.PathLike],
        level: str = "medium",
        size: tuple[int, int] = (384, 512),
        num_pairs: int = 30,
        seed: int = 0,
    ) -> None:
        if level not in SCENE_LEVELS:
            raise InputError(f"unknown scene level {level!r}, expected one of {', '.join(SCENE_LEVELS)}")
        level_seed = seed * 1000 + list(SCENE_LEVELS).index(level)
        super().__init__(image_dir, size=size, seed=level_seed, length=num_pairs, augment=False)
        self.level = level
        # At least two layers: a scene of one plane is a degenerate case for the essential matrix
        # (its pose is ambiguous even from exact matches), which would make the pose metric noise.
        self.scenes = SceneConfig(motions=SCENE_LEVELS[level], layers=(2, 6), moving_probability=0.0)

    def set_epoch(self, epoch: int) -> None:
        """A benchmark is fixed: epochs change nothing."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        motions = SCENE_LEVELS[self.level]
        item = self.make_pair(index, motions[index % len(motions)])
        item["name"] = f"{self.level}/{index:03d}"
        return item

