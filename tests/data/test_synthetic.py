"""Synthetic pairs and the synthetic benchmark: geometry, masks, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import smooth_photo_folder

from diffmatch.data import (
    BENCHMARK_LEVELS,
    WARP_TYPES,
    PhotometricConfig,
    SyntheticBenchmark,
    SyntheticPairs,
    WarpConfig,
    bundled_photos,
    photometric_augment,
    sample_mapping,
)
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid, warp

SIZE = (48, 64)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory):
    shapes = {"a.png": (90, 120), "b.jpg": (70, 70), "c.png": (200, 150)}
    return smooth_photo_folder(tmp_path_factory.mktemp("photos"), shapes, cell=6)


def _interior(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Target pixels whose whole bilinear footprint lies inside the source (no padding involved)."""
    h, w = size
    c = flow[None] + coords_grid(1, *flow.shape[-2:])
    return ((c[:, 0] >= 0) & (c[:, 0] <= w - 1) & (c[:, 1] >= 0) & (c[:, 1] <= h - 1))[0]


@pytest.mark.parametrize("kind", WARP_TYPES)
@pytest.mark.parametrize("elastic", [0.0, 1.0])
def test_flow_reproduces_target_on_mask(image_dir, kind: str, elastic: float) -> None:
    ds = SyntheticPairs(
        image_dir, SIZE, augment=False, warp=WarpConfig(types=(kind,), elastic_probability=elastic)
    )
    outside_seen = False
    for index in range(4):
        item = ds[index]
        assert item["source"].shape == (3, *SIZE) and item["target"].shape == (3, *SIZE)
        assert item["flow"].shape == (2, *SIZE) and item["flow"].dtype == torch.float32
        assert item["mask"].shape == SIZE and item["mask"].dtype == torch.bool
        warped, _ = warp(item["source"][None], item["flow"][None])
        inner = _interior(item["flow"], SIZE)
        assert inner.float().mean() > 0.3
        assert not (inner & ~item["mask"]).any()
        error = (warped[0] - item["target"]).abs().amax(0)
        assert error[inner].max() < 1e-4
        # The check has teeth: a flow off by one pixel does not reproduce the target.
        shifted, _ = warp(item["source"][None], item["flow"][None] + 1.0)
        assert (shifted[0] - item["target"]).abs().amax(0)[inner].mean() > 1e-2
        # Mask = match inside the source frame, nothing else.
        coords = item["flow"] + coords_grid(1, *SIZE)[0]
        outside = (
            (coords[0] < -0.5)
            | (coords[0] > SIZE[1] - 0.5)
            | (coords[1] < -0.5)
            | (coords[1] > SIZE[0] - 0.5)
        )
        assert torch.equal(item["mask"], ~outside)
        outside_seen |= bool(outside.any())
    assert outside_seen


@pytest.mark.parametrize("preset", ["densematching", "glunet"])
def test_supervise_out_of_frame_changes_only_the_mask(image_dir, preset: str) -> None:
    warp_config = WarpConfig(preset=preset)
    masked = SyntheticPairs(image_dir, SIZE, seed=3, warp=warp_config)
    kept = SyntheticPairs(image_dir, SIZE, seed=3, warp=warp_config, supervise_out_of_frame=True)
    outside_seen = False
    for index in range(6):
        m, k = masked[index], kept[index]
        for key in ("source", "target", "flow"):
            assert torch.equal(m[key], k[key])
        assert k["mask"].all()
        outside_seen |= bool((~m["mask"]).any())
    assert outside_seen  # the option made a difference on these pairs


def test_mapping_identity_when_ranges_are_zero() -> None:
    zero = WarpConfig(translation=0, scale=0, rotation=0, homography=0, tps=0, afftps=0)
    generator = torch.Generator().manual_seed(0)
    for kind in WARP_TYPES:
        mapping = sample_mapping(kind, (9, 13), zero, generator)
        torch.testing.assert_close(mapping, coords_grid(1, 9, 13), atol=1e-4, rtol=0)


def test_translation_only_affine_moves_by_expected_pixels() -> None:
    config = WarpConfig(types=("affine",), translation=0.5, scale=0, rotation=0)
    mapping = sample_mapping("affine", (20, 40), config, torch.Generator().manual_seed(3))
    flow = mapping - coords_grid(1, 20, 40)
    # A constant shift, at most t * half-size pixels in each axis.
    assert torch.allclose(flow, flow[:, :, :1, :1].expand_as(flow), atol=1e-4)
    assert flow[0, 0].abs().max() <= 0.5 * 20 + 1e-4 and flow[0, 1].abs().max() <= 0.5 * 10 + 1e-4


