from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffmatch.errors import InputError
from diffmatch.io import atomic_open, load_image, read_flow, read_flow_file, write_flow


@pytest.fixture
def flow() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((23, 31, 2)) * 20).astype(np.float32)


def test_flo_matches_opencv(tmp_path, flow):
    ours = tmp_path / "ours.flo"
    write_flow(ours, flow)
    np.testing.assert_array_equal(cv2.readOpticalFlow(str(ours)), flow)
    theirs = tmp_path / "theirs.flo"
    assert cv2.writeOpticalFlow(str(theirs), flow)
    np.testing.assert_array_equal(read_flow(theirs), flow)


def test_kitti_png_round_trip_keeps_mask(tmp_path, flow):
    valid = np.random.default_rng(1).random(flow.shape[:2]) > 0.3
    path = tmp_path / "flow.png"
    write_flow(path, flow, valid=valid)
    out = read_flow_file(path)
    assert np.abs(out["flow"] - flow).max() <= 1 / 64
    np.testing.assert_array_equal(out["valid"], valid)


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_numpy_round_trip(tmp_path, flow, ext):
    path = tmp_path / f"flow{ext}"
    extras = {}
    if ext == ".npz":
        extras = {"uncertainty": np.abs(flow[..., 0]), "samples": np.stack([flow, flow + 1])}
    write_flow(path, flow, **extras)
    out = read_flow_file(path)
    np.testing.assert_array_equal(out["flow"], flow)
    for key, value in extras.items():
        np.testing.assert_array_equal(out[key], value)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(InputError, match="missing.flo: file not found"):
        read_flow(tmp_path / "missing.flo")
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"garbage!" * 4)
    with pytest.raises(InputError, match="bad.flo: not a Middlebury"):
        read_flow(bad)
    trunc = tmp_path / "trunc.flo"
    write_flow(trunc, np.zeros((4, 4, 2), np.float32))
    trunc.write_bytes(trunc.read_bytes()[:-8])
    with pytest.raises(InputError, match="trunc.flo: truncated"):
        read_flow(trunc)
    npy = tmp_path / "bad.npy"
    npy.write_bytes(b"not numpy")
    with pytest.raises(InputError, match="bad.npy: corrupt"):
        read_flow(npy)
    with pytest.raises(InputError, match="unknown flow format"):
        write_flow(tmp_path / "x.txt", np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match=r"\(H, W, 2\)"):
        write_flow(tmp_path / "x.npy", np.zeros((2, 2, 3)))
    img = tmp_path / "bad.png"
    img.write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="bad.png: not a readable image"):
        load_image(img)
    with pytest.raises(InputError, match="nope.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("kind", ["gray", "rgba", "rgb16", "gray16"])
def test_load_image_kinds(tmp_path, photo, kind):
    bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    image = {
        "gray": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
        "rgba": cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA),
        "rgb16": bgr.astype(np.uint16) * 257,
        "gray16": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257,
    }[kind]
    path = tmp_path / f"{kind}.png"
    cv2.imwrite(str(path), image)
    out = load_image(path)
    assert out.shape == (*photo.shape[:2], 3) and out.dtype == np.uint8
    if kind in ("rgba", "rgb16"):
        np.testing.assert_array_equal(out, photo)
    else:
        assert np.array_equal(out[..., 0], out[..., 1])


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- EXIF orientation (#29)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_image_applies_the_exif_orientation_as_pil_does(tmp_path, photo, orientation):
    from PIL import Image, ImageOps

    stored = photo[:40, :64]  # not square: a rotation changes the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "tagged.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    with Image.open(path) as image:
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    loaded = load_image(path)
    assert loaded.shape == upright.shape
    np.testing.assert_array_equal(loaded, upright)


def test_float_image_with_nan_is_refused(tmp_path):
    image = np.full((20, 30), 0.5, np.float32)
    image[3:5, 4:7] = np.nan
    path = tmp_path / "nan.tiff"
    assert cv2.imwrite(str(path), image)
    with pytest.raises(InputError, match=r"nan\.tiff: 6 pixel\(s\) are NaN or infinite"):
        load_image(path)


def test_a_folder_and_a_broken_file_get_one_line_each(tmp_path, capfd):
    with pytest.raises(InputError, match="is a folder, not a file"):
        load_image(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="broken.png: not a readable image"):
        load_image(broken)
    assert capfd.readouterr().err == ""  # OpenCV's decoder log stays quiet


def test_float_images_in_0_1_are_scaled_not_stretched(tmp_path):
    image = np.full((20, 30), 0.25, np.float32)
    image[:, :10] = 0.5
    path = tmp_path / "float.tiff"
    assert cv2.imwrite(str(path), image)
    out = load_image(path)
    assert set(np.unique(out).tolist()) == {64, 128}  # 0.25 * 255 and 0.5 * 255, rounded
    wide = tmp_path / "wide.tiff"
    assert cv2.imwrite(str(wide), image * 1000.0)  # another range: stretched from its min to its max
    assert set(np.unique(load_image(wide)).tolist()) == {0, 255}
