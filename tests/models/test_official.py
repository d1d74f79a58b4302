"""``python -m diffmatch.convert_official``: strict key mapping, wrapped files, the public load path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffmatch.cli import convert_official
from diffmatch.models import official
from diffmatch.models.config import config_from_dict
from diffmatch.models.denoiser import DenoiserConfig, FlowDenoiser
from diffmatch.models.official import OFFICIAL_MODEL, OFFICIAL_UPSAMPLER, official_to_denoiser
from diffmatch.models.weights import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_parity.pt"
SMALL = {"base_channels": 4, "norm_groups": 4, "attention_resolutions": [4, 2], "num_heads": 4}


def official_layout(width: int, in_channels: int = 85, mult=(1, 2, 3, 4), blocks: int = 3, attn_ds=(4, 8)) -> dict:
    """Names and shapes of the official ``UNetModel_stage1`` / ``UNetModel_sr`` tensors (improved-diffusion ADM).

    Written from the layout of ``improved_diffusion/unet.py`` at KU-CVLAB/DiffMatch 045ea83, independently
    of the converter: input conv, ``blocks`` res blocks per level (+ attention at the listed
    downsampling factors), a strided conv between levels, middle res-attn-res, ``blocks + 1`` decoder
    blocks per level with an upsampling conv, and the output GroupNorm + conv.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    emb = 4 * width

    def conv(name, cin, cout, k=3):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    def res(name, cin, cout):
        norm(f"{name}.in_layers.0", cin)
        conv(f"{name}.in_layers.2", cin, cout)
        shapes[f"{name}.emb_layers.1.weight"], shapes[f"{name}.emb_layers.1.bias"] = (2 * cout, emb), (2 * cout,)
        norm(f"{name}.out_layers.0", cout)
        conv(f"{name}.out_layers.3", cout, cout)
        if cin != cout:
            conv(f"{name}.skip_connection", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        shapes[f"{name}.qkv.weight"], shapes[f"{name}.qkv.bias"] = (3 * c, c, 1), (3 * c,)
        shapes[f"{name}.proj_out.weight"], shapes[f"{name}.proj_out.bias"] = (c, c, 1), (c,)

    shapes["time_embed.0.weight"], shapes["time_embed.0.bias"] = (emb, width), (emb,)
    shapes["time_embed.2.weight"], shapes["time_embed.2.bias"] = (emb, emb), (emb,)
    conv("input_blocks.0.0", in_channels, width)
    chans, ch, ds, k = [width], width, 1, 1
    for level, m in enumerate(mult):
        for _ in range(blocks):
            res(f"input_blocks.{k}.0", ch, m * width)
            ch = m * width
            if ds in attn_ds:
                attn(f"input_blocks.{k}.1", ch)
            chans.append(ch)
            k += 1
        if level != len(mult) - 1:
            conv(f"input_blocks.{k}.0.op", ch, ch)
            chans.append(ch)
            k, ds = k + 1, ds * 2
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    k = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(blocks + 1):
            res(f"output_blocks.{k}.0", ch + chans.pop(), m * width)
            ch, j = m * width, 1
            if ds in attn_ds:
                attn(f"output_blocks.{k}.1", ch)
                j = 2
            if level and i == blocks:
                conv(f"output_blocks.{k}.{j}.conv", ch, ch)
                ds //= 2
            k += 1
    norm("out.0", ch)
    conv("out.2", width, 2)
    return shapes


def random_state(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}


def small_denoiser() -> FlowDenoiser:
    return FlowDenoiser(DenoiserConfig(**{**SMALL, "attention_resolutions": (4, 2)}), 16, 81, True, 5)


def test_independent_layout_is_the_fixtures() -> None:
    fixture = torch.load(FIXTURE, map_location="cpu", weights_only=True)["stage1_state_dict"]
    assert {k: tuple(v.shape) for k, v in fixture.items()} == official_layout(4)


def test_unknown_and_missing_keys_in_one_error() -> None:
    state = random_state(official_layout(4))
    state["input_blocks.1.0.extra.weight"] = torch.zeros(1)
    del state["out.2.bias"], state["middle_block.1.qkv.weight"]
    with pytest.raises(ValueError) as err:
        official_to_denoiser(state, small_denoiser())
    message = str(err.value)
    assert "unknown official keys (1): input_blocks.1.0.extra.weight" in message
    assert "missing official keys (2): middle_block.1.qkv.weight, out.2.bias" in message
    assert "\n" not in message


def test_wrong_shape_is_named() -> None:
    state = random_state(official_layout(8))  # another width: every shape differs
    with pytest.raises(ValueError, match="wrong shape"):
        official_to_denoiser(state, small_denoiser())


@pytest.mark.parametrize("wrap", ["raw", "ema", "state_dict", "module"])
def test_raw_and_wrapped_files(tmp_path: Path, wrap: str) -> None:
    state = random_state(official_layout(4))
    data = {
        "raw": state,
        "ema": {"ema": state, "model": {"x": torch.zeros(1)}},
        "state_dict": {"state_dict": state, "step": 3},
        "module": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    path = tmp_path / "ema_0.9999_000001.pt"
    torch.save(data, path)
    read = official.read_official_state_dict(path)
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], state[k]) for k in state)


