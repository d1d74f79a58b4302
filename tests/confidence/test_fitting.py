"""The calibration's validation pairs: both benchmarks' kinds, their levels in turn, a share corrupted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmatch.confidence import CUES, SEARCH_CUES
from diffmatch.confidence.cues import search_cues
from diffmatch.confidence.fitting import (
    SEARCH_FIT_CUES,
    CueSamples,
    calibration_pairs,
    collect_cues,
    pair_ause,
    select_cues,
)
from diffmatch.data import bundled_photos
from diffmatch.errors import InputError
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.refinement import LayerSearchConfig
from diffmatch.result import MatchResult
from tests.helpers import tiny_config

PHOTOS = bundled_photos("train")


def test_calibration_pairs_mix_scenes_and_synthetic_levels():
    items = calibration_pairs(PHOTOS, 6, 64, corrupted=0.5, seed=1, scenes=1 / 3, scene_size=(48, 64))
    assert [item["kind"] for item in items] == ["synthetic", "synthetic", "scenes"] * 2
    assert [item["name"].split("/")[0] for item in items if item["kind"] == "scenes"] == ["stereo", "medium"]
    # Every second pair of each kind is corrupted.
    assert [item["corruption"] != "clean" for item in items] == [False, True, False, False, True, True]
    for item in items:
        size = (48, 64) if item["kind"] == "scenes" else (64, 64)
        assert item["source"].shape == item["target"].shape == (3, *size)
        assert item["flow"].shape == (2, *size) and item["mask"].shape == size and item["mask"].any()
        assert torch.isfinite(item["flow"][:, item["mask"].bool()]).all()
    plain = calibration_pairs(PHOTOS, 3, 64, corrupted=0.0, seed=1)
    assert [item["kind"] for item in plain] == ["synthetic"] * 3


def test_calibration_pairs_corrupt_both_kinds_at_every_level_when_the_shares_line_up():
    # A quarter scenes and a quarter corrupted: once, the corruptions fell on the scene pairs alone.
    items = calibration_pairs(PHOTOS, 24, 32, corrupted=0.25, seed=1, scenes=0.25, scene_size=(32, 48))
    corrupted = [(item["kind"], item["name"].split("/")[0]) for item in items if item["corruption"] != "clean"]
    assert len(corrupted) == 5  # pairs 3, 7, 11 and 15 of the 18 warps, pair 3 of the 6 scenes
    assert {level for kind, level in corrupted if kind == "synthetic"} == {"easy", "medium", "hard"}
    assert sum(kind == "scenes" for kind, _ in corrupted) == 1
    assert any(item["kind"] == "scenes" and item["corruption"] == "clean" for item in items)
    assert len({item["corruption"] for item in items if item["corruption"] != "clean"}) == 5  # corruptions in turn


def test_calibration_pairs_refuse_a_share_outside_zero_one():
    with pytest.raises(InputError, match="--scenes is a share"):
        calibration_pairs(PHOTOS, 4, 64, scenes=1.5)


def test_collect_cues_gathers_the_pixels_the_layer_search_takes_with_their_new_error(monkeypatch):
    import diffmatch.confidence.fitting as fitting

    items = calibration_pairs(PHOTOS, 2, 64, corrupted=0.0, seed=1)
    torch.manual_seed(0)
    model = DiffMatch(tiny_config()).eval()
    seen = {}

    def search(result, source, target, raw_flow, refine, config):
        # Take the top half from a flow 0.5 px off the truth, with made-up costs.
        truth = next(item["flow"][None] for item in items if torch.equal(item["target"][None], target))
        taken = torch.zeros_like(result.flow[:, :1], dtype=torch.bool)
        taken[..., :32, :] = True
        shift = torch.where(taken, truth + 0.5 - result.flow, torch.zeros_like(result.flow))
        searched = MatchResult.from_samples(result.samples + shift[:, None], init_flow=result.init_flow)
        costs = {name: torch.rand_like(result.flow[:, :1]) for name in SEARCH_CUES}
        seen[len(seen)] = search_cues(searched, costs)
        return searched, taken, costs

    monkeypatch.setattr(fitting, "search_layers", search)
    matched, taken = collect_cues(model, items, 2, 1, pixels=100, layer_search=LayerSearchConfig())
    assert matched.names == CUES and matched.cues.shape == (200, len(CUES))
    assert taken.names == SEARCH_FIT_CUES == ("variance", "init_distance", *SEARCH_CUES)
    assert taken.cues.shape == (200, 5) and sorted(set(taken.pair.tolist())) == [0, 1]
    assert np.allclose(taken.errors, np.sqrt(0.5), atol=1e-4)  # the searched flow's error, not the match's
    for i in (0, 1):  # the rows are the search cues at taken pixels
        maps = torch.cat([seen[i][name][0] for name in SEARCH_FIT_CUES]).flatten(1).T.numpy()
        top = maps[: 32 * 64]
        rows = taken.cues[taken.pair == i]
        assert all(np.isclose(top, row).all(1).any() for row in rows[:10])
    assert collect_cues(model, items, 2, 1, pixels=100)[1] is None  # no search asked for


def test_cue_selection_reports_how_each_cue_set_ranks_errors_within_a_pair():
    rng = np.random.default_rng(0)
    pairs, per = 8, 300
    errors = 10 ** rng.uniform(-2, 1.3, pairs * per)  # 0.01–20 px
    ranking = errors * rng.uniform(0.8, 1.25, errors.size)  # follows the error closely
    noise = 10 ** rng.uniform(-2, 1.3, errors.size)  # says nothing about it
    samples = CueSamples(("variance", "fb_error"), np.stack([ranking, noise], 1), errors, np.repeat(np.arange(pairs), per))
    chosen, table = select_cues(samples)
    rows = {tuple(row["cues"]): row for row in table}
    assert chosen == ("variance",)
    assert rows[("variance",)]["ause"] < 0.05 < 0.3 < rows[("fb_error",)]["ause"]
    assert pair_ause(samples, ranking) < 0.05 and pair_ause(samples, errors) == pytest.approx(0.0, abs=1e-9)
