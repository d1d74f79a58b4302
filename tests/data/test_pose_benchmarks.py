"""MegaDepth-1500 and ScanNet-1500 loaders on tiny fixtures written in LoFTR's released layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffmatch.data import MegaDepth1500, ScanNet1500
from diffmatch.data.pose_benchmarks import MEGADEPTH_1500_SCENES
from diffmatch.errors import InputError

POINT = np.array([0.4, -0.3, 6.0])  # a world point in front of every fixture camera


def _rigid(rvec: tuple[float, float, float], tvec: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
    matrix[:3, 3] = tvec
    return matrix


def _project(K: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = K @ X
    return x[:2] / x[2]


def _write_image(path: Path, hw: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR))


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        array[i] = value
    return array


# ------------------------------------------------------------------------------------------ MegaDepth
MD_IMAGES = {  # stem: (H, W), K, world-to-camera pose
    "111_aa_o": (
        (30, 40),
        np.array([[50.0, 0, 20], [0, 52.0, 15], [0, 0, 1]]),
        _rigid((0.0, 0.1, 0.0), (0.2, 0.0, 0.5)),
    ),
    "222_bb_o": (
        (36, 28),
        np.array([[45.0, 0, 14], [0, 45.0, 18], [0, 0, 1]]),
        _rigid((0.05, -0.2, 0.1), (-0.5, 0.1, 0.3)),
    ),
    "333_cc_o": (
        (24, 32),
        np.array([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]]),
        _rigid((-0.1, 0.0, 0.2), (0.1, 0.4, -0.2)),
    ),
}


def _write_scene_info(path: Path, scene_id: str, pairs: list[tuple[str, str]]) -> None:
    """A LoFTR scene-info file: a pickled dict (despite ``.npz``) of object arrays plus ``pair_infos``."""
    stems = [None, *MD_IMAGES]  # index 0: an image in no pair, stored as None as in LoFTR's files
    info = {
        "image_paths": _object_array([s and f"Undistorted_SfM/{scene_id}/images/{s}.jpg" for s in stems]),
        "depth_paths": _object_array(
            [s and f"phoenix/S6/zl548/MegaDepth_v1/{scene_id}/dense0/depths/{s}.h5" for s in stems]
        ),
        "intrinsics": _object_array([s and MD_IMAGES[s][1] for s in stems]),
        "poses": _object_array([s and MD_IMAGES[s][2] for s in stems]),
        "pair_infos": [
            (np.array([stems.index(a), stems.index(b)]), np.float64(0.25), np.array([1.0, 2.0, 3.0, 4.0]))
            for a, b in pairs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(info, protocol=4))


def _megadepth(root: Path, scenes: dict[str, list[tuple[str, str]]], list_file: bool = True) -> Path:
    index = root / "megadepth_test_1500_scene_info"
    for name, pairs in scenes.items():
        scene_id = name.split("_")[0]
        _write_scene_info(index / f"{name}.npz", scene_id, pairs)
        for seed, (stem, (hw, _, _)) in enumerate(MD_IMAGES.items()):
            _write_image(root / "Undistorted_SfM" / scene_id / "images" / f"{stem}.jpg", hw, seed)
    if list_file:
        (index / "megadepth_test_1500.txt").write_text("\n".join(scenes))  # no final newline, as released
    return root


@pytest.fixture
def megadepth(tmp_path: Path) -> Path:
    scenes = {
        "0022_0.5_0.7": [("333_cc_o", "111_aa_o")],
        "0015_0.1_0.3": [("111_aa_o", "222_bb_o"), ("222_bb_o", "333_cc_o")],
    }
    return _megadepth(tmp_path / "megadepth_test_1500", scenes)


def test_megadepth_items(megadepth: Path) -> None:
    dataset = MegaDepth1500(megadepth)
    assert len(dataset) == 3
    assert [dataset[i]["name"] for i in range(3)] == [  # list-file order, then pair_infos order
        "0022_0.5_0.7/333_cc_o-111_aa_o",
        "0015_0.1_0.3/111_aa_o-222_bb_o",
        "0015_0.1_0.3/222_bb_o-333_cc_o",
    ]
    item = dataset[1]
    assert set(item) == {"source", "target", "K_source", "K_target", "R", "t", "scene", "name"}
    assert item["source"].shape == (3, 30, 40) and item["target"].shape == (3, 36, 28)  # stored sizes
    for key in ("source", "target"):
        assert item[key].dtype == torch.float32 and 0 <= item[key].min() and item[key].max() <= 1
    assert item["K_source"].dtype == item["R"].dtype == item["t"].dtype == torch.float64
    assert item["R"].shape == (3, 3) and item["t"].shape == (3,)
    np.testing.assert_array_equal(item["K_source"].numpy(), MD_IMAGES["111_aa_o"][1])
    np.testing.assert_array_equal(item["K_target"].numpy(), MD_IMAGES["222_bb_o"][1])
    assert item["scene"] == "0015_0.1_0.3"


def test_megadepth_pose_is_inverse_of_loftr_T_0to1(megadepth: Path) -> None:
    item = MegaDepth1500(megadepth)[1]
    (_, K0, T0), (_, K1, T1) = MD_IMAGES["111_aa_o"], MD_IMAGES["222_bb_o"]
    T_0to1 = T1 @ np.linalg.inv(T0)  # LoFTR: world-to-camera poses, image 0 -> image 1
    T_1to0 = np.eye(4)
    T_1to0[:3, :3], T_1to0[:3, 3] = item["R"].numpy(), item["t"].numpy()
    np.testing.assert_allclose(T_1to0 @ T_0to1, np.eye(4), atol=1e-12)
    # A world point seen by the target camera, moved with (R, t), lands where the source camera sees it.
    X_target = (T1 @ np.append(POINT, 1.0))[:3]
    X_source = item["R"].numpy() @ X_target + item["t"].numpy()
    expected = _project(K0, (T0 @ np.append(POINT, 1.0))[:3])
    np.testing.assert_allclose(_project(item["K_source"].numpy(), X_source), expected, atol=1e-9)
    assert _project(K1, X_target) == pytest.approx(_project(item["K_target"].numpy(), X_target))


def test_megadepth_layout_variants(tmp_path: Path) -> None:
    # DKM/RoMa: index files directly in root, no list file; the tar extracted inside root.
    root = tmp_path / "data"
    scenes = {name: [("111_aa_o", "222_bb_o")] for name in reversed(MEGADEPTH_1500_SCENES)}
    _megadepth(root / "megadepth_test_1500", scenes, list_file=False)
    for npz in (root / "megadepth_test_1500" / "megadepth_test_1500_scene_info").iterdir():
        npz.rename(root / npz.name)
    dataset = MegaDepth1500(root)
    assert [pair.scene for pair in dataset.pairs] == list(MEGADEPTH_1500_SCENES)  # LoFTR's order
    assert dataset[0]["source"].shape == (3, 30, 40)
    # LoFTR's own layout: images in data/megadepth/test, index files in its assets folder.
    assert len(MegaDepth1500(root / "megadepth_test_1500", index_dir=root)) == 5


def test_megadepth_limit(megadepth: Path) -> None:
    dataset = MegaDepth1500(megadepth, limit=2)
    assert len(dataset) == 2 and dataset[1]["name"] == "0015_0.1_0.3/111_aa_o-222_bb_o"
    assert len(MegaDepth1500(megadepth, limit=10)) == 3
    with pytest.raises(InputError, match="limit"):
        MegaDepth1500(megadepth, limit=0)


# ------------------------------------------------------------------------------------------ ScanNet
SCANNET_FRAMES = {  # (scene, frame): camera-to-world pose
    ("scene0707_00", 15): _rigid((0.0, 0.2, 0.0), (1.0, 0.5, 1.2)),
    ("scene0707_00", 585): _rigid((0.1, -0.1, 0.05), (1.3, 0.4, 1.0)),
    ("scene0708_00", 60): _rigid((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("scene0708_00", 1125): _rigid((0.0, 0.3, 0.0), (0.4, 0.0, 0.1)),
}
SCANNET_K = {  # LoFTR's intrinsics.npz: colour intrinsics already scaled to 640x480
    "scene0707_00": np.array(
        [[575.66419753, 0.0, 320.54074074], [0.0, 578.05289256, 240.37933884], [0.0, 0.0, 1.0]]
    ),
    "scene0708_00": np.array(
        [[575.49135802, 0.0, 321.41333333], [0.0, 578.23636364, 242.2785124], [0.0, 0.0, 1.0]]
    ),
}
SCANNET_PAIRS = [("scene0707_00", 15, 585), ("scene0708_00", 60, 1125)]


def _scannet(root: Path, index_dir: Path | None = None) -> Path:
    scenes = root / "scannet_test_1500"
    for seed, ((scene, frame), cam_to_world) in enumerate(SCANNET_FRAMES.items()):
        _write_image(scenes / scene / "color" / f"{frame}.jpg", (968, 1296), seed)
        (scenes / scene / "pose").mkdir(parents=True, exist_ok=True)
        np.savetxt(scenes / scene / "pose" / f"{frame}.txt", cam_to_world, fmt="%.9f")
    names = np.array([(int(s[5:9]), int(s[10:12]), f0, f1) for s, f0, f1 in SCANNET_PAIRS], np.uint16)
    rel_pose = np.stack(
        [
            (np.linalg.inv(SCANNET_FRAMES[s, f1]) @ SCANNET_FRAMES[s, f0])[:3].ravel()
            for s, f0, f1 in SCANNET_PAIRS
        ]
    ).astype(np.float32)
    index_dir = index_dir or root
    index_dir.mkdir(parents=True, exist_ok=True)
    np.savez(index_dir / "test.npz", name=names, rel_pose=rel_pose)
    np.savez(index_dir / "intrinsics.npz", **SCANNET_K)
    return root


@pytest.fixture
def scannet(tmp_path: Path) -> Path:
    return _scannet(tmp_path / "scannet")


def test_scannet_items(scannet: Path) -> None:
    dataset = ScanNet1500(scannet)
    assert len(dataset) == 2
    item = dataset[0]
    assert set(item) == {"source", "target", "K_source", "K_target", "R", "t", "scene", "name"}
    assert item["name"] == "scene0707_00/15-585" and item["scene"] == "scene0707_00"
    assert item["source"].shape == item["target"].shape == (3, 480, 640)  # resized from 1296x968
    assert item["source"].dtype == torch.float32 and 0 <= item["source"].min() and item["source"].max() <= 1
    assert item["K_source"].dtype == item["R"].dtype == item["t"].dtype == torch.float64
    # The released intrinsics describe 640x480 already: used as given at LoFTR's size.
    np.testing.assert_array_equal(item["K_source"].numpy(), SCANNET_K["scene0707_00"])
    np.testing.assert_array_equal(item["K_target"].numpy(), SCANNET_K["scene0707_00"])
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["source"].shape == (2, 3, 480, 640) and batch["R"].shape == (2, 3, 3)


def test_scannet_intrinsics_follow_the_resize(scannet: Path) -> None:
    item = ScanNet1500(scannet, size=(240, 320))[1]
    assert item["source"].shape == (3, 240, 320)
    K = SCANNET_K["scene0708_00"]
    expected = np.array(  # pixel centres at integers: x' = (x + 0.5) / 2 - 0.5
        [[K[0, 0] / 2, 0, (K[0, 2] + 0.5) / 2 - 0.5], [0, K[1, 1] / 2, (K[1, 2] + 0.5) / 2 - 0.5], [0, 0, 1]]
    )
    np.testing.assert_allclose(item["K_source"].numpy(), expected, rtol=1e-12)
    with pytest.raises(InputError, match="size"):
        ScanNet1500(scannet, size=(0, 640))


def test_scannet_pose_is_inverse_of_loftr_T_0to1(scannet: Path) -> None:
    item = ScanNet1500(scannet)[1]
    C0, C1 = SCANNET_FRAMES["scene0708_00", 60], SCANNET_FRAMES["scene0708_00", 1125]
    T_0to1 = np.linalg.inv(C1) @ C0  # LoFTR: world-to-camera = inverse of the camera-to-world pose file
    T_1to0 = np.eye(4)
    T_1to0[:3, :3], T_1to0[:3, 3] = item["R"].numpy(), item["t"].numpy()
    np.testing.assert_allclose(T_1to0 @ T_0to1, np.eye(4), atol=1e-8)
    X_target = (np.linalg.inv(C1) @ np.append(POINT, 1.0))[:3]
    X_source = item["R"].numpy() @ X_target + item["t"].numpy()
    K = item["K_source"].numpy()
    expected = _project(K, (np.linalg.inv(C0) @ np.append(POINT, 1.0))[:3])
    np.testing.assert_allclose(_project(K, X_source), expected, atol=1e-6)


def test_scannet_layout_variants_and_limit(tmp_path: Path) -> None:
    # LoFTR's assets/scannet_test_1500 copied over the extracted tar.
    root = _scannet(tmp_path / "scannet", index_dir=tmp_path / "scannet" / "scannet_test_1500")
    assert len(ScanNet1500(root)) == 2
    # LoFTR's data/scannet/test (scene folders directly in root), index files elsewhere.
    dataset = ScanNet1500(root / "scannet_test_1500", index_dir=root / "scannet_test_1500", limit=1)
    assert len(dataset) == 1 and dataset[0]["name"] == "scene0707_00/15-585"
    with pytest.raises(InputError, match="limit"):
        ScanNet1500(root, limit=-1)


def test_scannet_scene_without_intrinsics(scannet: Path) -> None:
    np.savez(scannet / "intrinsics.npz", scene0707_00=SCANNET_K["scene0707_00"])
    with pytest.raises(InputError, match="no intrinsics for scene0708_00"):
        ScanNet1500(scannet)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("dataset", "archive", "layout"),
    [
        (MegaDepth1500, "megadepth_test_1500.tar", "Undistorted_SfM"),
        (ScanNet1500, "scannet_test_1500.tar", "test.npz"),
    ],
)
def test_missing_root_is_one_line_with_download_hint(
    tmp_path: Path, dataset, archive: str, layout: str
) -> None:
    with pytest.raises(InputError) as info:
        dataset(tmp_path / "absent")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "absent") in message
    assert archive in message and "drive.google.com" in message and "zju3dv/LoFTR" in message
    assert layout in message


def test_missing_megadepth_index(megadepth: Path) -> None:
    missing = megadepth / "megadepth_test_1500_scene_info" / "0015_0.1_0.3.npz"
    missing.unlink()
    with pytest.raises(InputError) as info:
        MegaDepth1500(megadepth)
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and "megadepth_test_1500_scene_info" in message
    for name in (megadepth / "megadepth_test_1500_scene_info").iterdir():
        name.unlink()
    with pytest.raises(InputError, match="index files not found"):
        MegaDepth1500(megadepth)


@pytest.mark.parametrize("name", ["test.npz", "intrinsics.npz"])
def test_missing_scannet_index(scannet: Path, name: str) -> None:
    (scannet / name).unlink()
    with pytest.raises(InputError) as info:
        ScanNet1500(scannet)
    message = str(info.value)
    assert "\n" not in message and str(scannet / name) in message and "assets/scannet_test_1500" in message


def test_megadepth_rejects_pickles_with_code(megadepth: Path) -> None:
    path = megadepth / "megadepth_test_1500_scene_info" / "0015_0.1_0.3.npz"
    path.write_bytes(pickle.dumps({"image_paths": Path("x")}))  # any non-numpy global is refused
    with pytest.raises(InputError, match="refusing to load"):
        MegaDepth1500(megadepth)


def test_missing_megadepth_image_fails_at_getitem(megadepth: Path) -> None:
    image = megadepth / "Undistorted_SfM" / "0015" / "images" / "222_bb_o.jpg"
    image.unlink()
    dataset = MegaDepth1500(megadepth)  # construction reads the index only
    assert dataset[0]["name"] == "0022_0.5_0.7/333_cc_o-111_aa_o"
    with pytest.raises(InputError) as info:
        dataset[1]
    assert "\n" not in str(info.value) and str(image) in str(info.value)


@pytest.mark.parametrize("folder", ["color", "pose"])
def test_missing_scannet_file_fails_at_getitem(scannet: Path, folder: str) -> None:
    suffix = ".jpg" if folder == "color" else ".txt"
    missing = scannet / "scannet_test_1500" / "scene0708_00" / folder / f"1125{suffix}"
    missing.unlink()
    dataset = ScanNet1500(scannet)
    assert dataset[0]["name"] == "scene0707_00/15-585"
    with pytest.raises(InputError) as info:
        dataset[1]
    assert "\n" not in str(info.value) and str(missing) in str(info.value)
