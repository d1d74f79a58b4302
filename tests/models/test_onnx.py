"""ONNX export of stage 1 (``python -m diffmatch.export CKPT OUT.onnx --onnx``), run with onnxruntime on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import shifted_pair, tiny_config

from diffmatch.assets import BUNDLED_STAGE1
from diffmatch.cli.export import main as export_main
from diffmatch.errors import InputError
from diffmatch.models.config import UpsamplerConfig
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.onnx import export_onnx
from diffmatch.models.weights import load_checkpoint, save_weights

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TOLERANCE_PX = 1e-3  # the bound on the flows, in pixels of the model's grid
# F_init is a soft-argmax at temperature 0.005: where the cost has near-ties, float differences of
# 1e-6 in the features move it by about 1e-3 cell (the bundled model: 1.4e-3 at one of 2304 cells,
# 99 % of cells below 1e-4). The denoised flows stay within TOLERANCE_PX.
INIT_TOLERANCE_PX = 5e-3


def _torch_flows(model: DiffMatch, source: torch.Tensor, target: torch.Tensor, noise: torch.Tensor, steps: int):
    """The torch path's hypotheses and F_init for this start noise, in cost-grid pixels."""
    c = model.config.cost_size
    with torch.no_grad():
        cond = model.condition(source, target)
        samples = model.sample_normalized(cond, noise.shape[0], steps, init_noise=noise[None])
    return samples[0].numpy() * c, cond.init_flow.numpy() * c


def _run(path: Path, source: torch.Tensor, target: torch.Tensor, noise: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"source": source.numpy(), "target": target.numpy(), "noise": noise.numpy()}
    return session.run(["flow", "init_flow"], feed)


def _check_parity(path: Path, model: DiffMatch, source: torch.Tensor, target: torch.Tensor, steps: int) -> None:
    """Run the graph with 1 and 3 hypotheses and compare flows and F_init with torch, in px."""
    c = model.config.cost_size
    generator = torch.Generator().manual_seed(3)
    for n in (1, 3):
        noise = torch.randn(n, 2, c, c, generator=generator)
        flow, init = _run(path, source, target, noise)
        ref_flow, ref_init = _torch_flows(model, source, target, noise, steps)
        assert flow.shape == (n, 2, c, c) and init.shape == (1, 2, c, c)
        flow_error, init_error = float(np.abs(flow - ref_flow).max()), float(np.abs(init - ref_init).max())
        assert flow_error < TOLERANCE_PX, f"ONNX and torch flows differ by {flow_error:.2e} px"
        assert init_error < INIT_TOLERANCE_PX, f"ONNX and torch F_init differ by {init_error:.2e} px"


def test_tiny_model_matches_torch(checkpoint, photo, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert export_main([str(checkpoint), str(out), "--onnx", "--steps", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = load_checkpoint(checkpoint)
    source, target, _ = shifted_pair(photo, 4, -3, size=model.config.image_size)
    _check_parity(out, model, source, target, steps=3)

    # The noise is the only randomness: the same noise gives the same flows, other noise other flows.
    c = model.config.cost_size
    noise = torch.randn(3, 2, c, c, generator=torch.Generator().manual_seed(0))
    first, second = _run(out, source, target, noise)[0], _run(out, source, target, noise)[0]
    np.testing.assert_array_equal(first, second)
    assert np.abs(first[0] - first[1]).max() > 1e-3, "hypotheses from different noise should differ"


def test_export_keeps_the_callers_model_and_writes_metadata(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = DiffMatch(tiny_config()).train()
    path = export_onnx(model, tmp_path / "m.onnx", num_steps=2)
    assert model.training, "export must leave the caller's model in its mode"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["image_size"] == "64" and meta["cost_size"] == "16" and meta["num_steps"] == "2"
    assert onnx.load(str(path)).opset_import[0].version >= 17


def test_bundled_stage1_matches_torch(tmp_path):
    out = tmp_path / "stage1.onnx"
    assert export_main([str(BUNDLED_STAGE1), str(out), "--onnx"]) == 0
    model = load_checkpoint(BUNDLED_STAGE1)
    s = model.config.image_size
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    target = F.interpolate(image, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
    source = torch.roll(target, shifts=(5, -7), dims=(2, 3))
    _check_parity(out, model, source, target, steps=model.default_steps())


def _cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:  # argparse errors
        export_main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_cli_refuses_bad_options_in_one_line(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "x.onnx")
    err = _cli_error([str(checkpoint), out, "--onnx", "--half"], capsys)
    assert "--half" in err and err.count("\n") == 1
    err = _cli_error([str(checkpoint), out, "--steps", "2"], capsys)
    assert "--onnx" in err and err.count("\n") == 1
    for extra, words in ((["--steps", "9"], "steps must be"), (["--opset", "16"], "opset must be"),
                         (["--image-size", "36"], "image_size must be")):
        assert export_main([str(checkpoint), out, "--onnx", *extra]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


def test_cascade_and_regression_models_are_refused(tmp_path, capsys):
    torch.manual_seed(0)
    cascade = save_weights(DiffMatch(tiny_config(), UpsamplerConfig(size=32, radius=2)), tmp_path / "c.pt")
    assert export_main([str(cascade), str(tmp_path / "c.onnx"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "cascade" in err and err.count("\n") == 1
    assert f"export its stage 1 (the bundled default's is {BUNDLED_STAGE1})" in err
    with pytest.raises(InputError, match="diffusion"):
        export_onnx(DiffMatch(tiny_config(diffusion=False)), tmp_path / "r.onnx")


def test_missing_onnx_package_names_the_install(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if not installed
    assert export_main([str(checkpoint), str(tmp_path / "x.onnx"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "pip install onnx onnxruntime" in err and err.count("\n") == 1
