"""COCO cut-outs and independently moving objects (DenseMatching's augmentation)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from diffmatch.data.coco import CocoObject, CocoObjects, decode_segmentation
from diffmatch.data.moving_objects import (
    MovingObjects,
    MovingObjectsConfig,
    Placement,
    draw_placements,
    paste_objects,
)
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid, warp
from diffmatch.io import save_image

SIZE = (96, 128)
POLYGON = [30.0, 20.0, 90.0, 25.0, 100.0, 70.0, 55.0, 95.0, 25.0, 60.0]  # x, y, ... in the COCO image


def _texture(shape: tuple[int, int], seed: int, cell: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (shape[0] // cell, shape[1] // cell, 3), dtype=np.uint8)
    return cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """A COCO 2014 layout with one image and one polygon annotation (plus a crowd and a tiny one)."""
    (tmp_path / "images" / "train2014").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    save_image(
        tmp_path / "images" / "train2014" / "COCO_train2014_000000000001.jpg", _texture((120, 130), 7, 4)
    )
    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4000.0, "segmentation": [POLYGON]},
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 5000.0, "segmentation": [POLYGON]},
        {
            "id": 13,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 50.0,
            "segmentation": [[0, 0, 5, 0, 5, 5]],
        },
    ]
    data = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 120, "width": 130}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
    }
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    return tmp_path


def _background() -> dict:
    """A pair related by a known shift: target(x) = source(x + (4, -3)), valid where that is inside."""
    image = torch.from_numpy(_texture((140, 170), 1)).permute(2, 0, 1).float() / 255
    h, w = SIZE
    target = image[:, 20 : 20 + h, 20 : 20 + w]
    source = image[:, 23 : 23 + h, 16 : 16 + w]
    flow = torch.zeros(2, h, w)
    flow[0], flow[1] = 4.0, -3.0
    inside = coords_grid(1, h, w)[0] + flow
    mask = (inside[0] >= 0) & (inside[0] <= w - 1) & (inside[1] >= 0) & (inside[1] <= h - 1)
    return {"source": source.contiguous(), "target": target.contiguous(), "flow": flow, "mask": mask}


def _motion(size: tuple[int, int]) -> np.ndarray:
    """Rotation by 12° about the image centre, then a shift by (-20, 9): far from the background's."""
    h, w = size
    rotation = np.vstack((cv2.getRotationMatrix2D((w / 2, h / 2), 12.0, 1.0), [0, 0, 1]))
    return np.array([[1, 0, -20.0], [0, 1, 9.0], [0, 0, 1]]) @ rotation


def _ncc(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> float:
    a, b = a[:, valid].flatten(), b[:, valid].flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_coco_objects_keep_non_crowd_objects_above_min_area(coco_root: Path):
    objects = CocoObjects(coco_root, "train", "2014", min_area=1300)
    assert len(objects) == 1
    obj = objects[0]
    assert obj.image.shape[:2] == obj.mask.shape and obj.image.dtype == np.uint8
    assert obj.mask.shape == (76, 76)  # the polygon's bounding box, rows 20..95 and columns 25..100
    assert 0.5 < obj.mask.mean() < 0.9


def test_segmentation_decoding_agrees_with_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    h, w = 120, 130
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([POLYGON], h, w))).astype(bool)
    ours = decode_segmentation([POLYGON], h, w)
    assert (ours != reference).mean() < 0.02  # rasterisers differ only on the rim
    compressed = mask_utils.encode(np.asfortranarray(reference.astype(np.uint8)))
    rle = {"size": [h, w], "counts": compressed["counts"].decode()}
    assert np.array_equal(decode_segmentation(rle, h, w), reference)
    runs, flat, value, position = [], reference.T.ravel(), False, 0
    while position < flat.size:
        length = (
            int(np.argmax(flat[position:] != value))
            if (flat[position:] != value).any()
            else flat.size - position
        )
        runs.append(length)
        position += length
        value = not value
    assert np.array_equal(decode_segmentation({"size": [h, w], "counts": runs}, h, w), reference)


