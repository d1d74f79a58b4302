"""MegaDepth-1500 and ScanNet-1500: the relative-pose test splits released with LoFTR (CVPR 2021).

Both are pose-only benchmarks (DKM, RoMa and glue-factory reuse the same 1500 pairs): an item holds
the two images, their intrinsics and the ground-truth relative pose, and no ``flow`` or ``mask``.

Conventions shared by both datasets:

* image 0 of LoFTR's pair is the ``source``, image 1 the ``target``;
* ``R``, ``t`` map **target camera coordinates to source camera coordinates**,
  ``X_source = R @ X_target + t``: the inverse of LoFTR's ``T_0to1`` (its ``T_1to0``). Pixels then
  satisfy the epipolar constraint ``x̂_s^T [t]_x R x̂_t = 0`` with ``x̂ = K^{-1} (u, v, 1)``;
* ``t`` is in the units of the reconstruction: metres for ScanNet, an arbitrary SfM scale for
  MegaDepth (only its direction is meaningful);
* intrinsics are those of the *returned* images, taken as given from the index files (COLMAP
  for MegaDepth, ScanNet's colour calibration for ScanNet). This project puts pixel centres at
  integer coordinates; COLMAP puts them at half-integers, and this half-pixel offset is not
  corrected, so that numbers stay comparable with LoFTR, DKM and RoMa, which use them the same way.

Download (LoFTR's README): ``testdata/megadepth_test_1500.tar`` and ``testdata/scannet_test_1500.tar``
from LoFTR's Google Drive, and the index files from LoFTR's ``assets/`` folder on GitHub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from diffmatch.data.photos import image_to_tensor
from diffmatch.data.safe_pickle import load_array_pickle
from diffmatch.errors import InputError
from diffmatch.io import load_image

__all__ = [
    "MEGADEPTH_1500_SCENES",
    "SCANNET_1500_SIZE",
    "MegaDepth1500",
    "ScanNet1500",
    "load_megadepth_scene_info",
]

# The order of LoFTR's ``megadepth_test_1500.txt``, used when the list file is absent.
MEGADEPTH_1500_SCENES: tuple[str, ...] = (
    "0022_0.1_0.3",
    "0015_0.1_0.3",
    "0015_0.3_0.5",
    "0022_0.3_0.5",
    "0022_0.5_0.7",
)
SCANNET_1500_SIZE: tuple[int, int] = (480, 640)  # (H, W) that LoFTR's intrinsics.npz describes

_DRIVE = "https://drive.google.com/drive/folders/1DOcOPZb3-5cWxLqn256AhwUVjBPifhuf"
_ASSETS = "https://github.com/zju3dv/LoFTR/tree/master/assets"
_MEGADEPTH_HINT = (
    f"download testdata/megadepth_test_1500.tar from LoFTR's Google Drive ({_DRIVE}) and LoFTR's "
    f"assets/megadepth_test_1500_scene_info ({_ASSETS}/megadepth_test_1500_scene_info); expected "
    "<root>/Undistorted_SfM/<scene>/images/*.jpg and "
    "<root>/megadepth_test_1500_scene_info/{megadepth_test_1500.txt,<name>.npz}"
)
_SCANNET_HINT = (
    f"download testdata/scannet_test_1500.tar from LoFTR's Google Drive ({_DRIVE}) and test.npz, "
    f"intrinsics.npz from LoFTR's assets/scannet_test_1500 ({_ASSETS}/scannet_test_1500); expected "
    "<root>/{test.npz,intrinsics.npz} and "
    "<root>/scannet_test_1500/sceneXXXX_XX/{color/<frame>.jpg,pose/<frame>.txt}"
)
class _Pair(NamedTuple):
    scene: str
    name: str
    paths: tuple[Path, Path]  # source, target image
    intrinsics: tuple[np.ndarray, np.ndarray]  # (3, 3) float64 each
    R: np.ndarray  # (3, 3) float64, target -> source
    t: np.ndarray  # (3,) float64


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1 or None, got {limit}")


def _first_dir_with(candidates: list[Path], entry: str) -> Path | None:
    return next((folder for folder in candidates if (folder / entry).exists()), None)


def _item(pair: _Pair, source: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    return {
        "source": image_to_tensor(source),
        "target": image_to_tensor(target),
        "K_source": torch.from_numpy(pair.intrinsics[0].copy()),
        "K_target": torch.from_numpy(pair.intrinsics[1].copy()),
        "R": torch.from_numpy(pair.R.copy()),
        "t": torch.from_numpy(pair.t.copy()),
        "scene": pair.scene,
        "name": pair.name,
    }


def load_megadepth_scene_info(path: str | os.PathLike) -> dict[str, Any]:
    """Read one LoFTR MegaDepth scene-info file (``megadepth_test_1500_scene_info/<name>.npz``).

    Despite the extension, LoFTR's files are pickled dicts (what ``np.load(..., allow_pickle=True)``
    falls back to) with ``image_paths``, ``depth_paths``, ``intrinsics`` and ``poses``: object arrays
    indexed by image (``None`` for images in no pair; intrinsics ``(3, 3)``, poses ``(4, 4)``
    world-to-camera), and ``pair_infos``: a list of ``(indices (2,), overlap, central_matches)``.
    Only containers and numpy arrays are unpickled.

    Raises:
        InputError: missing file, a disallowed or corrupt pickle, or missing keys.
    """
    path = Path(path)
    info = load_array_pickle(path, "MegaDepth-1500 index file (a LoFTR scene-info pickle)", _MEGADEPTH_HINT)
    keys = ("image_paths", "intrinsics", "poses", "pair_infos")
    if not isinstance(info, dict) or any(key not in info for key in keys):
        raise InputError(f"{path}: expected a dict with the keys {keys}")
    return info


class MegaDepth1500(Dataset):
    """The 1500 MegaDepth pairs (scenes 0015 and 0022, three overlap bins) of LoFTR's test split.

    Layout (``<root>`` is the extracted ``megadepth_test_1500`` folder, or a folder holding it)::

        <root>/Undistorted_SfM/{0015,0022}/images/*.jpg
        <root>/megadepth_test_1500_scene_info/megadepth_test_1500.txt
        <root>/megadepth_test_1500_scene_info/{0015_0.1_0.3,0015_0.3_0.5,0022_0.1_0.3,...}.npz

    The images may also sit in ``<root>/megadepth_test_1500/Undistorted_SfM`` (the tar extracted
    inside ``<root>``), and the index files directly in ``<root>`` (DKM's and RoMa's layout), or
    anywhere with ``index_dir`` (e.g. a LoFTR checkout's ``assets/megadepth_test_1500_scene_info``).
    Without ``megadepth_test_1500.txt`` the five released index files are read in its order.

    Images keep their stored resolution and ``K`` are COLMAP's, as stored (LoFTR's evaluation
    resizes the longest side to 840 and scales ``K``; any such resize is left to the caller).

    Args:
        root: the MegaDepth-1500 folder.
        index_dir: folder of the index files, if not one of the places above.
        limit: keep only the first ``limit`` pairs (in LoFTR's order).

    Items are dicts: ``source``, ``target`` ``(3, H, W)`` float32 RGB in ``[0, 1]`` (LoFTR's image 0
    and 1); ``K_source``, ``K_target`` ``(3, 3)`` float64; ``R`` ``(3, 3)`` and ``t`` ``(3,)``
    float64 with ``X_source = R @ X_target + t`` (the inverse of LoFTR's ``T_0to1``); ``scene`` the
    index file's stem (``"0015_0.1_0.3"``); ``name`` ``"<scene>/<stem0>-<stem1>"``.

    Raises:
        InputError: missing ``root`` or index file, a malformed index, a bad ``limit``; a missing
            image raises when its pair is read, so an evaluation can skip it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        index_dir: str | os.PathLike | None = None,
        limit: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: MegaDepth-1500 folder not found; {_MEGADEPTH_HINT}")
        _check_limit(limit)
        candidates = [self.root / "megadepth_test_1500", self.root]
        self.image_root = _first_dir_with(candidates, "Undistorted_SfM") or self.root
        if index_dir is not None:
            index = Path(index_dir)
        else:
            info_dir = "megadepth_test_1500_scene_info"
            places = [self.root / info_dir, self.root / "megadepth_test_1500" / info_dir, self.root]
            index = _first_dir_with(places, "megadepth_test_1500.txt") or _first_dir_with(
                places, f"{MEGADEPTH_1500_SCENES[0]}.npz"
            )
            if index is None:
                raise InputError(f"{places[0]}: MegaDepth-1500 index files not found; {_MEGADEPTH_HINT}")
        list_file = index / "megadepth_test_1500.txt"
        if list_file.is_file():
            names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        else:
            names = list(MEGADEPTH_1500_SCENES)
        self.pairs: list[_Pair] = []
        for name in names:
            self.pairs.extend(self._read_scene(index / f"{name}.npz", name))
        self.pairs = self.pairs[:limit]

    def _read_scene(self, path: Path, scene: str) -> list[_Pair]:
        info = load_megadepth_scene_info(path)
        count = len(info["image_paths"])
        pairs = []
        for number, pair_info in enumerate(info["pair_infos"]):
            try:
                indices = [int(i) for i in np.asarray(pair_info[0]).ravel()]
                if len(indices) != 2 or not all(0 <= i < count for i in indices):
                    raise ValueError(f"image indices {indices} not two of 0..{count - 1}")
                if any(info["image_paths"][i] is None for i in indices):
                    raise ValueError("an image of the pair has no path")
                paths = tuple(self.image_root / str(info["image_paths"][i]) for i in indices)
                k0, k1 = (np.asarray(info["intrinsics"][i], np.float64).reshape(3, 3) for i in indices)
                world_to_cam0, world_to_cam1 = (
                    np.asarray(info["poses"][i], np.float64).reshape(4, 4) for i in indices
                )
            except (TypeError, ValueError, IndexError) as err:
                raise InputError(f"{path}: pair {number} is malformed ({err})") from None
            target_to_source = world_to_cam0 @ np.linalg.inv(world_to_cam1)
            name = f"{scene}/{paths[0].stem}-{paths[1].stem}"
            pairs.append(
                _Pair(scene, name, paths, (k0, k1), target_to_source[:3, :3], target_to_source[:3, 3])
            )
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        pair = self.pairs[index]
        for path in pair.paths:
            if not path.is_file():
                raise InputError(f"{path}: MegaDepth-1500 image not found; {_MEGADEPTH_HINT}")
        source, target = (load_image(path) for path in pair.paths)
        return _item(pair, source, target)


class ScanNet1500(Dataset):
    """The 1500 ScanNet pairs (scenes 0707-0806, 15 each) of SuperGlue's test split, as LoFTR ships them.

    Layout (``<root>`` holds LoFTR's index files beside the extracted ``scannet_test_1500`` folder)::

        <root>/test.npz                      # name: (1500, 4) uint16 (scene, sub-scene, frame0, frame1)
        <root>/intrinsics.npz                # sceneXXXX_XX -> (3, 3) float64, for 640x480 images
        <root>/scannet_test_1500/sceneXXXX_XX/color/<frame>.jpg   # 1296x968
        <root>/scannet_test_1500/sceneXXXX_XX/pose/<frame>.txt    # 4x4 camera-to-world

    Variants accepted: the two index files inside ``<root>/scannet_test_1500`` (LoFTR's
    ``assets/scannet_test_1500`` copied over the extracted tar), or anywhere with ``index_dir``;
    the scene folders directly in ``<root>`` (LoFTR's ``data/scannet/test`` symlinks). The
    ``rel_pose`` array of ``test.npz`` (LoFTR's ``T_0to1``) is not read: like LoFTR, the pose comes
    from the pose files.

    As in LoFTR, both images are resized to 640×480 (``size``), here with area interpolation (LoFTR
    uses OpenCV's default bilinear, which aliases when halving). LoFTR's
    ``intrinsics.npz`` already describes 640×480 images (ScanNet's colour intrinsics scaled by
    640/1296 and 480/968), so at the default size ``K`` is used as given; at another ``size`` it is
    scaled from 640×480 with this project's pixel-centre rule ``x' = (x + 0.5) s - 0.5``.

    Args:
        root: the folder described above.
        size: ``(H, W)`` of the returned images; LoFTR's protocol is ``(480, 640)``.
        index_dir: folder of ``test.npz`` and ``intrinsics.npz``, if not one of the places above.
        limit: keep only the first ``limit`` pairs (in ``test.npz`` order).

    Items are dicts: ``source``, ``target`` ``(3, H, W)`` float32 RGB in ``[0, 1]`` (LoFTR's image 0
    and 1); ``K_source``, ``K_target`` ``(3, 3)`` float64; ``R`` ``(3, 3)`` and ``t`` ``(3,)``
    float64, metres, with ``X_source = R @ X_target + t`` (the inverse of LoFTR's ``T_0to1``);
    ``scene`` (``"scene0707_00"``); ``name`` ``"<scene>/<frame0>-<frame1>"``.

    Raises:
        InputError: missing ``root`` or index file, a malformed index or a scene without
            intrinsics, a bad ``size`` or ``limit``; a missing image or pose file raises when its
            pair is read, so an evaluation can skip it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: tuple[int, int] = SCANNET_1500_SIZE,
        index_dir: str | os.PathLike | None = None,
        limit: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: ScanNet-1500 folder not found; {_SCANNET_HINT}")
        if len(size) != 2 or min(size) < 1:
            raise InputError(f"size must be (H, W) of positive ints, got {size}")
        _check_limit(limit)
        self.size = (int(size[0]), int(size[1]))
        scenes = self.root / "scannet_test_1500"
        self.scene_root = scenes if scenes.is_dir() else self.root
        if index_dir is not None:
            index = Path(index_dir)
        else:
            index = _first_dir_with([self.root, scenes], "test.npz") or self.root
        names = self._load_npz(index / "test.npz", "name")
        if names.ndim != 2 or names.shape[1] != 4:
            raise InputError(f"{index / 'test.npz'}: 'name' must be (N, 4), got shape {names.shape}")
        intrinsics = self._load_npz(index / "intrinsics.npz", None)
        scale = np.diag([self.size[1] / SCANNET_1500_SIZE[1], self.size[0] / SCANNET_1500_SIZE[0], 1.0])
        scale[:2, 2] = 0.5 * scale[[0, 1], [0, 1]] - 0.5
        self.items: list[tuple[str, str, str, np.ndarray]] = []  # scene, frame0, frame1, K
        for scene_id, sub_id, frame0, frame1 in names[:limit].astype(np.int64):
            scene = f"scene{scene_id:04d}_{sub_id:02d}"
            if scene not in intrinsics:
                raise InputError(f"{index / 'intrinsics.npz'}: no intrinsics for {scene}; {_SCANNET_HINT}")
            matrix = np.asarray(intrinsics[scene], np.float64).reshape(3, 3)
            self.items.append((scene, str(frame0), str(frame1), scale @ matrix))

    @staticmethod
    def _load_npz(path: Path, key: str | None) -> Any:
        if not path.is_file():
            raise InputError(f"{path}: ScanNet-1500 index file not found; {_SCANNET_HINT}")
        try:
            with np.load(path) as data:
                return dict(data) if key is None else np.asarray(data[key])
        except Exception as err:  # np.load raises many types on bad input
            raise InputError(f"{path}: not a readable ScanNet-1500 index ({err})") from None

    def _read_pose(self, scene: str, frame: str) -> np.ndarray:
        path = self.scene_root / scene / "pose" / f"{frame}.txt"
        if not path.is_file():
            raise InputError(f"{path}: ScanNet-1500 pose not found; {_SCANNET_HINT}")
        try:
            pose = np.loadtxt(path, dtype=np.float64)
        except ValueError as err:
            raise InputError(f"{path}: not a 4x4 pose ({err})") from None
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise InputError(f"{path}: expected a finite 4x4 camera-to-world pose, got {pose.tolist()}")
        return pose

    def _read_image(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise InputError(f"{path}: ScanNet-1500 image not found; {_SCANNET_HINT}")
        image = load_image(path)
        h, w = self.size
        if image.shape[:2] == (h, w):
            return image
        shrink = h * w < image.shape[0] * image.shape[1]
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        scene, frame0, frame1, matrix = self.items[index]
        paths = (
            self.scene_root / scene / "color" / f"{frame0}.jpg",
            self.scene_root / scene / "color" / f"{frame1}.jpg",
        )
        source, target = self._read_image(paths[0]), self._read_image(paths[1])
        cam_to_world0, cam_to_world1 = self._read_pose(scene, frame0), self._read_pose(scene, frame1)
        target_to_source = np.linalg.solve(cam_to_world0, cam_to_world1)
        name = f"{scene}/{frame0}-{frame1}"
        pair = _Pair(scene, name, paths, (matrix, matrix), target_to_source[:3, :3], target_to_source[:3, 3])
        return _item(pair, source, target)
