"""The bundled checkpoints keep the behaviour they were trained with.

``tests/fixtures/bundled_reference.pt`` holds their outputs on a fixed pair, recorded before the
official-parity settings (mid-block attention norm, head count, timestep scaling, local-cost order)
were added; their stored settings lack those keys, which must therefore read as the legacy values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffmatch.denoiser import LEGACY_DENOISER
from diffmatch.model import LEGACY_MODEL
from diffmatch.weights import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "bundled_reference.pt"


@pytest.mark.parametrize("name", ["diffmatch_demo", "diffmatch_demo_cascade", "diffmatch_demo_effnet"])
def test_bundled_checkpoint_gives_its_recorded_output(name):
    reference = torch.load(REFERENCE, weights_only=True)
    model = load_checkpoint(ROOT / "checkpoints" / f"{name}.pt")
    for key, value in LEGACY_MODEL.items():
        assert getattr(model.config, key) == value
    for key, value in LEGACY_DENOISER.items():
        assert getattr(model.config.denoiser, key) == value
    result = model(reference["source"], reference["target"], 2, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.samples, reference[name]["samples"], rtol=0, atol=1e-5)
    torch.testing.assert_close(result.init_flow, reference[name]["init_flow"], rtol=0, atol=1e-5)
