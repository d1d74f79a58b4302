"""The bundled default keeps its behaviour, and stored settings from before a key existed keep theirs.

``tests/fixtures/bundled_reference.pt`` holds ``diffmatch/assets/diffmatch_xfeat.pt``'s samples and
``F_init`` (flow on the target grid, ``target(x) ≈ source(x + flow(x))``, px) on a fixed 56×48 pair,
2 hypotheses, the checkpoint's own step count, seed 0, recorded when it was bundled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffmatch.matcher import BUNDLED_CHECKPOINT
from diffmatch.models.config import LEGACY_MODEL, config_from_stored
from diffmatch.models.denoiser import LEGACY_DENOISER
from diffmatch.models.weights import load_checkpoint, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "bundled_reference.pt"


def test_bundled_default_gives_its_recorded_output():
    reference = torch.load(REFERENCE, weights_only=True)
    assert BUNDLED_CHECKPOINT.name == "diffmatch_xfeat.pt"
    model = load_checkpoint(BUNDLED_CHECKPOINT)
    assert model.default_steps() == 1
    result = model(reference["source"], reference["target"], 2, None, generator=torch.Generator().manual_seed(0))
    expected = reference["diffmatch_xfeat"]
    torch.testing.assert_close(result.samples, expected["samples"], rtol=0, atol=1e-3)
    torch.testing.assert_close(result.init_flow, expected["init_flow"], rtol=0, atol=1e-3)


def test_bundled_checkpoint_is_small_and_self_contained():
    assert BUNDLED_CHECKPOINT.stat().st_size <= 20e6
    config, state = read_checkpoint(BUNDLED_CHECKPOINT)
    assert config.features == "xfeat"
    assert any(k.startswith("features.") for k in state)  # XFeat's weights travel with the checkpoint


def test_settings_stored_before_the_parity_keys_read_as_legacy():
    """A checkpoint written before a setting existed was trained with its legacy value."""
    stored = read_checkpoint(BUNDLED_CHECKPOINT)[0].to_dict()
    for key in LEGACY_MODEL:
        stored.pop(key, None)
    for key in LEGACY_DENOISER:
        stored["denoiser"].pop(key, None)
    config = config_from_stored(stored)
    for key, value in LEGACY_MODEL.items():
        assert getattr(config, key) == value
    for key, value in LEGACY_DENOISER.items():
        assert getattr(config.denoiser, key) == value
