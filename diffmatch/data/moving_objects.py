"""Independently moving objects pasted onto a pair (DenseMatching's COCO augmentation).

For each object (DenseMatching's choices, as the official DiffMatch ETH3D model uses them):

* the object is pasted at a uniformly random position of the **target**, at its own pixel size;
  an object whose mask covers more than half of the image is first scaled by
  ``U(0.1, 0.4) · HW / area`` (the reference applies this area ratio as a linear factor);
* the **source** gets the same object moved by an affine ``M = S · R · T``: ``T`` a translation,
  half of the time a small one (``randrange(-8, 8)`` px per axis, mirrored if it leaves the
  frame) and otherwise to a uniformly random position; ``R`` a rotation by ``U(±30°)`` about the
  image centre; ``S`` a scaling by ``exp(U(±0.3))`` about ``(W/4, H/4)`` (no shear, flip or aspect
  change). ``M`` maps target pixels to source pixels, so the object's flow is ``M(x) - x``;
* later objects are pasted over earlier ones in both images.

Flow and mask are then composed: target pixels of an object carry its flow, the others keep the
background flow; a target pixel is valid only where its match lies in the source frame and shows
the same layer there (background or the same object), so background whose match the object
covers in the source, and object pixels whose match is covered or out of view, are masked out.
The reference builds that mask from the warped source mask, closed by a 3 × 3 dilation and erosion;
here it is the bilinearly sampled layer indicator, which must be fully that layer (≥ 0.99).

Deviations from the reference code, on purpose:

* the official DiffMatch setting sets ``compute_object_reprojection_mask = True`` but never passes
  it to DenseMatching's dataset, so its mask stays the background's (covered background counts as
  valid; DiffMatch trains without the mask anyway). Here the mask is the reprojection mask, as
  DenseMatching computes it for PDC-Net+ (``compute_object_reprojection_mask=True``);
* the reference thresholds the bilinearly warped source mask at ``> 0``; here ``≥ 0.5``, so the
  object keeps its size instead of growing by a pixel;
* an object that is entirely out of view in the source keeps the object's flow (invalid) instead
  of the background's (also invalid there); training never sees the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from diffmatch.data.coco import CocoObject, CocoObjects
from diffmatch.data.photos import image_to_tensor
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid, pixel_to_normalized

__all__ = [
    "MovingObjects",
    "MovingObjectsConfig",
    "Placement",
    "draw_placements",
    "object_motion",
    "paste_objects",
]


@dataclass(frozen=True)
class MovingObjectsConfig:
    """Where the objects come from and how many move how (defaults: the official DiffMatch's).

    Args:
        root: COCO folder (``annotations/instances_train2014.json`` and ``images/train2014/``);
            required.
        split: COCO split whose objects are used.
        version: COCO release, ``2014`` as in DenseMatching.
        number: objects pasted per pair (DiffMatch and DenseMatching's GLU-Net dynamic settings 1;
            PDC-Net+ 4).
        probability: chance that a pair gets objects at all (DiffMatch 0.9, DenseMatching 0.8).
        max_rotation: object rotation range, degrees (30; PDC-Net+ 90).
        min_area: smallest annotated object area kept, in px² (1300).
        max_log_scale: object scale is ``exp(U(±max_log_scale))`` (0.3).
        small_motion: half-range of the small translation, pixels (8).
    """

    root: str | None = None
    split: str = "train"
    version: str = "2014"
    number: int = 1
    probability: float = 0.9
    min_area: float = 1300.0
    max_rotation: float = 30.0
    max_log_scale: float = 0.3
    small_motion: int = 8

    def __post_init__(self) -> None:
        if self.number < 1:
            raise InputError(f"number of objects must be >= 1, got {self.number}")
        if not 0.0 <= self.probability <= 1.0:
            raise InputError(f"object probability must be in [0, 1], got {self.probability}")
        if self.max_rotation < 0 or self.max_log_scale < 0 or self.small_motion < 1:
            raise InputError(
                "max_rotation and max_log_scale must be >= 0 and small_motion >= 1, got "
                f"{self.max_rotation}, {self.max_log_scale}, {self.small_motion}"
            )


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(generator: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi)``."""
    return int(torch.randint(lo, hi, (), generator=generator))


def object_motion(
    size: tuple[int, int], centre: tuple[int, int], config: MovingObjectsConfig, generator: torch.Generator
) -> np.ndarray:
    """Draw the ``(3, 3)`` affine mapping target pixels of an object centred at ``centre=(x, y)`` to the source.

    See the module docstring for the distribution.
    """
    h, w = size
    x, y = centre
    if _uniform(generator, 0.0, 1.0) < 0.5:
        moved = []
        for coord, extent in ((x, w), (y, h)):
            step = _randint(generator, -config.small_motion, config.small_motion)
            moved.append(coord + step if 0 <= coord + step <= extent - 1 else coord - step)
        tx, ty = moved[0] - x, moved[1] - y
    else:
        tx, ty = _randint(generator, 0, w) - x, _randint(generator, 0, h) - y
    theta = _uniform(generator, -config.max_rotation, config.max_rotation)
    scale = math.exp(_uniform(generator, -config.max_log_scale, config.max_log_scale))
    translation = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    rotation = np.vstack((cv2.getRotationMatrix2D((w * 0.5, h * 0.5), theta, 1.0), [0.0, 0.0, 1.0]))
    scaling = np.array(
        [[scale, 0.0, (1.0 - scale) * 0.25 * w], [0.0, scale, (1.0 - scale) * 0.25 * h], [0.0, 0.0, 1.0]]
    )
    return scaling @ rotation @ translation


def _place(
    obj: CocoObject, size: tuple[int, int], centre: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The object's ``(3, H, W)`` image and ``(H, W)`` float mask in an image of ``size``, centred at ``centre``."""
    h, w = size
    oh, ow = obj.mask.shape
    x1, y1 = int(centre[0] - 0.5 * ow), int(centre[1] - 0.5 * oh)
    image = torch.zeros(3, h, w)
    mask = torch.zeros(h, w)
    ys, xs = slice(max(y1, 0), min(y1 + oh, h)), slice(max(x1, 0), min(x1 + ow, w))
    if ys.start < ys.stop and xs.start < xs.stop:
        patch = (slice(ys.start - y1, ys.stop - y1), slice(xs.start - x1, xs.stop - x1))
        image[:, ys, xs] = image_to_tensor(obj.image[patch])
        mask[ys, xs] = torch.from_numpy(obj.mask[patch].astype(np.float32))
    return image, mask


def _shrink(obj: CocoObject, area: int, generator: torch.Generator) -> CocoObject:
    """Scale an object whose mask exceeds half of ``area`` by ``U(0.1, 0.4) · area / mask area``."""
    pixels = int(obj.mask.sum())
    if pixels <= 0.5 * area:
        return obj
    factor = _uniform(generator, 0.1, 0.4) * area / pixels
    oh, ow = obj.mask.shape
    new = (max(1, round(ow * factor)), max(1, round(oh * factor)))
    image = cv2.resize(obj.image, new, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    mask = cv2.resize(obj.mask.astype(np.float32), new, interpolation=cv2.INTER_LINEAR) >= 0.5
    return CocoObject(image, mask, obj.name)


def _sample(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``image`` ``(C, H, W)`` at pixel coordinates ``(2, H', W')`` (zeros outside)."""
    grid = pixel_to_normalized(coords[None], tuple(image.shape[-2:])).permute(0, 2, 3, 1)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


@dataclass(frozen=True)
class Placement:
    """One pasted object: the cut-out, its centre in the target and its motion.

    Attributes:
        object: the (possibly shrunk) object.
        centre: ``(x, y)`` pixel of the target the object's box is centred on.
        motion: ``(3, 3)`` float64 affine mapping the object's target pixels to source pixels; its
            flow is ``motion(x) - x``.
    """

    object: CocoObject
    centre: tuple[int, int]
    motion: np.ndarray


def draw_placements(
    objects: list[CocoObject], size: tuple[int, int], config: MovingObjectsConfig, generator: torch.Generator
) -> list[Placement]:
    """Shrink, place and move each object as DenseMatching does (see the module docstring).

    Args:
        objects: the cut-outs, in pasting order.
        size: ``(H, W)`` of the pair.
        config: motion ranges.
        generator: source of every random draw.
    """
    h, w = size
    placements = []
    for obj in objects:
        obj = _shrink(obj, h * w, generator)
        centre = (_randint(generator, 0, w), _randint(generator, 0, h))
        placements.append(Placement(obj, centre, object_motion(size, centre, config, generator)))
    return placements


def paste_objects(pair: dict[str, Any], placements: list[Placement]) -> dict[str, Any]:
    """Paste objects onto a pair with their own motion and compose flow and mask.

    Args:
        pair: ``source``, ``target`` ``(3, H, W)`` float in ``[0, 1]``; ``flow`` ``(2, H, W)`` on
            the target grid, ``target(x) ≈ source(x + flow(x))`` in pixels, channel 0 = x; ``mask``
            ``(H, W)`` bool. Source and target must have the same size.
        placements: the objects, pasted in this order (later ones on top).

    Returns:
        A new dict with the same keys (others copied): the images with the objects, the composed
        ``flow`` (same convention) and ``mask``, plus ``object_mask`` ``(H, W)`` bool, the target
        pixels covered by an object.
    """
    source, target, flow = pair["source"], pair["target"], pair["flow"]
    size = tuple(target.shape[-2:])
    if tuple(source.shape[-2:]) != size or tuple(flow.shape) != (2, *size):
        raise InputError(
            f"pair must have source, target and flow of one size, got {tuple(source.shape)}, "
            f"{tuple(target.shape)}, {tuple(flow.shape)}"
        )
    h, w = size
    grid = coords_grid(1, h, w, dtype=torch.float64)[0]
    pts = torch.cat((grid.flatten(1), torch.ones(1, h * w, dtype=torch.float64)))
    source, target, flow = source.clone(), target.clone(), flow.clone()
    source_layer = torch.zeros(size, dtype=torch.long)
    target_layer = torch.zeros(size, dtype=torch.long)
    for layer, placement in enumerate(placements, start=1):
        image_t, mask_t = _place(placement.object, size, placement.centre)
        motion = torch.from_numpy(np.asarray(placement.motion, dtype=np.float64))
        # The source shows the pasted object moved by `motion`: source(M x) = target(x).
        back = (torch.linalg.inv(motion) @ pts)[:2].reshape(2, h, w).float()
        mask_s = _sample(mask_t[None], back)[0]
        inside_t, inside_s = mask_t >= 0.5, mask_s >= 0.5
        target = torch.where(inside_t, image_t, target)
        # As the reference, the source object is the pasted target seen through the motion, so its
        # rim blends with the target's pixels rather than with black.
        source = torch.where(inside_s, _sample(target, back), source)
        forward = (motion @ pts)[:2].reshape(2, h, w)
        flow = torch.where(inside_t, (forward - grid).float(), flow)
        target_layer[inside_t] = layer
        source_layer[inside_s] = layer
    # A match is valid where the source shows the same layer as the target pixel.
    mapping = grid.float() + flow
    one_hot = F.one_hot(source_layer, len(placements) + 1).permute(2, 0, 1).float()
    agreement = _sample(one_hot, mapping).gather(0, target_layer[None])[0]
    x, y = mapping[0], mapping[1]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    background_ok = torch.where(target_layer == 0, pair["mask"], torch.ones_like(pair["mask"]))
    out = dict(pair)
    out.update(
        source=source.clamp(0.0, 1.0),
        target=target.clamp(0.0, 1.0),
        flow=flow,
        mask=inside & (agreement >= 0.99) & background_ok,
        object_mask=target_layer > 0,
    )
    return out


class MovingObjects(Dataset):
    """Wrap a pair dataset so that each pair gets independently moving COCO objects.

    Item ``i`` depends only on ``(seed, epoch, i)`` and the wrapped item; a pair gets
    ``config.number`` objects with probability ``config.probability`` and is passed through
    otherwise (still with ``object_mask``).

    Args:
        pairs: dataset of dicts with ``source``, ``target``, ``flow``, ``mask`` (one size per pair).
        objects: where the objects come from (:class:`CocoObjects`).
        config: numbers and motion ranges.
        seed: base seed.

    Items: the wrapped item with ``source``, ``target`` ``(3, H, W)``, ``flow`` ``(2, H, W)`` on the
    target grid (``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x), ``mask`` and
    ``object_mask`` ``(H, W)`` bool.
    """

    def __init__(
        self, pairs: Dataset, objects: CocoObjects, config: MovingObjectsConfig, seed: int = 0
    ) -> None:
        self.pairs = pairs
        self.objects = objects
        self.config = config
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to the wrapped dataset and mix it into the object draws."""
        self.epoch = int(epoch)
        if hasattr(self.pairs, "set_epoch"):
            self.pairs.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        sequence = np.random.SeedSequence([self.seed, self.epoch, index, 0x0B7EC7])
        generator = torch.Generator().manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1))
        chosen: list[CocoObject] = []
        if _uniform(generator, 0.0, 1.0) < self.config.probability:
            chosen = [
                self.objects[_randint(generator, 0, len(self.objects))] for _ in range(self.config.number)
            ]
        size = tuple(pair["target"].shape[-2:])
        return paste_objects(pair, draw_placements(chosen, size, self.config, generator))
