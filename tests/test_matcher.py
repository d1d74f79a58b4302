from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from diffmatch import DiffMatcher
from diffmatch.cli.infer import main as infer_main
from diffmatch.errors import InputError
from diffmatch.two_pass import TwoPassConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def images(tmp_path, photo) -> tuple[Path, Path]:
    src, tgt = tmp_path / "src.png", tmp_path / "tgt.jpg"
    cv2.imwrite(str(src), cv2.cvtColor(photo[:96, :112], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tgt), cv2.cvtColor(photo[10:90, 8:120], cv2.COLOR_RGB2BGR))
    return src, tgt


def test_cli_and_api_agree_and_write_everything(tmp_path, checkpoint, images):
    out = tmp_path / "out"
    code = infer_main(["--source", str(images[0]), "--target", str(images[1]), "--out", str(out),
                       "--checkpoint", str(checkpoint), "--samples", "3", "--seed", "5", "--device", "cpu",
                       "--flow-format", "npz"])
    assert code == 0
    flow, unc = np.load(out / "flow.npy"), np.load(out / "uncertainty.npy")
    assert flow.shape == (80, 112, 2) and flow.dtype == np.float32 and unc.shape == (80, 112)
    for name in ("flow.npz", "flow.png", "warp.png", "uncertainty.png", "panel.png"):
        assert (out / name).stat().st_size > 0
    matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu")
    result = matcher.match(str(images[0]), str(images[1]), num_samples=3, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(result.flow[0].permute(1, 2, 0).numpy(), flow, atol=1e-5)
    np.testing.assert_allclose(result.uncertainty[0, 0].numpy(), unc, atol=1e-5)
    assert unc.max() > 0
    assert not list(out.glob(".*tmp"))


def test_kitti_flow_file_is_not_overwritten_by_the_colour_picture(tmp_path, checkpoint, images):
    from diffmatch.io import read_flow_file

    out = tmp_path / "out"
    code = infer_main(["--source", str(images[0]), "--target", str(images[1]), "--out", str(out),
                       "--checkpoint", str(checkpoint), "--device", "cpu", "--flow-format", "png"])
    assert code == 0
    kitti = read_flow_file(out / "flow.png")
    np.testing.assert_allclose(kitti["flow"], np.load(out / "flow.npy"), atol=1 / 64)  # KITTI's 1/64 px steps
    assert (out / "flow_color.png").stat().st_size > 0


def test_api_batch_and_seed(checkpoint, photo):
    matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu")
    a, b = photo[:64, :80], photo[20:84, 30:110]
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    single = matcher.match(a, b, num_samples=2, generator=gen())
    again = matcher.match(a, b, num_samples=2, generator=gen())
    assert torch.equal(single.flow, again.flow)
    batch = matcher.match([a, b], [b, a], num_samples=2, generator=gen())
    assert batch.flow.shape == (2, 2, 64, 80)
    assert torch.allclose(batch.flow[:1], single.flow, rtol=1e-4, atol=1e-2)
    assert batch.samples.shape == (2, 2, 2, 64, 80)
    # Sparse matches favour confident pixels and land inside the source.
    tgt_xy, src_xy, conf = DiffMatcher.sample_matches(single, num=100, source_size=a.shape[:2],
                                                      generator=torch.Generator().manual_seed(0))
    assert tgt_xy.shape == src_xy.shape == (len(conf), 2) and 0 < len(conf) <= 100
    assert (src_xy[:, 0] <= 80 - 0.5).all() and (conf > 0).all() and (conf <= 1).all()
    warped = DiffMatcher.warp(a, single.flow)
    assert warped.shape == (1, 3, 64, 80)


def test_refinement_is_the_default_for_every_hypothesis_and_can_be_switched_off(tmp_path, checkpoint, images):
    from diffmatch.inputs import to_image_batch
    from diffmatch.io import load_image, read_flow
    from diffmatch.refinement import LayerSearchConfig, VariationalRefiner

    assert DiffMatcher.from_checkpoint(checkpoint, device="cpu").layer_search == LayerSearchConfig()  # the default
    # Without the layer search, which moves some refined pixels onto planes (tests/refinement/test_layer_search.py).
    matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu", layer_search=False)  # not calibrated: refined
    assert matcher.refiner == VariationalRefiner()
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    raw = matcher.match(images[0], images[1], num_samples=2, generator=gen(), refine=False)
    refined = matcher.match(images[0], images[1], num_samples=2, generator=gen())
    src, tgt = (to_image_batch(load_image(p)) for p in images)
    torch.testing.assert_close(refined.samples, VariationalRefiner()(src, tgt, raw.samples))
    torch.testing.assert_close(refined.flow, refined.samples.mean(1))
    assert torch.equal(refined.init_flow, raw.init_flow) and not torch.allclose(refined.flow, raw.flow)
    off = DiffMatcher.from_checkpoint(checkpoint, device="cpu", refine=False, layer_search=False)
    assert off.refiner is None
    assert torch.equal(off.match(images[0], images[1], num_samples=2, generator=gen()).flow, raw.flow)
    assert torch.equal(off.match(images[0], images[1], num_samples=2, generator=gen(), refine=True).flow, refined.flow)
    with pytest.raises(InputError, match="refine must be"):
        DiffMatcher.from_checkpoint(checkpoint, device="cpu", refine="yes")

    base = ["--source", str(images[0]), "--target", str(images[1]), "--checkpoint", str(checkpoint), "--samples", "2",
            "--seed", "2", "--no-viz", "--no-layer-search"]
    assert infer_main([*base, "--out", str(tmp_path / "r")]) == 0
    assert infer_main([*base, "--out", str(tmp_path / "u"), "--no-refine"]) == 0
    for folder, result in (("r", refined), ("u", raw)):
        written = read_flow(next((tmp_path / folder).glob("*.flo")))
        np.testing.assert_allclose(written, result.flow[0].permute(1, 2, 0).numpy(), atol=1e-4)
    # Two-pass matching is the default; --one-pass reaches the matcher as two_pass=False.
    assert matcher.two_pass == TwoPassConfig()
    assert infer_main([*base, "--out", str(tmp_path / "o"), "--one-pass"]) == 0
    one = DiffMatcher.from_checkpoint(checkpoint, device="cpu", two_pass=False, layer_search=False)
    assert one.two_pass is None
    expected = one.match(images[0], images[1], num_samples=2, generator=gen())
    written = read_flow(next((tmp_path / "o").glob("*.flo")))
    np.testing.assert_allclose(written, expected.flow[0].permute(1, 2, 0).numpy(), atol=1e-4)
    # --rotations sets the rotation search of two-pass matching ('none': no search).
    from diffmatch.cli.infer import _rotations

    assert _rotations("90, -90,180") == (90.0, -90.0, 180.0) and _rotations("none") == ()
    assert infer_main([*base, "--out", str(tmp_path / "n"), "--rotations", "none"]) == 0


def test_processing_size_options(tmp_path, checkpoint, images):
    own = DiffMatcher.from_checkpoint(checkpoint, device="cpu")  # 64² model on a 16² grid: sizes in steps of 8
    auto = DiffMatcher.from_checkpoint(checkpoint, device="cpu", image_size="auto")
    assert own.processing_size((96, 112), (80, 112)) == 64
    assert auto.processing_size((96, 112), (80, 112)) == 112
    assert auto.processing_size((40, 40), (50, 41)) == 64
    assert auto.processing_size((70, 40), (50, 41)) == 72
    assert auto.processing_size((2000, 1000), (900, 1000)) == 640
    assert DiffMatcher.from_checkpoint(checkpoint, device="cpu", image_size=96).processing_size((9, 9), (9, 9)) == 96
    with pytest.raises(InputError, match="multiple of 8"):
        DiffMatcher.from_checkpoint(checkpoint, device="cpu", image_size=100)
    out = tmp_path / "o"
    assert infer_main(["--source", str(images[0]), "--target", str(images[1]), "--out", str(out),
                       "--checkpoint", str(checkpoint), "--image-size", "auto", "--samples", "2"]) == 0
    flow = auto.match(images[0], images[1], num_samples=2, generator=torch.Generator().manual_seed(0)).flow
    from diffmatch.io import read_flow

    written = read_flow(next(out.glob("*.flo")))
    np.testing.assert_allclose(written, flow[0].permute(1, 2, 0).numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["gray", "rgba", "uint16"])
def test_any_image_kind_and_size(tmp_path, checkpoint, photo, kind):
    image = {"gray": cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), "rgba": cv2.cvtColor(photo, cv2.COLOR_RGB2BGRA),
             "uint16": photo.astype(np.uint16) * 257}[kind][:70, :101]
    path = tmp_path / f"{kind}.png"
    cv2.imwrite(str(path), image)
    out = tmp_path / "out"
    assert infer_main(["--source", str(path), "--target", str(path), "--out", str(out), "--checkpoint",
                       str(checkpoint), "--samples", "1", "--no-viz", "--flow-format", "flo"]) == 0
    assert np.load(out / "flow.npy").shape == (70, 101, 2)
    assert not np.load(out / "uncertainty.npy").any()  # one sample: zeros
    assert cv2.readOpticalFlow(str(out / "flow.flo")).shape == (70, 101, 2)


