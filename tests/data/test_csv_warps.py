"""DGC-Net/GLU-Net CSV pairs (DPED-CityScape-ADE's format) and the ``glunet`` warp preset."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from diffmatch.data import SyntheticPairs, WarpConfig
from diffmatch.data.csv_pairs import CSVWarpPairs
from diffmatch.data.glunet_warps import read_warp_csv, render_pair, sample_warp_row
from diffmatch.errors import InputError
from diffmatch.geometry import homography_to_flow, warp
from diffmatch.io import save_image

SIZE = (96, 96)  # r = 0.4: working images of 230 × 307 (homography) and 192 × 256 (affine, TPS)
HEADER = ["fname", "aff/tps/homo", *[f"t{i}" for i in range(1, 19)]]


def _texture(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random RGB texture: bilinear resampling of it is well conditioned."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (shape[0] // 8, shape[1] // 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC)


def _homography() -> np.ndarray:
    """A row's H: the central 240² crop of the 768 × 576 frame with its corners moved by whole pixels."""
    corners = np.float32([[264, 168], [504, 168], [504, 408], [264, 408]])
    moved = corners + np.float32([[30, -20], [-45, 12], [17, 60], [-33, -8]])
    return cv2.getPerspectiveTransform(corners, moved)


def _affine() -> list[float]:
    a, phi, lam = 0.2, -0.4, (0.8, 1.2)

    def rot(t: float) -> np.ndarray:
        return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

    matrix = rot(a) @ rot(-phi) @ np.diag(lam) @ rot(phi)
    return [*matrix[0], 0.1, *matrix[1], -0.15]