def test_same_seed_same_pair_and_different_index_differs(image_dir) -> None:
    a, b = SyntheticPairs(image_dir, SIZE, seed=7), SyntheticPairs(image_dir, SIZE, seed=7)
    before = torch.random.get_rng_state()
    first, again = a[5], b[5]
    assert torch.equal(torch.random.get_rng_state(), before)  # no global RNG used
    for key in ("source", "target", "flow", "mask"):
        assert torch.equal(first[key], again[key])
    assert not torch.equal(a[6]["flow"], first["flow"])
    assert not torch.equal(SyntheticPairs(image_dir, SIZE, seed=8)[5]["flow"], first["flow"])


def test_set_epoch_changes_pairs_deterministically(image_dir) -> None:
    ds = SyntheticPairs(image_dir, SIZE)
    epoch0 = ds[2]["flow"]
    ds.set_epoch(1)
    epoch1 = ds[2]["flow"]
    assert not torch.equal(epoch0, epoch1)
    ds.set_epoch(0)
    assert torch.equal(ds[2]["flow"], epoch0)


def test_photometric_augmentation_changes_images_not_geometry(image_dir) -> None:
    plain = SyntheticPairs(image_dir, SIZE, augment=False)
    augmented = SyntheticPairs(image_dir, SIZE, augment=True)
    changed = 0
    for index in range(6):
        p, q = plain[index], augmented[index]
        assert torch.equal(p["flow"], q["flow"]) and torch.equal(p["mask"], q["mask"])
        assert 0.0 <= q["source"].min() and q["source"].max() <= 1.0
        changed += int(not torch.allclose(p["target"], q["target"]))
    assert changed >= 3


def test_photometric_noise_has_the_drawn_strength_and_is_seeded() -> None:
    flat = torch.full((3, 64, 64), 0.5)
    only_noise = PhotometricConfig(
        jitter_probability=0.0, grayscale_probability=0.0, blur_probability=0.0,
        noise_probability=1.0, noise_sigma=(0.05, 0.1),
    )
    stds = []
    for seed in range(4):
        out = photometric_augment(flat, only_noise, torch.Generator().manual_seed(seed))
        assert torch.equal(out, photometric_augment(flat, only_noise, torch.Generator().manual_seed(seed)))
        stds.append(float((out - flat).std()))
    assert all(0.045 < s < 0.105 for s in stds) and len(set(stds)) == 4
    off = PhotometricConfig(jitter_probability=0.0, grayscale_probability=0.0, blur_probability=0.0)
    assert torch.equal(photometric_augment(flat, off, torch.Generator().manual_seed(0)), flat)
    for bad in ({"noise_probability": 1.5}, {"noise_sigma": (0.2, 0.1)}, {"noise_sigma": (0.0, 0.1)}):
        with pytest.raises(ValueError, match="noise"):
            PhotometricConfig(**bad)


def test_photometric_haze_lowers_contrast_towards_the_airlight_and_is_seeded() -> None:
    stripes = torch.zeros(3, 64, 64)
    stripes[:, :, ::2] = 1.0
    only_haze = PhotometricConfig(
        jitter_probability=0.0, grayscale_probability=0.0, blur_probability=0.0,
        haze_probability=1.0, haze_density=(1.0, 2.0), haze_airlight=(0.7, 0.9),
    )
    for seed in range(3):
        out = photometric_augment(stripes, only_haze, torch.Generator().manual_seed(seed))
        assert torch.equal(out, photometric_augment(stripes, only_haze, torch.Generator().manual_seed(seed)))
        contrast = out[:, :, ::2] - out[:, :, 1::2]  # 1 everywhere before; the transmission t after
        assert float(contrast.min()) >= math.exp(-2.0) - 1e-5 and float(contrast.max()) <= 1.0 + 1e-5
        assert float(contrast.max() - contrast.min()) > 0.2  # uneven: densest where the field peaks
        assert float(out[:, :, 1::2].mean()) > 0.1  # dark pixels lifted towards the airlight
    # Off: the stream of every other augmentation is untouched.
    default, hazeless = PhotometricConfig(noise_probability=0.5), PhotometricConfig(noise_probability=0.5, haze_probability=0.0)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(
        photometric_augment(image, default, torch.Generator().manual_seed(1)),
        photometric_augment(image, hazeless, torch.Generator().manual_seed(1)),
    )
    for bad in ({"haze_probability": -0.1}, {"haze_density": (2.0, 1.0)}, {"haze_airlight": (0.5, 1.2)}):
        with pytest.raises(ValueError, match="haze"):
            PhotometricConfig(**bad)