def test_pairs_file_skips_failed_pair(tmp_path, checkpoint, images, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"# src tgt\n{images[0]} {images[1]}\n{broken} {images[1]}\n{images[1]} {images[0]}\n")
    out = tmp_path / "out"
    code = infer_main(["--pairs", str(pairs), "--out", str(out), "--checkpoint", str(checkpoint), "--no-viz"])
    assert code == 1
    written = sorted(p.parent.name for p in out.rglob("flow.npy"))
    assert written == ["0000_src_tgt", "0002_tgt_src"]
    assert "broken.png: not a readable image" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--samples", "0"], "--samples must be >= 1"),
        (["--image-size", "big"], "image size must be 'auto' or a positive integer, got 'big'"),
        (["--image-size", "100"], "image_size must be a positive multiple of 8"),
        (["--steps", "9"], "--steps must be"),
        (["--matcher", "dino", "--no-refine"], "--no-refine applies to --matcher diffmatch"),
        (["--matcher", "dino", "--two-pass"], "--two-pass applies to --matcher diffmatch"),
        (["--matcher", "dino", "--one-pass"], "--one-pass applies to --matcher diffmatch"),
        (["--one-pass", "--two-pass"], "argument --two-pass: not allowed with argument --one-pass"),
        (["--rotations", "90", "--one-pass"], "--rotations applies to two-pass matching, not --one-pass"),
        (["--matcher", "dino", "--rotations", "90"], "--rotations applies to --matcher diffmatch"),
        (["--rotations", "45,left"], "--rotations: expected a comma list of angles in degrees or 'none', got '45,left'"),
        (["--rotations", "nan"], "--rotations: expected a comma list"),
        (["--checkpoint", "CORRUPT"], r"corrupt\.pt: not a diffmatch checkpoint \(not a PyTorch file\)"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--samples", "-1"], "cuda|--samples"),
    ],
)
def test_bad_options_exit_nonzero_with_one_line(tmp_path, checkpoint, images, capsys, argv, message):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    argv = [str(corrupt) if a == "CORRUPT" else a for a in argv]
    base = ["--source", str(images[0]), "--target", str(images[1]), "--out", str(tmp_path / "o")]
    if "--checkpoint" not in argv:
        base += ["--checkpoint", str(checkpoint)]
    parse_error = "--samples" in argv or "big" in argv or "--one-pass" in argv[:1] or "--rotations" in argv[:1] and len(argv) == 2
    with pytest.raises(SystemExit) if parse_error else _no_raise():
        code = infer_main(base + argv)
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    import re

    assert re.search(message, err[-1]), err
    assert not (tmp_path / "o").exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_missing_file_via_subprocess_has_no_traceback(tmp_path, checkpoint, images):
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--source", str(tmp_path / "nope.png"), "--target",
                           str(images[1]), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "nope.png: file not found" in proc.stderr


