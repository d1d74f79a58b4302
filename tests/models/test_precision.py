"""Precision (``DiffMatcher(precision=...)``, ``--precision``) and ``compile=True``."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import shifted_pair, tiny_config

from diffmatch.cli import evaluate as evaluate_cli
from diffmatch.cli.infer import main as infer_main
from diffmatch.errors import InputError
from diffmatch.matcher import DiffMatcher
from diffmatch.models import precision as precision_module
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.precision import check_precision, full_precision


def _model() -> DiffMatch:
    # XFeat's small trunk: this CPU's bfloat16 convolutions take a slow fallback (the tiny VGG: 5 s a pair).
    torch.manual_seed(0)
    model = DiffMatch(tiny_config(features="xfeat", feature_kwargs={"weights": "random"}))
    torch.nn.init.normal_(model.denoiser.unet.conv_out.weight, std=0.05)
    return model


def _match(matcher: DiffMatcher, photo) -> tuple:
    source, target, flow = shifted_pair(photo, 3, -2)
    generator = torch.Generator().manual_seed(0)
    # Without the layer search: the networks' precision is measured, not which plane a pixel takes.
    result = matcher.match(source, target, num_samples=2, num_steps=1, generator=generator, refine=False, layer_search=False)
    return result, flow


def test_check_precision_names_and_devices():
    assert check_precision("bf16", "cpu") == "bf16"
    assert check_precision("bf16-mixed", "cpu") == "bf16" and check_precision("32-true", "cpu") == "32"
    with pytest.raises(InputError, match="needs a CUDA device"):
        check_precision("16", "cpu")
    with pytest.raises(InputError, match="precision must be one of 32, bf16, 16"):
        check_precision("64", "cpu")


def test_bf16_runs_the_networks_in_bf16_and_the_matching_in_float32(photo):
    reference, _ = _match(DiffMatcher(_model(), device="cpu", refine=False), photo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the slow-CPU warning, tested below
        matcher = DiffMatcher(_model(), device="cpu", refine=False, precision="bf16")
    assert matcher.model.denoiser.unet.conv_in.weight.dtype == torch.bfloat16
    assert next(matcher.model.features.parameters()).dtype == torch.bfloat16
    result, _ = _match(matcher, photo)
    for tensor in (result.flow, result.samples, result.init_flow, result.uncertainty):
        assert tensor.dtype == torch.float32
    # bfloat16 features move the tiny random model's flow by a fraction of a pixel, not more.
    assert (result.flow - reference.flow).norm(dim=1).mean() < 0.5
    source, target, _ = shifted_pair(photo, 3, -2)
    cond = matcher.model.condition(source, target)
    assert cond.init_flow.dtype == torch.float32 and cond.local_cost.dtype == torch.float32


def test_cost_volume_stays_float32_under_a_callers_autocast():
    model = _model().eval()
    c = model.config.cost_size
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 8, c, c, generator=generator) for _ in range(2)]
    with torch.no_grad():
        plain = model.condition_from_maps([maps[0]], [maps[1]])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.condition_from_maps([maps[0]], [maps[1]])
            with full_precision(maps[0]):
                assert not torch.is_autocast_enabled("cpu")
            assert torch.is_autocast_enabled("cpu")
    assert mixed.init_flow.dtype == torch.float32 and mixed.local_cost.dtype == torch.float32
    # Autocast would have run the cost's matmuls in bfloat16; they ran in float32, so nothing moved.
    torch.testing.assert_close(mixed.init_flow, plain.init_flow)
    torch.testing.assert_close(mixed.local_cost, plain.local_cost)


def test_bf16_warns_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr("diffmatch.matcher.native_bf16", lambda device: False)
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        DiffMatcher(_model(), device="cpu", refine=False, precision="bf16")
    monkeypatch.setattr("diffmatch.matcher.native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        DiffMatcher(_model(), device="cpu", refine=False, precision="bf16")
    assert isinstance(precision_module.native_bf16("cpu"), bool)


def test_bad_precision_and_compile_are_one_line_errors(checkpoint, tmp_path, capsys, photo):
    with pytest.raises(InputError, match="needs a CUDA device"):
        DiffMatcher.from_checkpoint(tmp_path / "not-loaded-first.pt", device="cpu", precision="16")
    with pytest.raises(InputError, match="compile must be True or False"):
        DiffMatcher(_model(), device="cpu", compile="yes")
    source = tmp_path / "s.png"
    import cv2

    cv2.imwrite(str(source), photo)
    code = infer_main(["--source", str(source), "--target", str(source), "--out", str(tmp_path / "o"),
                       "--checkpoint", str(checkpoint), "--device", "cpu", "--precision", "16"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a CUDA device" in err and len(err.strip().splitlines()) == 1
    code = evaluate_cli.main(["--dataset", "synthetic", "--methods", "dis", "--limit", "1", "--device", "cpu",
                              "--precision", "16", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "needs a CUDA device" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # inductor compiles the U-Net: 2-3 minutes on 2 loaded CPU cores
def test_compile_gives_the_same_flow(photo):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    reference, _ = _match(DiffMatcher(_model(), device="cpu", refine=False), photo)
    matcher = DiffMatcher(_model(), device="cpu", refine=False, compile=True)
    names = set(matcher.model.state_dict())
    result, _ = _match(matcher, photo)
    assert set(matcher.model.state_dict()) == names, "compiling must not rename the weights"
    torch.testing.assert_close(result.flow, reference.flow, atol=1e-3, rtol=0)
    torch.testing.assert_close(result.samples, reference.samples, atol=1e-3, rtol=0)
