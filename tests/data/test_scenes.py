"""Scene pairs with depth: rendering, ground-truth flow, occlusion masks, poses, mixing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import smooth_photo_folder

from diffmatch.data import (
    MOTIONS,
    SCENE_LEVELS,
    DataConfig,
    MixedPairs,
    SceneBenchmark,
    SceneConfig,
    ScenePairs,
    SyntheticPairs,
    build_dataset,
)
from diffmatch.data.scene_render import Camera, Plane, render, rotation_matrix, scene_flow
from diffmatch.data.scenes import intrinsics
from diffmatch.errors import InputError
from diffmatch.geometry import homography_to_flow, warp
from diffmatch.geometry.estimation import estimate_relative_pose
from diffmatch.metrics import pose_error
from diffmatch.result import MatchResult

SIZE = (96, 128)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory):
    shapes = {"a.png": (240, 320), "b.jpg": (200, 200), "c.png": (300, 260)}
    return smooth_photo_folder(tmp_path_factory.mktemp("photos"), shapes, cell=8)


def _ncc(item: dict) -> float:
    """Normalised cross-correlation of the target and the source warped by the ground truth, on valid pixels."""
    warped, _ = warp(item["source"][None], item["flow"][None])
    mask = item["mask"]
    a, b = warped[0][:, mask], item["target"][:, mask]
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float((a * b).sum() / (a.norm() * b.norm()))


def _texture(seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def _frontal(depth: float, x0: float, y0: float, width: float, height: float, seed: int = 0) -> Plane:
    """A fronto-parallel rectangle at ``depth`` whose top-left corner is ``(x0, y0, depth)``."""
    f64 = torch.float64
    return Plane(
        torch.tensor([x0, y0, depth], dtype=f64),
        torch.tensor([width, 0.0, 0.0], dtype=f64),
        torch.tensor([0.0, height, 0.0], dtype=f64),
        _texture(seed),
    )


@pytest.mark.parametrize("motion", MOTIONS)
def test_ground_truth_warps_source_onto_target(image_dir, motion):
    # Moving layers too: their flow follows their own motion, and the mask is composed with it.
    dataset = ScenePairs(
        image_dir, size=SIZE, length=4, augment=False, scenes=SceneConfig(motions=(motion,), moving_probability=0.5)
    )
    for index in range(2):
        item = dataset[index]
        assert item["motion"] == motion
        assert item["mask"].float().mean() > 0.2
        assert _ncc(item) > 0.95


def test_item_layout_and_determinism(image_dir):
    dataset = ScenePairs(image_dir, size=SIZE, length=3, seed=5)
    item = dataset[1]
    assert item["source"].shape == item["target"].shape == (3, *SIZE)
    assert item["flow"].shape == (2, *SIZE) and item["flow"].dtype == torch.float32
    assert item["mask"].shape == SIZE and item["mask"].dtype == torch.bool
    assert item["depth_source"].shape == item["depth_target"].shape == SIZE
    assert item["K_source"].shape == item["K_target"].shape == item["R"].shape == (3, 3)
    assert item["t"].shape == (3,)
    assert torch.isfinite(item["flow"]).all()
    again = ScenePairs(image_dir, size=SIZE, length=3, seed=5)[1]
    assert torch.equal(item["source"], again["source"]) and torch.equal(item["flow"], again["flow"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["flow"], item["flow"])


def test_one_plane_flow_is_the_homography_flow():
    # Plane n·X = d seen from the target (world) and a source camera X_s = R X + t: the source pixel of
    # target pixel x is K_s (R + t nᵀ / d) K_t⁻¹ x.
    size = (40, 56)
    k_target = intrinsics(size, 60.0)
    k_source = intrinsics(size, 55.0, (1.5, -0.5))
    rotation = rotation_matrix(torch.tensor([0.2, 1.0, 0.1]), math.radians(8.0))
    translation = torch.tensor([0.7, -0.2, 0.3], dtype=torch.float64)
    tilt = rotation_matrix(torch.tensor([1.0, 0.3, 0.0]), math.radians(25.0))
    axis_u = tilt @ torch.tensor([80.0, 0.0, 0.0], dtype=torch.float64)
    axis_v = tilt @ torch.tensor([0.0, 80.0, 0.0], dtype=torch.float64)
    centre = torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64)
    plane = Plane(centre - (axis_u + axis_v) / 2, axis_u, axis_v, _texture())
    target = Camera(k_target, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), size)
    source = Camera(k_source, rotation, translation, size)
    flow, _ = scene_flow([plane], [plane], target, source)
    normal = plane.normal
    distance = float(normal @ plane.origin)
    homography = k_source @ (rotation + torch.outer(translation, normal) / distance) @ torch.linalg.inv(k_target)
    expected = homography_to_flow(homography, size)[0]
    assert (flow - expected).abs().max() < 1e-3


def test_occluding_layer_invalidates_exactly_the_hidden_background():
    # Stereo: source camera at x = -b (X_s = X + (b, 0, 0)), both fronto-parallel, same intrinsics, so a
    # point at depth Z moves by f·b/Z pixels along x. Background at depth 10, a layer at depth 5.
    size = (48, 64)
    k = intrinsics(size, 60.0)
    f, cx, cy = float(k[0, 0]), float(k[0, 2]), float(k[1, 2])
    b = 0.83
    background = _frontal(10.0, -50.0, -50.0, 100.0, 100.0, seed=1)
    layer = _frontal(5.0, -1.03, -0.77, 1.9, 1.4, seed=2)
    target = Camera(k, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), size)
    source = Camera(k, torch.eye(3, dtype=torch.float64), torch.tensor([b, 0.0, 0.0], dtype=torch.float64), size)
    flow, mask = scene_flow([background, layer], [background, layer], target, source)

    ys, xs = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    # The layer's extent in each image (x0, x1 along x; y0, y1 along y).
    tx0, tx1 = f * -1.03 / 5 + cx, f * (-1.03 + 1.9) / 5 + cx
    ty0, ty1 = f * -0.77 / 5 + cy, f * (-0.77 + 1.4) / 5 + cy
    sx0, sx1 = f * (-1.03 + b) / 5 + cx, f * (-1.03 + 1.9 + b) / 5 + cx
    on_layer = (xs >= tx0) & (xs <= tx1) & (ys >= ty0) & (ys <= ty1)
    source_x = np.where(on_layer, xs + f * b / 5, xs + f * b / 10)
    hidden = ~on_layer & (source_x >= sx0) & (source_x <= sx1) & (ys >= ty0) & (ys <= ty1)
    inside = source_x <= size[1] - 0.5
    expected = inside & ~hidden
    assert hidden.sum() > 20  # the test exercises occlusion
    assert np.array_equal(mask.numpy(), expected)
    np.testing.assert_allclose(flow[0].numpy(), source_x - xs, atol=1e-9)
    np.testing.assert_allclose(flow[1].numpy(), 0.0, atol=1e-9)


def test_depth_maps_and_pose_convention(image_dir):
    item = ScenePairs(image_dir, size=SIZE, length=2, augment=False, scenes=SceneConfig(motions=("wide",)))[0]
    k_t, k_s, rotation, translation = (item[k].double() for k in ("K_target", "K_source", "R", "t"))
    ys, xs = torch.meshgrid(torch.arange(SIZE[0]), torch.arange(SIZE[1]), indexing="ij")
    pixels = torch.stack((xs, ys, torch.ones_like(xs)), -1).double()
    # Back-project every valid target pixel with its depth, move it to the source camera, project.
    points = (pixels @ torch.linalg.inv(k_t).T) * item["depth_target"].double()[..., None]
    moved = points @ rotation.T + translation
    projected = moved @ k_s.T
    projected = projected[..., :2] / projected[..., 2:]
    mask = item["mask"]
    expected = projected - pixels[..., :2]
    assert (item["flow"].permute(1, 2, 0)[mask].double() - expected[mask]).abs().max() < 1e-2
    # ... and its depth in the source is what the source's depth map shows there (not occluded).
    src = projected[mask].round().long()
    src[:, 0].clamp_(0, SIZE[1] - 1)
    src[:, 1].clamp_(0, SIZE[0] - 1)
    depth_there = item["depth_source"].double()[src[:, 1], src[:, 0]]
    agree = (depth_there - moved[mask][:, 2]).abs() < 0.05 * moved[mask][:, 2]
    assert agree.float().mean() > 0.9


@pytest.mark.parametrize("level", list(SCENE_LEVELS))
def test_pose_from_exact_flow(image_dir, level):
    item = SceneBenchmark(image_dir, level=level, size=SIZE, num_pairs=2)[1]
    flow = item["flow"][None].clone()
    flow[:, :, ~item["mask"]] = float("nan")
    result = MatchResult.from_samples(flow[:, None])
    pose = estimate_relative_pose(
        result, item["K_source"], item["K_target"], source_size=SIZE, generator=torch.Generator().manual_seed(0)
    )
    rotation_error, translation_error = pose_error(pose.rotation, pose.translation, item["R"].numpy(), item["t"].numpy())
    assert rotation_error < 0.1 and translation_error < 0.1


def test_benchmark_is_fixed_and_levels_differ(image_dir):
    stereo = SceneBenchmark(image_dir, level="stereo", size=SIZE, num_pairs=2)
    wide = SceneBenchmark(image_dir, level="wide", size=SIZE, num_pairs=2)
    first = stereo[0]
    stereo.set_epoch(3)
    assert torch.equal(stereo[0]["target"], first["target"])
    assert first["name"] == "stereo/000" and first["motion"] == "stereo"
    # Stereo: the translation is mostly along x and the rotation small; wide: rotations of 15° or more.
    assert abs(float(first["t"][0])) > 3 * float(first["t"][1:].abs().max())
    angle = math.degrees(math.acos((float(torch.trace(wide[0]["R"])) - 1) / 2))
    assert angle >= 13.0
    with pytest.raises(InputError, match="unknown scene level"):
        SceneBenchmark(image_dir, level="huge")


def test_minified_texture_does_not_alias():
    # A one-texel checkerboard seen from far away: mip-mapping averages it to flat gray, point
    # sampling would keep a full-contrast random pattern.
    board = torch.from_numpy((np.indices((256, 256)).sum(0) % 2).astype(np.float32))[None].repeat(3, 1, 1)
    plane = Plane(
        torch.tensor([-5.0, -5.0, 20.0], dtype=torch.float64),
        torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64),
        torch.tensor([0.0, 10.0, 0.0], dtype=torch.float64),
        board,
    )
    size = (32, 32)
    camera = Camera(intrinsics(size, 60.0), torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), size)
    image, depth, index = render([plane], camera)
    seen = index == 0
    assert seen.float().mean() > 0.15  # 10 units wide at depth 20: about 18 texels per pixel
    assert image[:, seen].std() < 0.05
    assert abs(float(image[:, seen].mean()) - 0.5) < 0.05
    assert torch.allclose(depth[seen], torch.full_like(depth[seen], 20.0))


def test_scene_config_checks():
    with pytest.raises(ValueError, match="motions"):
        SceneConfig(motions=("teleport",))
    with pytest.raises(ValueError, match="layer_depth"):
        SceneConfig(layer_depth=(0.5, 1.2))
    with pytest.raises(ValueError, match="moving_probability"):
        SceneConfig(moving_probability=2.0)


def test_mixed_pairs_share_and_keys(image_dir):
    warps = SyntheticPairs(image_dir, size=SIZE, length=40)
    scenes = ScenePairs(image_dir, size=SIZE, length=40)
    none = MixedPairs(warps, scenes, 0.0)
    assert not any(none.from_second(i) for i in range(40))
    half = MixedPairs(warps, scenes, 0.5, seed=3)
    picks = [half.from_second(i) for i in range(40)]
    assert 8 < sum(picks) < 32
    assert picks == [MixedPairs(warps, scenes, 0.5, seed=3).from_second(i) for i in range(40)]
    index = picks.index(True)
    item = half[index]
    assert set(item) == {"source", "target", "flow", "mask"}
    assert torch.equal(item["flow"], scenes[index]["flow"])
    with pytest.raises(InputError, match="share"):
        MixedPairs(warps, scenes, 1.5)


def test_data_config_builds_scenes_and_mixtures(image_dir):
    scenes = build_dataset(DataConfig("scenes", root=str(image_dir), size=SIZE, length=3))
    assert isinstance(scenes, ScenePairs) and len(scenes) == 3
    mixed = build_dataset(
        DataConfig("synthetic", root=str(image_dir), size=SIZE, length=6, scene_share=0.5, scenes=SceneConfig(layers=(1, 2)))
    )
    assert isinstance(mixed, MixedPairs) and mixed.second.scenes.layers == (1, 2)
    batch = torch.utils.data.default_collate([mixed[i] for i in range(6)])
    assert batch["flow"].shape == (6, 2, *SIZE)
    with pytest.raises(InputError, match="scene_share"):
        build_dataset(DataConfig("benchmark", size=SIZE, scene_share=0.5))