def test_api_bad_inputs_raise_value_error(checkpoint, tmp_path):
    matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="file not found"):
        matcher.match(tmp_path / "nope.png", tmp_path / "nope.png")
    with pytest.raises(ValueError, match="num_samples"):
        matcher.match(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), num_samples=0)
    with pytest.raises(InputError, match="image array must be"):
        matcher.match(np.zeros((8, 8, 5), np.uint8), np.zeros((8, 8, 3), np.uint8))


def test_interrupted_run_leaves_no_partial_files(tmp_path, checkpoint, images, monkeypatch, capsys):
    import diffmatch.cli.infer as cli

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_flow", explode)
    out = tmp_path / "out"
    code = infer_main(["--source", str(images[0]), "--target", str(images[1]), "--out", str(out), "--checkpoint",
                       str(checkpoint), "--no-viz"])
    assert code == 130 and capsys.readouterr().err.strip().startswith("interrupted")
    assert not out.exists()  # flow.npy and uncertainty.npy were written, but never published; --out was new


def test_pairs_file_honours_quotes_tabs_and_relative_paths(tmp_path, checkpoint, photo, capsys):
    names = ["my photo.png", "a,b.png", "#1.png", "it's.png"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), cv2.cvtColor(photo[i : i + 64, : 72], cv2.COLOR_RGB2BGR))
    pairs = folder / "pairs.txt"
    pairs.write_text(
        "# source target\n"
        '"my photo.png" "a,b.png"   # spaces and a comma, quoted\n'
        "'#1.png', \"it's.png\"\n"
        f"my photo.png\t{folder / '#1.png'}\n"  # a tab: both fields literal, the second absolute
    )
    out = tmp_path / "out"
    code = infer_main(["--pairs", str(pairs), "--out", str(out), "--checkpoint", str(checkpoint), "--no-viz",
                       "--samples", "2"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["0000_my photo_a,b", "0001_#1_it's", "0002_my photo_#1"]


@pytest.mark.parametrize(("line", "message"), [
    ('"my photo.png b.png', "pairs.txt:1: unclosed \" quote"),
    ("my photo.png b.png", "pairs.txt:1: expected 'source target', got 3 path(s)"),
])
def test_bad_pairs_line_is_one_line_before_the_model_loads(tmp_path, line, message, capsys):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(line + "\n")
    code = infer_main(["--pairs", str(pairs), "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "no.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_zero_shot_matcher_through_cli(tmp_path, images):
    from zeroshot_fixtures import make_tiny_dino

    dino = make_tiny_dino(tmp_path / "dino")
    out = tmp_path / "out"
    code = infer_main(["--matcher", "dino", "--dino-model", str(dino), "--source", str(images[0]), "--target",
                       str(images[1]), "--out", str(out), "--no-viz"])
    assert code == 0
    assert np.load(out / "flow.npy").shape == (80, 112, 2)
    # A model path the matcher does not use is an impossible option.
    assert infer_main(["--matcher", "dino", "--dino-model", str(dino), "--sd-model", str(dino), "--source",
                       str(images[0]), "--target", str(images[1]), "--out", str(tmp_path / "o2")]) == 2


# ----------------------------------------------------------------------- upright and finite inputs (#29)
def _tagged(path, image: np.ndarray, orientation: int, **save) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image).save(path, exif=exif.tobytes(), **save)


def test_exif_rotated_photo_is_matched_upright(tmp_path, checkpoint, photo):
    # A phone photo stored sideways with orientation 6 (the reproduction): its pixels are the
    # upright picture rotated 90° counter-clockwise, and the tag says "rotate 90° clockwise to display".
    upright_src, upright_tgt = photo[:96, :112], photo[10:90, 8:120]
    tmp = tmp_path
    cv2.imwrite(str(tmp / "src.png"), cv2.cvtColor(upright_src, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp / "tgt.png"), cv2.cvtColor(upright_tgt, cv2.COLOR_RGB2BGR))
    _tagged(tmp / "src_sideways.png", np.rot90(upright_src, 1), 6)
    _tagged(tmp / "tgt_sideways.jpg", np.rot90(upright_tgt, 1), 6, quality=98)
    base = ["--checkpoint", str(checkpoint), "--samples", "2", "--no-viz", "--flow-format", "npy"]
    assert infer_main(["--source", str(tmp / "src.png"), "--target", str(tmp / "tgt.png"), "--out", str(tmp / "a"), *base]) == 0
    assert infer_main(["--source", str(tmp / "src_sideways.png"), "--target", str(tmp / "tgt.png"), "--out",
                       str(tmp / "b"), *base]) == 0
    np.testing.assert_array_equal(np.load(tmp / "b" / "flow.npy"), np.load(tmp / "a" / "flow.npy"))
    assert infer_main(["--source", str(tmp / "src.png"), "--target", str(tmp / "tgt_sideways.jpg"), "--out",
                       str(tmp / "c"), *base]) == 0
    assert np.load(tmp / "c" / "flow.npy").shape == (80, 112, 2)  # the upright target's grid


def test_pil_image_with_an_exif_orientation_is_used_upright(photo):
    from PIL import Image

    from diffmatch.inputs import to_image_batch

    upright = photo[:40, :64]
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated 90° clockwise: "rotate 90° counter-clockwise to display"
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright, -1)))
    sideways.info["exif"] = exif.tobytes()
    sideways.getexif()[0x0112] = 8
    batch = to_image_batch(sideways)
    assert batch.shape == (1, 3, 40, 64)
    torch.testing.assert_close(batch, to_image_batch(upright))


