"""``DiffMatcher.match`` returns what it returned before the package was restructured (issue #28).

``tests/fixtures/pipeline_reference.pt`` (``scripts/make_pipeline_reference.py``) holds, for two small
pairs, the default's stage 1's (``diffmatch_xfeat.pt``; recorded for the default of issue #28's time and
again when stage 1's weights were fine-tuned on 3D scenes, issue #27) refined samples,
calibrated confidence, unrefined samples and confidence
cues (3 hypotheses, seed 0, one pass and no layer search: the fixture predates two-pass matching and the layer search as defaults, which
has its own tests in ``test_two_pass.py``), and a tiny random cascade's samples and cues. Flow on the target grid,
``target(x) ≈ source(x + flow(x))``, px. Tolerances: float32 round-off, which differs between
machines (CPU instruction sets, library versions): on an AVX-512/AMX machine the model's flow moved
by up to 1.3e-3 px from the fixture's, the refined flow by 3.6e-3 px, F_init by 3e-4 px and the
tiny cascade's variances (up to 2600 px²) by 0.04 px². Hence 5e-3 px on flows and cues (plus 1e-3
relative), 1e-3 px on F_init and 1e-3 on the confidence; a change of logic moves them by far more.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from diffmatch import DiffMatcher
from diffmatch.assets import bundled_stage1
from diffmatch.confidence.cues import match_with_cues

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = torch.load(ROOT / "tests" / "fixtures" / "pipeline_reference.pt", weights_only=True)
PAIRS = range(len(REFERENCE["pairs"]))
FLOW_ATOL, INIT_ATOL, CONFIDENCE_ATOL = 5e-3, 1e-3, 1e-3


def _script():
    spec = importlib.util.spec_from_file_location("make_pipeline_reference", ROOT / "scripts" / "make_pipeline_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def matcher() -> DiffMatcher:
    return DiffMatcher.from_checkpoint(bundled_stage1(), device="cpu")


@pytest.mark.parametrize("index", PAIRS)
def test_stage1_match_is_unchanged(matcher, index):
    source, target = REFERENCE["pairs"][index]
    expected = REFERENCE["default"][index]
    result = matcher.match(source, target, num_samples=3, generator=torch.Generator().manual_seed(0), two_pass=False, layer_search=False)
    _close(result.samples, expected["samples"], FLOW_ATOL)
    _close(result.init_flow, expected["init_flow"], INIT_ATOL)
    _close(result.confidence, expected["confidence"], CONFIDENCE_ATOL)
    raw = matcher.match(
        source, target, num_samples=3, generator=torch.Generator().manual_seed(0), refine=False, two_pass=False, layer_search=False
    )
    _close(raw.samples, expected["raw_samples"], FLOW_ATOL)
    _, cues = match_with_cues(matcher.model, source, target, 3, None, 0.0, torch.Generator().manual_seed(0))
    # The local cues, added after the fixture, are local means of two of its cues (test_calibrator.py).
    assert set(cues) == {"variance", "local_variance", "local_fb_error", *expected["cues"]}
    for name, value in expected["cues"].items():
        _close(cues[name], value, FLOW_ATOL, rtol=1e-3)  # variances up to 2600 px²


@pytest.mark.parametrize("index", PAIRS)
def test_cascade_is_unchanged(index):
    source, target = REFERENCE["pairs"][index]
    expected = REFERENCE["cascade"][index]
    result, cues = match_with_cues(_script().tiny_cascade(), source, target, 2, None, 0.0, torch.Generator().manual_seed(0))
    _close(result.samples, expected["samples"], FLOW_ATOL)
    _close(result.init_flow, expected["init_flow"], INIT_ATOL)
    for name, value in expected["cues"].items():
        _close(cues[name], value, FLOW_ATOL, rtol=1e-3)  # variances up to 2600 px²