def test_length_and_validation(image_dir, tmp_path) -> None:
    assert len(SyntheticPairs(image_dir, SIZE, pairs_per_image=4)) == 12
    ds = SyntheticPairs(image_dir, SIZE, length=5)
    assert len(ds) == 5
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(InputError, match="size"):
        SyntheticPairs(image_dir, (4, 64))
    with pytest.raises(InputError, match="not found"):
        SyntheticPairs(image_dir / "missing", SIZE)
    with pytest.raises(InputError, match="no images"):
        SyntheticPairs(tmp_path, SIZE)
    with pytest.raises(ValueError, match="types"):
        WarpConfig(types=("shear",))
    with pytest.raises(ValueError, match="weights"):
        WarpConfig(weights=(1.0, 2.0))


def test_warp_weights_select_types() -> None:
    config = WarpConfig(weights=(0.0, 1.0, 0.0, 0.0))
    generator = torch.Generator().manual_seed(0)
    assert {config.choose(generator) for _ in range(20)} == {"affine"}


def test_small_motion_shrinks_flow_towards_identity(image_dir) -> None:
    base = SyntheticPairs(image_dir, SIZE, augment=False, length=12)
    identity = SyntheticPairs(
        image_dir, SIZE, augment=False, length=12,
        warp=WarpConfig(small_motion_probability=1.0, small_motion_range=(0.0, 0.0)),
    )
    half = SyntheticPairs(
        image_dir, SIZE, augment=False, length=12,
        warp=WarpConfig(small_motion_probability=1.0, small_motion_range=(0.5, 0.5)),
    )
    mixed = SyntheticPairs(image_dir, SIZE, augment=False, length=12, warp=WarpConfig(small_motion_probability=0.5))
    shrunk = 0
    for index in range(12):
        full = base[index]
        # Factor 0: the identity, target = source; factor 0.5: half the displacement of the same warp.
        assert identity[index]["flow"].abs().max() == 0
        assert torch.allclose(identity[index]["target"], identity[index]["source"], atol=1e-5)
        assert torch.allclose(half[index]["flow"], 0.5 * full["flow"], atol=1e-4)
        # The warp still reproduces its target.
        item = half[index]
        warped, _ = warp(item["source"][None], item["flow"][None])
        inner = _interior(item["flow"], SIZE)
        assert (warped[0] - item["target"]).abs().amax(0)[inner].max() < 1e-4
        # Mixed: each pair is either the unchanged warp or a shrunk one (stream kept otherwise).
        flow = mixed[index]["flow"]
        if torch.equal(flow, full["flow"]):
            continue
        shrunk += 1
        assert flow.norm(dim=0).mean() <= 0.3 * full["flow"].norm(dim=0).mean() + 1e-4
    assert 2 <= shrunk <= 10
    # Probability 0 draws nothing: the existing random stream is kept exactly.
    off = WarpConfig(small_motion_probability=0.0, small_motion_range=(0.1, 0.2))
    assert torch.equal(SyntheticPairs(image_dir, SIZE, augment=False, length=12, warp=off)[5]["flow"], base[5]["flow"])
    for bad in ({"small_motion_probability": 1.5}, {"small_motion_range": (0.5, 0.2)}):
        with pytest.raises(ValueError, match="small_motion"):
            WarpConfig(**bad)
    with pytest.raises(ValueError, match="small-motion"):
        WarpConfig(preset="glunet", small_motion_probability=0.5)


def test_benchmark_is_fixed_and_levels_grow(image_dir) -> None:
    magnitudes = []
    for level in BENCHMARK_LEVELS:
        bench = SyntheticBenchmark(image_dir, level=level, size=SIZE, num_pairs=6)
        item = bench[1]
        assert item["name"].startswith(f"{level}/0001_")
        bench.set_epoch(3)  # no effect
        assert torch.equal(bench[1]["target"], item["target"])
        assert torch.equal(
            SyntheticBenchmark(image_dir, level=level, size=SIZE, num_pairs=6)[1]["flow"], item["flow"]
        )
        magnitudes.append(np.mean([bench[i]["flow"].norm(dim=0).mean().item() for i in range(len(bench))]))
    assert magnitudes[0] < magnitudes[1] < magnitudes[2]
    with pytest.raises(InputError, match="level"):
        SyntheticBenchmark(image_dir, level="extreme")


def test_bundled_photos() -> None:
    for split in ("train", "val"):
        folder = bundled_photos(split)
        names = {p.stem for p in folder.iterdir()}
        assert len(names) >= 4
    assert not names & {p.stem for p in bundled_photos("train").iterdir()}  # val is held out
    with pytest.raises(InputError, match="split"):
        bundled_photos("test")