def test_not_an_official_file(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(Exception, match="not an official DiffMatch U-Net checkpoint"):
        official.read_official_state_dict(path)


def _small_official(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the official settings to the fixture's reduced width (VGG random: nothing to download)."""
    small = {**OFFICIAL_MODEL, "image_size": 64, "cost_size": 16, "denoiser": SMALL,
             "feature_kwargs": {**OFFICIAL_MODEL["feature_kwargs"], "weights": "random"}}
    monkeypatch.setattr(official, "OFFICIAL_MODEL", small)
    monkeypatch.setattr(official, "OFFICIAL_UPSAMPLER", {**OFFICIAL_UPSAMPLER, "size": 32})


def test_cli_converts_both_stages_and_they_load_publicly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _small_official(monkeypatch)
    fixture = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    stage1_file, sr_file = tmp_path / "ema_stage1.pt", tmp_path / "ema_sr.pt"
    torch.save({k: v.float() for k, v in fixture["stage1_state_dict"].items()}, stage1_file)
    torch.save({"ema": fixture["upsampler_state_dict"]}, sr_file)
    out1, out2 = tmp_path / "stage1.pt", tmp_path / "cascade.pt"
    assert convert_official.main([str(stage1_file), str(out1), "--vgg16", "random"]) == 0
    assert convert_official.main([str(sr_file), str(out2), "--stage", "upsampler", "--stage1", str(out1)]) == 0
    first, cascade = load_checkpoint(out1), load_checkpoint(out2)
    assert first.upsampler is None and cascade.upsampler is not None
    assert cascade.config.init_flow == "hard" and cascade.upsampler.config.refine == "mean"
    mapped = official_to_denoiser(fixture["upsampler_state_dict"], cascade.upsampler.denoiser)
    own = cascade.upsampler.denoiser.state_dict()
    assert all(torch.equal(own[k], v.float()) for k, v in mapped.items())
    image = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    result = cascade(image, image, num_samples=2, generator=torch.Generator().manual_seed(0))
    assert result.flow.shape == (1, 2, 48, 40) and torch.isfinite(result.flow).all()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert convert_official.main([str(tmp_path / "absent.pt"), str(tmp_path / "out.pt")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    sr = tmp_path / "sr.pt"
    torch.save(random_state(official_layout(4)), sr)
    assert convert_official.main([str(sr), str(tmp_path / "out.pt"), "--stage", "upsampler"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--stage1" in err and "\n" not in err
    assert not (tmp_path / "out.pt").exists()


def test_missing_vgg16_weights_say_what_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached ImageNet VGG-16
    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", _offline)
    sr = tmp_path / "ema.pt"
    torch.save(random_state(official_layout(4)), sr)
    assert convert_official.main([str(sr), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "vgg16-397923af.pth" in err and "\n" not in err
    # The command's own flag, not the Python argument (#29 item 10).
    assert "or pass --vgg16 /path/to/vgg16-397923af.pth" in err and "weights=" not in err
    assert not (tmp_path / "out.pt").exists()


def test_out_that_is_a_folder_is_refused_before_converting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert convert_official.main([str(tmp_path / "absent.pt"), str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path}: is a folder; give a file name, e.g. {tmp_path / 'model.pt'}"
    ]


def _offline(*args, **kwargs):
    raise OSError("offline")


def test_full_size_official_layout_loads_into_paper_plus_official() -> None:
    """The paper-size official layout (121,153,794 tensors' entries) fills paper.yaml + official.yaml strictly (~9 s)."""
    layout = official_layout(128)
    assert sum(torch.Size(s).numel() for s in layout.values()) == 121_153_794
    model_cfg: dict = {}
    for name in ("paper.yaml", "official.yaml"):
        block = yaml.safe_load((ROOT / "configs" / name).read_text())["model"]["model"]
        model_cfg = _merge(model_cfg, block)
    model_cfg["feature_kwargs"] = {**model_cfg["feature_kwargs"], "weights": "random"}
    config = config_from_dict(model_cfg)
    expected = {k: v for k, v in OFFICIAL_MODEL.items() if k != "feature_kwargs"}
    assert {k: config.to_dict()[k] for k in expected} == expected
    assert config.feature_kwargs["levels"] == ["pool2", "pool3"] and config.feature_kwargs["half_levels"] == ["pool3", "pool4"]
    denoiser = FlowDenoiser(config.denoiser, config.cost_size, 81, True, config.num_train_timesteps)
    assert sum(p.numel() for p in denoiser.parameters()) == 121_153_794
    state = official_to_denoiser(random_state(layout), denoiser)
    denoiser.load_state_dict(state, strict=True)
    assert sum(v.numel() for v in state.values()) == 121_153_794


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
