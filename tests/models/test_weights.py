"""The bundled default keeps its behaviour, and stored settings from before a key existed keep theirs.

``tests/fixtures/bundled_reference.pt`` holds the samples and ``F_init`` (flow on the target grid,
``target(x) ≈ source(x + flow(x))``, px) of the bundled default, the cascade
``diffmatch/assets/diffmatch_xfeat_stage2.pt`` (``"diffmatch_xfeat_stage2"``), and of its stage 1
``diffmatch_xfeat.pt`` (``"diffmatch_xfeat"``) on a fixed 56×48 pair, 2 hypotheses, the
checkpoints' own step count, seed 0, each recorded when it was bundled (the cascade's again when
its stage 2 began to run once on the stage-1 mean, ``refine="once"``; both again when they were
fine-tuned on 3D scenes on a GPU, issue #27).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffmatch.assets import BUNDLED_CHECKPOINT, BUNDLED_STAGE1
from diffmatch.models.config import LEGACY_MODEL, config_from_stored
from diffmatch.models.denoiser import LEGACY_DENOISER
from diffmatch.models.weights import load_checkpoint, read_calibration, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "bundled_reference.pt"


@pytest.mark.parametrize("path", [BUNDLED_CHECKPOINT, BUNDLED_STAGE1], ids=["default", "stage1"])
def test_bundled_models_give_their_recorded_output(path):
    reference = torch.load(REFERENCE, weights_only=True)
    model = load_checkpoint(path)
    assert model.default_steps() == 1
    assert (model.upsampler is not None) == (path == BUNDLED_CHECKPOINT)
    result = model(reference["source"], reference["target"], 2, None, generator=torch.Generator().manual_seed(0))
    expected = reference[path.stem]
    torch.testing.assert_close(result.samples, expected["samples"], rtol=0, atol=1e-3)
    torch.testing.assert_close(result.init_flow, expected["init_flow"], rtol=0, atol=1e-3)


def test_bundled_checkpoints_are_small_and_need_nothing_else():
    assert BUNDLED_CHECKPOINT.name == "diffmatch_xfeat_stage2.pt" and BUNDLED_STAGE1.name == "diffmatch_xfeat.pt"
    for path in (BUNDLED_CHECKPOINT, BUNDLED_STAGE1):
        assert path.stat().st_size <= 20e6, path.name
        assert read_calibration(path) is not None, path.name
    config, state = read_checkpoint(BUNDLED_STAGE1)
    assert config.features == "xfeat"
    assert any(k.startswith("features.") for k in state)  # XFeat's weights travel with the checkpoint
    # The default is a stage-2 file: stage 2's tensors only, joined with its stage 1 beside it.
    stored = torch.load(BUNDLED_CHECKPOINT, weights_only=True)
    assert stored["stage1"]["file"] == BUNDLED_STAGE1.name
    assert all(k.startswith("upsampler.") for k in stored["state_dict"])
    assert read_checkpoint(BUNDLED_CHECKPOINT)[1].keys() == set(state) | set(stored["state_dict"])


def test_settings_stored_before_the_parity_keys_read_as_legacy():
    """A checkpoint written before a setting existed was trained with its legacy value."""
    stored = read_checkpoint(BUNDLED_STAGE1)[0].to_dict()
    for key in LEGACY_MODEL:
        stored.pop(key, None)
    for key in LEGACY_DENOISER:
        stored["denoiser"].pop(key, None)
    config = config_from_stored(stored)
    for key, value in LEGACY_MODEL.items():
        assert getattr(config, key) == value
    for key, value in LEGACY_DENOISER.items():
        assert getattr(config.denoiser, key) == value


def _tiny_file(path: Path, seed: int, **overrides) -> Path:
    from helpers import tiny_config

    from diffmatch.models.diffmatch import DiffMatch
    from diffmatch.models.weights import save_weights

    torch.manual_seed(seed)
    return save_weights(DiffMatch(tiny_config(**overrides)), path)


def test_interpolation_runs_along_the_line_between_two_models(tmp_path):
    from diffmatch.cli.export import main as export_main

    a, b = _tiny_file(tmp_path / "a.pt", 0), _tiny_file(tmp_path / "b.pt", 1)
    states = {}
    for alpha in (0.0, 0.25, 1.0):
        out = tmp_path / f"mix{alpha}.pt"
        assert export_main([str(a), str(out), "--interpolate", str(b), "--alpha", str(alpha)]) == 0
        states[alpha] = read_checkpoint(out)[1]
    state_a, state_b = read_checkpoint(a)[1], read_checkpoint(b)[1]
    key = next(k for k in state_a if k.startswith("denoiser.") and k.endswith("weight"))
    assert not torch.equal(state_a[key], state_b[key])
    torch.testing.assert_close(states[0.0][key], state_a[key], rtol=0, atol=0)
    torch.testing.assert_close(states[1.0][key], state_b[key], rtol=0, atol=1e-7)
    torch.testing.assert_close(states[0.25][key], 0.75 * state_a[key] + 0.25 * state_b[key], rtol=1e-6, atol=1e-7)
    assert "calibration" not in torch.load(tmp_path / "mix0.25.pt", map_location="cpu", weights_only=True)
    load_checkpoint(tmp_path / "mix0.25.pt")  # a loadable model


def test_interpolating_models_with_other_settings_is_one_line_and_status_2(tmp_path, capsys):
    from diffmatch.cli.export import main as export_main

    a, b = _tiny_file(tmp_path / "a.pt", 0), _tiny_file(tmp_path / "b.pt", 1, radius=3)
    assert export_main([str(a), str(tmp_path / "mix.pt"), "--interpolate", str(b), "--alpha", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "settings differ" in err
    assert not (tmp_path / "mix.pt").exists()
    for bad in (["--interpolate", str(a), "--alpha", "1.5"], ["--interpolate", str(a)]):
        with pytest.raises(SystemExit) as exit_:
            export_main([str(a), str(tmp_path / "mix.pt"), *bad])
        assert exit_.value.code == 2