def test_bad_coco_folders_are_one_clear_line(tmp_path: Path, coco_root: Path):
    with pytest.raises(InputError, match="instances_train2014.json: not found"):
        CocoObjects(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no non-crowd object larger than 1000000"):
        CocoObjects(coco_root, min_area=1e6)
    (coco_root / "annotations" / "instances_train2014.json").write_text("{}")
    with pytest.raises(InputError, match="not a COCO instance file"):
        CocoObjects(coco_root)


def test_pasted_object_carries_its_motion_and_hides_the_background(coco_root: Path):
    obj = CocoObjects(coco_root)[0]
    pair = _background()
    motion = _motion(SIZE)
    centre = (80, 40)
    out = paste_objects(pair, [Placement(obj, centre, motion)])
    h, w = SIZE
    grid = coords_grid(1, h, w, dtype=torch.float64)[0]
    on_object = out["object_mask"]
    assert 1500 < int(on_object.sum()) < 5000

    # The object's pixels carry the object's motion, the others the background's.
    pts = torch.cat((grid.flatten(1), torch.ones(1, h * w, dtype=torch.float64)))
    object_flow = ((torch.from_numpy(motion) @ pts)[:2].reshape(2, h, w) - grid).float()
    assert torch.allclose(out["flow"][:, on_object], object_flow[:, on_object], atol=1e-4)
    assert torch.equal(out["flow"][:, ~on_object], pair["flow"][:, ~on_object])

    # Where the object sits in the source, computed independently: the warped polygon mask.
    placed = np.zeros((h, w), np.float32)
    oh, ow = obj.mask.shape
    x1, y1 = int(centre[0] - 0.5 * ow), int(centre[1] - 0.5 * oh)
    placed[y1 : y1 + oh, x1 : x1 + ow] = obj.mask
    in_source = cv2.warpPerspective(placed, motion, (w, h), flags=cv2.INTER_LINEAR) >= 0.5
    # Background target pixels whose match the object hides in the source are invalid ...
    match = (grid + pair["flow"]).round().long()
    inside = pair["mask"] & (match[0] >= 0) & (match[0] < w) & (match[1] >= 0) & (match[1] < h)
    hidden_at_match = torch.zeros(h, w, dtype=torch.bool)
    core = torch.from_numpy(cv2.erode(in_source.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool))
    hidden_at_match[inside] = core[match[1][inside], match[0][inside]]
    hidden = hidden_at_match & ~on_object
    assert int(hidden.sum()) > 300
    assert not out["mask"][hidden].any()
    # ... and background far from the object in both images stays valid.
    near = cv2.dilate(in_source.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    far = torch.zeros(h, w, dtype=torch.bool)
    far[inside] = ~torch.from_numpy(near)[match[1][inside], match[0][inside]]
    far &= ~torch.from_numpy(
        cv2.dilate(on_object.numpy().astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    )
    assert out["mask"][far].all()

    # Warping the source by the flow reproduces the target in both regions.
    warped, _ = warp(out["source"][None], out["flow"][None])
    for region in (on_object, ~on_object):
        valid = out["mask"] & region
        assert valid.sum() > 0.5 * region.sum()
        assert _ncc(warped[0], out["target"], valid) > 0.95
    # The source object really moved: without its flow the object region does not match.
    static, _ = warp(out["source"][None], pair["flow"][None])
    assert _ncc(static[0], out["target"], out["mask"] & on_object) < 0.5


def test_later_objects_cover_earlier_ones(coco_root: Path):
    obj = CocoObjects(coco_root)[0]
    first = Placement(obj, (60, 50), _motion(SIZE))
    second = Placement(obj, (70, 50), np.array([[1, 0, 6.0], [0, 1, -5.0], [0, 0, 1]]))
    out = paste_objects(_background(), [first, second])
    warped, _ = warp(out["source"][None], out["flow"][None])
    assert _ncc(warped[0], out["target"], out["mask"] & out["object_mask"]) > 0.95
    # Pixels of the second object carry its pure shift.
    shifted = (out["flow"] - torch.tensor([6.0, -5.0]).view(2, 1, 1)).abs().amax(0) < 1e-4
    assert shifted[out["object_mask"]].float().mean() > 0.5


def test_draws_follow_densematching():
    """Motions are S·R·T: rotation within ±30°, scale within exp(±0.3), and half are small shifts."""
    config = MovingObjectsConfig(root="unused")
    generator = torch.Generator().manual_seed(0)
    obj = CocoObject(np.zeros((10, 10, 3), np.uint8), np.ones((10, 10), bool), "x")
    small = 0
    for _ in range(200):
        (placement,) = draw_placements([obj], SIZE, config, generator)
        linear = placement.motion[:2, :2]
        scale = math.sqrt(abs(np.linalg.det(linear)))
        angle = math.degrees(math.atan2(linear[1, 0], linear[0, 0]))
        assert math.exp(-0.3) - 1e-9 <= scale <= math.exp(0.3) + 1e-9 and abs(angle) <= 30 + 1e-9
        # Undo scale and rotation: what is left is the translation of the object's centre.
        x, y = placement.centre
        h, w = SIZE
        rotation = np.vstack((cv2.getRotationMatrix2D((w / 2, h / 2), -angle, 1.0), [0, 0, 1]))
        s = np.array([[scale, 0, (1 - scale) * w / 4], [0, scale, (1 - scale) * h / 4], [0, 0, 1]])
        translation = np.linalg.inv(rotation) @ np.linalg.inv(s) @ placement.motion
        t = translation[:2, 2]
        small += bool(np.all(np.abs(t) <= 8))
    assert 70 < small < 140


def test_big_objects_are_shrunk():
    big = CocoObject(np.zeros((90, 120, 3), np.uint8), np.ones((90, 120), bool), "big")
    (placement,) = draw_placements(
        [big], SIZE, MovingObjectsConfig(root="unused"), torch.Generator().manual_seed(1)
    )
    assert placement.object.mask.sum() < big.mask.sum()


def test_moving_objects_dataset_is_seeded_and_consistent(coco_root: Path):
    pairs = [_background() for _ in range(4)]
    config = MovingObjectsConfig(root=str(coco_root), probability=1.0)
    dataset = MovingObjects(pairs, CocoObjects(coco_root), config, seed=3)
    a, b = dataset[2], dataset[2]
    assert torch.equal(a["flow"], b["flow"]) and torch.equal(a["mask"], b["mask"])
    dataset.set_epoch(1)
    assert len(dataset) == 4
    seen = 0
    for index in range(4):
        item = dataset[index]
        warped, _ = warp(item["source"][None], item["flow"][None])
        valid = item["mask"] & item["object_mask"]
        if valid.sum() > 50:
            seen += 1
            assert _ncc(warped[0], item["target"], valid) > 0.95
        assert _ncc(warped[0], item["target"], item["mask"] & ~item["object_mask"]) > 0.95
    assert seen >= 1
    none = MovingObjects(pairs, CocoObjects(coco_root), MovingObjectsConfig(root="x", probability=0.0))
    assert not none[0]["object_mask"].any() and torch.equal(none[0]["flow"], pairs[0]["flow"])


def test_config_validates():
    with pytest.raises(InputError, match="number"):
        MovingObjectsConfig(root="x", number=0)
    with pytest.raises(InputError, match="probability"):
        MovingObjectsConfig(root="x", probability=1.5)
