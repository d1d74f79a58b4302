"""``infer.py`` as a newcomer meets it: bad --out, tiny and huge images, its words, its pictures, its speed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from diffmatch.cli import infer
from diffmatch.cli.infer import main as infer_main
from diffmatch.errors import InputError
from diffmatch.result import MatchResult

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def images(tmp_path, photo) -> tuple[Path, Path]:
    src, tgt = tmp_path / "src.png", tmp_path / "tgt.png"
    cv2.imwrite(str(src), cv2.cvtColor(photo[:96, :112], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tgt), cv2.cvtColor(photo[10:90, 8:120], cv2.COLOR_RGB2BGR))
    return src, tgt


def _args(images, out, checkpoint, *extra) -> list[str]:
    return ["--source", str(images[0]), "--target", str(images[1]), "--out", str(out),
            "--checkpoint", str(checkpoint), "--device", "cpu", *extra]


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ --out (defect 2)
@pytest.mark.parametrize("where", ["regular file", "under a file", "proc"])
def test_unwritable_out_is_one_line_before_the_model_loads(tmp_path, images, capsys, where):
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    out = {"regular file": blocker, "under a file": blocker / "out", "proc": Path("/proc/x")}[where]
    # The checkpoint does not exist: only a check made before loading the model can report --out.
    code = infer_main(_args(images, out, tmp_path / "missing.pt"))
    err = capsys.readouterr().err
    assert code == 2
    assert _error_lines(err) == [line for line in _error_lines(err) if line.startswith("error: --out")]
    assert len(_error_lines(err)) == 1 and str(out) in err


def test_unwritable_out_through_the_command_has_no_traceback(tmp_path, images):
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), *_args(images, "/proc/x", tmp_path / "m.pt")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == [_error_lines(proc.stderr)[0]] and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --out /proc/x")


# ------------------------------------------------------------------------------------ words (defect 5)
@pytest.mark.parametrize("fmt", ["flo", "npz", "npy"])
def test_wrote_line_lists_every_file(tmp_path, checkpoint, images, capsys, fmt):
    out = tmp_path / "out"
    assert infer_main(_args(images, out, checkpoint, "--flow-format", fmt)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("wrote "))
    folder, first = line[len("wrote "):].split(", ")[0].rsplit(os.sep, 1)
    listed = [first, *line.split(", ")[1:]]
    assert Path(folder) == out
    assert sorted(listed) == sorted(p.name for p in out.iterdir())
    assert f"flow.{fmt}" in listed


def test_help_states_the_steps_range(capsys):
    with pytest.raises(SystemExit):
        infer_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS DDIM steps K, 1..T" in text and "num_train_timesteps" in text


def test_readme_sample_matches_order_is_not_confident_first():
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "sample_matches(r" in x)
    assert "confident first" not in line and "weighted-random order" in line


# ------------------------------------------------------------------------------ tiny, huge (defect 6)
@pytest.mark.parametrize("size", [(1, 1), (3, 40)])
def test_image_smaller_than_the_stride_is_one_line(tmp_path, checkpoint, images, capsys, size):
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.full((*size, 3), 128, np.uint8))
    code = infer_main(_args((images[0], tiny), tmp_path / "out", checkpoint))
    err = _error_lines(capsys.readouterr().err)
    assert code == 1 and len(err) == 1
    assert f"target image is {size[1]}x{size[0]} px, smaller than the model's stride of 4 px" in err[0]
    assert not (tmp_path / "out" / "flow.npy").exists()


def test_large_image_warns_once_per_image_with_the_remedy(tmp_path, checkpoint, images, capsys, monkeypatch):
    monkeypatch.setattr(infer, "LARGE_IMAGE_MP", 0.009)  # the 112x96 source is 0.0108 MP, the target 0.009
    assert infer_main(_args(images, tmp_path / "out", checkpoint, "--no-viz")) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "src.png is 112x96" in warnings[0] and "--max-size" in warnings[0]
    assert "GB of memory" in warnings[0]
    assert infer_main(_args(images, tmp_path / "small", checkpoint, "--no-viz", "--max-size", "64")) == 0
    assert "warning:" not in capsys.readouterr().err


def test_max_size_matches_a_downscaled_copy_and_upsamples_the_flow(tmp_path, checkpoint, images):
    from diffmatch import DiffMatcher
    from diffmatch.inputs import shrink_images, to_image_batch
    from diffmatch.io import load_image

    out = tmp_path / "out"
    assert infer_main(_args(images, out, checkpoint, "--max-size", "56", "--samples", "2", "--no-viz")) == 0
    flow, unc = np.load(out / "flow.npy"), np.load(out / "uncertainty.npy")
    assert flow.shape == (80, 112, 2) and unc.shape == (80, 112)
    source, target = load_image(images[0]), load_image(images[1])
    matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu")
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    full = matcher.match(source, target, num_samples=2, generator=gen(), max_size=56)  # the library does it
    np.testing.assert_allclose(flow, full.flow[0].permute(1, 2, 0).numpy(), atol=1e-4)
    small_s, small_t = (shrink_images(to_image_batch(x), 56) for x in (source, target))
    assert small_s.shape[-2:] == (48, 56) and small_t.shape[-2:] == (40, 56)  # 112x96 and 112x80, longer side 56
    small = matcher.match(small_s, small_t, num_samples=2, generator=gen())
    expected = small.resized((80, 112), (2.0, 2.0))
    torch.testing.assert_close(full.flow, expected.flow)
    torch.testing.assert_close(full.uncertainty, expected.uncertainty)
    with pytest.raises(InputError, match="max_size"):
        matcher.match(source, target, max_size=4)


def test_resized_result_scales_a_translation_and_its_variance():
    # Small images at half size: a 1.5 px shift there is 3 px at full size, everywhere.
    samples = torch.tensor([1.5, -0.5]).view(1, 1, 2, 1, 1).expand(1, 2, 2, 10, 12).clone()
    samples[:, 1, 0] += 0.5  # two hypotheses 0.5 px apart in x: variance 0.0625 px² small, 0.25 full
    small = MatchResult.from_samples(samples)
    full = small.resized((20, 24), (2.0, 2.0))
    assert full.flow.shape == (1, 2, 20, 24) and full.samples.shape == (1, 2, 2, 20, 24)
    torch.testing.assert_close(full.flow[0, :, 5, 7], torch.tensor([3.5, -1.0]))
    torch.testing.assert_close(full.uncertainty[0, 0, 5, 7], torch.tensor(0.25))
    assert small.resized((10, 12), (1.0, 1.0)) is small
    assert small.resized((20, 24), (2.0, 2.0), samples=False).samples.shape == (1, 1, 2, 20, 24)


# ------------------------------------------------------------------------- pictures, speed (defect 7)
def test_single_pictures_are_array_operations_without_matplotlib(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from diffmatch.io import save_image\n"
        "from diffmatch.viz import blend_warp, flow_to_color, uncertainty_to_color\n"
        "img = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)\n"
        "flow = np.ones((40, 50, 2), np.float32)\n"
        f"out = {str(tmp_path)!r}\n"
        "save_image(out + '/flow.png', flow_to_color(flow))\n"
        "save_image(out + '/warp.png', blend_warp(img, img, flow))\n"
        "save_image(out + '/uncertainty.png', uncertainty_to_color(flow[..., 0]))\n"
        "print('matplotlib' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_infer_uncertainty_png_is_the_colormap_lookup(tmp_path, checkpoint, images):
    from diffmatch.io import load_image
    from diffmatch.viz import uncertainty_to_color

    out = tmp_path / "out"
    assert infer_main(_args(images, out, checkpoint)) == 0
    drawn = load_image(out / "uncertainty.png")
    np.testing.assert_array_equal(drawn, uncertainty_to_color(np.load(out / "uncertainty.npy")))


def test_help_and_argument_errors_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from diffmatch.cli.infer import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"code = main(['--source', 'a', '--target', 'b', '--out', {str(tmp_path / 'f')!r} + '/x'])\n"
        "print(code, 'torch' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    (tmp_path / "f").write_text("a file")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "2 False False", proc.stderr[-2000:]


def test_pairs_load_the_model_once(tmp_path, checkpoint, images, monkeypatch):
    from diffmatch.matcher import DiffMatcher

    loads = []
    original = DiffMatcher.from_checkpoint.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(DiffMatcher, "from_checkpoint", classmethod(counting))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{images[0]} {images[1]}\n" for _ in range(3)))
    out = tmp_path / "out"
    assert infer_main(["--pairs", str(pairs), "--out", str(out), "--checkpoint", str(checkpoint),
                       "--device", "cpu", "--no-viz", "--samples", "2"]) == 0
    assert len(loads) == 1 and len(list(out.glob("*/flow.npy"))) == 3


def test_layer_search_reaches_the_matcher_and_is_refused_elsewhere(tmp_path, checkpoint, images, capsys, monkeypatch):
    from diffmatch.matcher import DiffMatcher

    built = []
    original = DiffMatcher.from_checkpoint.__func__

    def recording(cls, *args, **kwargs):
        matcher = original(cls, *args, **kwargs)
        built.append(matcher.layer_search)
        return matcher

    monkeypatch.setattr(DiffMatcher, "from_checkpoint", classmethod(recording))
    assert infer_main(_args(images, tmp_path / "a", checkpoint, "--no-viz")) == 0
    assert infer_main(_args(images, tmp_path / "b", checkpoint, "--no-viz", "--no-layer-search")) == 0
    assert infer_main(_args(images, tmp_path / "c", checkpoint, "--no-viz", "--layer-search")) == 0  # old scripts
    assert built[0] is not None and built[1] is None and built[2] == built[0]  # searched by default
    capsys.readouterr()
    for flag in ("--layer-search", "--no-layer-search"):
        code = infer_main(["--source", str(images[0]), "--target", str(images[1]), "--out", str(tmp_path / "d"),
                           "--matcher", "dino", flag])
        err = capsys.readouterr().err
        assert code == 2 and _error_lines(err) == [f"error: {flag} applies to --matcher diffmatch, not dino"]
    with pytest.raises(SystemExit) as exit_:
        infer_main(_args(images, tmp_path / "e", checkpoint, "--layer-search", "--no-layer-search"))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "not allowed with argument" in err and len(_error_lines(err)) == 1
