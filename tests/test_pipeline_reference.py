"""``DiffMatcher.match`` returns what it returned before the package was restructured (issue #28).

``tests/fixtures/pipeline_reference.pt`` (``scripts/make_pipeline_reference.py``) holds, for two small
pairs, the then bundled default's (today the default's stage 1, ``diffmatch_xfeat.pt``) refined samples,
calibrated confidence, unrefined samples and confidence
cues (3 hypotheses, seed 0, one pass: the fixture predates two-pass matching as the default, which
has its own tests in ``test_two_pass.py``), and a tiny random cascade's samples and cues. Flow on the target grid,
``target(x) ≈ source(x + flow(x))``, px. Tolerances: float32 round-off of a reordered computation
(1e-4 px on the model's flow; the refinement may grow such differences, 1e-3 px).
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
    result = matcher.match(source, target, num_samples=3, generator=torch.Generator().manual_seed(0), two_pass=False)
    _close(result.samples, expected["samples"], 1e-3)
    _close(result.init_flow, expected["init_flow"], 1e-4)
    _close(result.confidence, expected["confidence"], 1e-4)
    raw = matcher.match(
        source, target, num_samples=3, generator=torch.Generator().manual_seed(0), refine=False, two_pass=False
    )
    _close(raw.samples, expected["raw_samples"], 1e-4)
    _, cues = match_with_cues(matcher.model, source, target, 3, None, 0.0, torch.Generator().manual_seed(0))
    # The local cues, added after the fixture, are local means of two of its cues (test_calibrator.py).
    assert set(cues) == {"variance", "local_variance", "local_fb_error", *expected["cues"]}
    for name, value in expected["cues"].items():
        _close(cues[name], value, 1e-4, rtol=1e-6)  # float rounding of variances up to 1000 px²


@pytest.mark.parametrize("index", PAIRS)
def test_cascade_is_unchanged(index):
    source, target = REFERENCE["pairs"][index]
    expected = REFERENCE["cascade"][index]
    result, cues = match_with_cues(_script().tiny_cascade(), source, target, 2, None, 0.0, torch.Generator().manual_seed(0))
    _close(result.samples, expected["samples"], 1e-4)
    _close(result.init_flow, expected["init_flow"], 1e-4)
    for name, value in expected["cues"].items():
        _close(cues[name], value, 1e-4, rtol=1e-6)  # float rounding of variances up to 1000 px²