@pytest.mark.parametrize("kind", ["array", "tensor"])
def test_nan_or_inf_pixels_are_refused(checkpoint, photo, kind):
    matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu")
    image = photo[:64, :80].astype(np.float32) / 255
    bad = image.copy()
    bad[10:20, 10:20] = np.nan
    bad[0, 0, 0] = np.inf
    source = bad if kind == "array" else torch.from_numpy(bad).permute(2, 0, 1)
    with pytest.raises(InputError, match=r"source: 301 pixel value\(s\) are NaN or infinite"):
        matcher.match(source, image)


def test_nan_pixels_in_an_image_file_fail_that_pair_in_one_line(tmp_path, checkpoint, images, capsys):
    nan = tmp_path / "nan.tiff"
    values = np.full((80, 112), 0.5, np.float32)
    values[:10, :10] = np.nan
    cv2.imwrite(str(nan), values)
    code = infer_main(["--source", str(images[0]), "--target", str(nan), "--out", str(tmp_path / "o"),
                       "--checkpoint", str(checkpoint), "--no-viz"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "nan.tiff: 100 pixel(s) are NaN or infinite" in err[0]
    assert not (tmp_path / "o" / "flow.npy").exists()


def test_a_refinement_other_than_the_calibrations_is_warned_about():
    import warnings

    from diffmatch.matcher import DiffMatcher
    from diffmatch.refinement import VariationalRefiner

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bundled calibration fits the default refinement
        DiffMatcher.from_checkpoint(device="cpu")
        DiffMatcher.from_checkpoint(device="cpu", refine=VariationalRefiner(backend="torch"))  # same iteration
    with pytest.warns(UserWarning, match=r"coarsest_side=128 \(now 384\)"):
        DiffMatcher.from_checkpoint(device="cpu", refine=VariationalRefiner(coarsest_side=384))