def _tps() -> list[float]:
    axis = np.linspace(-1, 1, 3)
    px, py = np.meshgrid(axis, axis, indexing="ij")  # x varies slowest, as in the CSV
    offsets = np.random.default_rng(3).normal(0.0, 0.2, 18)
    return [*(px.ravel() + offsets[:9]), *(py.ravel() + offsets[9:])]


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    """An image root with one photo in a subfolder and a CSV with a homography, affine and TPS row."""
    (tmp_path / "CityScape" / "val").mkdir(parents=True)
    save_image(tmp_path / "CityScape" / "val" / "a.png", _texture((300, 420), 0))
    rows = [
        ["CityScape/val/a.png", 2, *_homography().ravel(), *[0] * 9],
        ["CityScape/val/a.png", 0, *_affine(), *[0] * 12],
        ["CityScape/val/a.png", 1, *_tps()],
    ]
    with (tmp_path / "warps.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return tmp_path


def _ncc(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> float:
    a, b = a[:, valid].flatten(), b[:, valid].flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _warp_ncc(item: dict) -> float:
    """NCC between the target and the source warped by the flow, on valid pixels away from the rim."""
    warped, inside = warp(item["source"][None], item["flow"][None])
    valid = item["mask"] & inside[0]
    # The target is black where it leaves the working image; the source never is.
    valid &= item["target"].sum(0) > 0
    assert valid.float().mean() > 0.3
    return _ncc(warped[0], item["target"], valid)


def test_rows_are_read(csv_root: Path):
    rows = read_warp_csv(csv_root / "warps.csv")
    assert [row.kind for row in rows] == ["homography", "affine", "tps"]
    assert [len(row.params) for row in rows] == [9, 6, 18]


def test_homography_row_flow_is_the_analytic_homography_flow(csv_root: Path):
    item = CSVWarpPairs(csv_root, csv_root / "warps.csv", size=SIZE)[0]
    assert item["source"].shape == (3, *SIZE) and item["flow"].shape == (2, *SIZE)
    # The row maps source to target pixels of the 768 × 576 frame; at r = H/240 it is S H S⁻¹ on a
    # (int(576 r), int(768 r)) image whose central SIZE crop both images are.
    r = SIZE[0] / 240
    scale = np.diag([r, r, 1.0])
    frame_h, frame_w = int(576 * r), int(768 * r)
    shift = np.array([[1, 0, frame_w // 2 - SIZE[1] // 2], [0, 1, frame_h // 2 - SIZE[0] // 2], [0, 0, 1.0]])
    target_to_source = (
        np.linalg.inv(shift) @ np.linalg.inv(scale @ _homography() @ np.linalg.inv(scale)) @ shift
    )
    expected = homography_to_flow(torch.from_numpy(target_to_source), SIZE)[0].float()
    assert (item["flow"] - expected).abs().max() < 1e-3
    assert _warp_ncc(item) > 0.95


@pytest.mark.parametrize("index", [1, 2], ids=["affine", "tps"])
def test_affine_and_tps_rows_warp_source_onto_target(csv_root: Path, index: int):
    item = CSVWarpPairs(csv_root, csv_root / "warps.csv", size=SIZE)[index]
    assert item["flow"].abs().max() > 5  # a real warp, not the identity
    assert _warp_ncc(item) > 0.95


def test_affine_row_flow_matches_its_matrix(csv_root: Path):
    """The affine row acts on align_corners=True coordinates of the source crop: check one pixel."""
    item = CSVWarpPairs(csv_root, csv_root / "warps.csv", size=SIZE)[1]
    h, w = SIZE
    y, x = 30, 70
    v = np.array([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1])
    matrix = np.array(_affine()).reshape(2, 3)
    u = matrix[:, :2] @ v + matrix[:, 2]
    expected = (u + 1) * np.array([w - 1, h - 1]) / 2 - np.array([x, y])
    assert np.allclose(item["flow"][:, y, x].numpy(), expected, atol=1e-4)


def test_large_originals_are_centre_cropped_and_gray_ones_accepted(tmp_path: Path):
    """An original above 1.5 × the working size is centre-cropped first; a gray photo becomes RGB."""
    image = cv2.cvtColor(_texture((800, 1000), 1), cv2.COLOR_RGB2GRAY)
    item = render_pair(np.repeat(image[:, :, None], 3, axis=2), "affine", tuple(_affine()), SIZE)
    assert item["source"].shape == (3, *SIZE)
    assert _warp_ncc(item) > 0.95


def test_photometric_augmentation_is_seeded(csv_root: Path):
    a = CSVWarpPairs(csv_root, csv_root / "warps.csv", size=SIZE, augment=True, seed=1)
    b = CSVWarpPairs(csv_root, csv_root / "warps.csv", size=SIZE, augment=True, seed=1)
    plain = CSVWarpPairs(csv_root, csv_root / "warps.csv", size=SIZE)
    assert torch.equal(a[1]["target"], b[1]["target"])
    assert not torch.equal(a[1]["target"], plain[1]["target"])
    assert torch.equal(a[1]["flow"], plain[1]["flow"])


@pytest.mark.parametrize(
    "text, match",
    [
        ("name,kind\na.png,0\n", "header"),
        (",".join(HEADER) + "\na.png,7,1,2,3,4,5,6\n", ":2: malformed row"),
        (",".join(HEADER) + "\na.png,2,1,2,3\n", ":2: malformed row"),
        (",".join(HEADER) + "\n", "no rows"),
    ],
)
def test_bad_csv_is_one_clear_line(tmp_path: Path, text: str, match: str):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(InputError, match=match) as err:
        read_warp_csv(tmp_path / "bad.csv")
    assert "\n" not in str(err.value)


def test_missing_image_names_the_row(csv_root: Path):
    with pytest.raises(InputError, match="image of CSV row 0 not found"):
        CSVWarpPairs(csv_root / "CityScape", csv_root / "warps.csv", size=SIZE)[0]


def test_glunet_preset_draws_the_csv_distributions():
    config = WarpConfig(preset="glunet")
    generator = torch.Generator().manual_seed(0)
    draws = [sample_warp_row(config, generator) for _ in range(400)]
    kinds = [kind for kind, _ in draws]
    assert 0.4 < kinds.count("homography") / 400 < 0.6  # 2 : 1 : 1
    assert kinds.count("affine") > 60 and kinds.count("tps") > 60
    corners = np.array([[264, 168, 1], [504, 168, 1], [504, 408, 1], [264, 408, 1]], float)
    for kind, params in draws:
        if kind == "homography":
            moved = corners @ np.array(params).reshape(3, 3).T
            offsets = moved[:, :2] / moved[:, 2:] - corners[:, :2]
            assert np.allclose(offsets, offsets.round(), atol=1e-3)  # whole pixels, as in the CSV
            assert offsets.round().min() >= -80 and offsets.round().max() <= 79
    tps = np.array([params for kind, params in draws if kind == "tps"])
    axis = np.linspace(-1, 1, 3)
    grid = np.concatenate([np.repeat(axis, 3), np.tile(axis, 3)])
    assert 0.15 < (tps - grid).std() < 0.25


def test_glunet_preset_renders_consistent_pairs(tmp_path: Path):
    save_image(tmp_path / "a.png", _texture((260, 340), 2))
    dataset = SyntheticPairs(
        tmp_path, size=(72, 72), length=6, warp=WarpConfig(preset="glunet"), augment=False
    )
    for index in range(len(dataset)):
        assert _warp_ncc(dataset[index]) > 0.95
    assert torch.equal(dataset[3]["flow"], dataset[3]["flow"])


def test_glunet_preset_validates():
    with pytest.raises(ValueError, match="glunet"):
        WarpConfig(preset="glunet", types=("afftps",))
    with pytest.raises(ValueError, match="preset"):
        WarpConfig(preset="dgcnet")
    # Fields left unset take the preset's values; set ones override them.
    assert WarpConfig(preset="glunet").scale_angle == pytest.approx(math.pi / 6)
    assert WarpConfig(preset="glunet", tps=0.1).tps == 0.1
    assert WarpConfig().scale == 0.45 and WarpConfig().weights is None
