"""Fitting a confidence calibration for a checkpoint (behind ``python -m diffmatch.calibrate`` / ``diffmatch calibrate``).

Flow convention: flow on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels, channel
0 = x; tensors ``(B, 2, H, W)``.

The validation pairs are of both benchmarks' kinds, built from photos *other than* the benchmarks'
held-out ones (by default the fetched photos, :func:`diffmatch.assets.fetched_photos`, ``diffmatch
fetch-photos``): the synthetic benchmark's (:class:`~diffmatch.data.SyntheticBenchmark`: homographies
of the easy, medium and hard ranges, 240², mild colour changes) and, for a share of the pairs (the
command's ``--scenes``), the scenes benchmark's (:class:`~diffmatch.data.SceneBenchmark`: rendered
3D scenes with parallax and occlusion at the stereo, medium and wide levels, 384x512), so the
confidence holds where the flow is not one homography. A share of all pairs (``--corrupted``, a
quarter by default) get an ImageNet-C corruption (the 15 types in turn, severity 5 or 3), so it
holds on degraded images too; with half of them, clean held-out pairs came out under-confident
(ECE 0.064 against 0.026 at 3 px). Each pair is matched once with all cues
(:func:`diffmatch.confidence.cues.match_with_cues`), its hypotheses refined at full resolution as
:class:`~diffmatch.matcher.DiffMatcher` does by default; a few thousand valid pixels per pair are kept
with their true error.

The cues are chosen by measurement (:func:`select_cues`): every subset of
:data:`~diffmatch.confidence.CUES` is fitted on half of the pairs and scored (log loss, summed over
the τ) on the other half, and back (the table also has each subset's AUSE, how well its confidence
ranks the errors within a pair); the best subset wins, where a smaller one within 0.002 nats (and
one without the reverse pass) is preferred. The chosen calibration is refitted on all pairs
(:func:`~diffmatch.confidence.fit_calibrator`) and written into a copy of the checkpoint
(:func:`write_calibrated`, atomically).

Each pair's result is also run through the layer search
(:func:`~diffmatch.refinement.layer_search.search_layers`, unless ``--no-layer-search``), and the
pixels it takes, with their new error, get a calibration of their own (its cues chosen the same way
from :data:`SEARCH_FIT_CUES`): :attr:`Calibrator.layer_search
<diffmatch.confidence.Calibrator.layer_search>`. The cues of the main calibration describe the match a
taken pixel no longer has.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmatch.assets import fetched_photos, fetched_photos_hint
from diffmatch.confidence import CUES, DEFAULT_TAUS, REVERSE_CUES, SEARCH_CUES, fit_calibrator, logistic_loss
from diffmatch.confidence.cues import match_with_cues, search_cues
from diffmatch.confidence.metrics import expected_calibration_error
from diffmatch.errors import InputError
from diffmatch.metrics import ause, end_point_error
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import rewrite_weights_file
from diffmatch.refinement import LayerSearchConfig, VariationalRefiner, search_layers

__all__ = [
    "SEARCH_FIT_CUES",
    "CueSamples",
    "calibration_pairs",
    "check_error_spread",
    "collect_cues",
    "pair_ause",
    "select_cues",
    "write_calibrated",
]



_TOLERANCE = 0.002  # nats: a smaller cue set this close to the best is preferred
# The cues a calibration's part for layer-search takes may read (Calibrator.layer_search).
SEARCH_FIT_CUES: tuple[str, ...] = ("variance", "init_distance", *SEARCH_CUES)


_SEVERITIES = (5, 3)


def calibration_pairs(
    photos: str | Path,
    num_pairs: int,
    size: int = 240,
    corrupted: float = 0.25,
    seed: int = 1,
    scenes: float = 0.0,
    scene_size: tuple[int, int] = (384, 512),
) -> list[dict[str, Any]]:
    """Benchmark-like pairs from ``photos``, some corrupted.

    A share ``scenes`` of the pairs, spread evenly, are rendered scenes (levels stereo/medium/wide
    in turn, ``scene_size``); the others are synthetic homographies (levels easy/medium/hard in turn,
    ``size`` square).

    Returns:
        Items with ``source``/``target`` ``(3, H, W)``, ``flow`` ``(2, H, W)`` px on the target grid,
        ``mask``, ``name``, ``kind`` (``"synthetic"`` or ``"scenes"``) and ``corruption``
        (``"clean"`` or an ImageNet-C name).

    Raises:
        InputError: the folder is the benchmark's held-out photos, or has no photos, or ``scenes``
            is not a share.
    """
    from diffmatch.data import BENCHMARK_LEVELS, CORRUPTIONS, SCENE_LEVELS, bundled_photos
    from diffmatch.data.corruptions import corrupt

    photos = Path(photos)
    if not photos.is_dir():
        hint = f"; {fetched_photos_hint()}" if photos.resolve() == fetched_photos().resolve() else ""
        raise InputError(f"--photos {photos}: no such folder{hint}")
    if photos.resolve() == bundled_photos("val").resolve():
        raise InputError(f"--photos {photos}: these are the benchmark's held-out photos; calibrate on other photos")
    if not 0.0 <= scenes <= 1.0:
        raise InputError(f"--scenes is a share of the pairs, in [0, 1], got {scenes:g}")
    # Pair i is a scene when the running count of scenes, i * scenes, passes a whole number there.
    is_scene = [int((i + 1) * scenes + 1e-9) > int(i * scenes + 1e-9) for i in range(num_pairs)]
    counts = {"synthetic": num_pairs - sum(is_scene), "scenes": sum(is_scene)}
    draw = {
        "synthetic": _level_sets(photos, "synthetic", BENCHMARK_LEVELS, counts["synthetic"], (size, size), seed),
        "scenes": _level_sets(photos, "scenes", SCENE_LEVELS, counts["scenes"], scene_size, seed),
    }
    seen = {"synthetic": 0, "scenes": 0}
    items = []
    every = 0 if corrupted <= 0 else max(1, round(1 / corrupted))
    k = 0  # corrupted pairs so far: the corruptions and severities in turn
    for i in range(num_pairs):
        kind = "scenes" if is_scene[i] else "synthetic"
        j = seen[kind]
        item = draw[kind](j)
        seen[kind] += 1
        item["kind"] = kind
        item["corruption"] = "clean"
        # Every `every`-th pair *of its kind*: both kinds get their share, at every level in turn (a
        # count over all pairs fell on the scene pairs alone whenever the two shares lined up).
        if every and j % every == every - 1:
            name, severity = CORRUPTIONS[k % len(CORRUPTIONS)], _SEVERITIES[k % len(_SEVERITIES)]
            for side, key in enumerate(("source", "target")):
                image = (item[key].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                image = corrupt(image, name, severity, seed * 1000 + 2 * i + side)
                item[key] = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
            item["corruption"] = f"{name}-{severity}"
            k += 1
        items.append(item)
    return items


def _level_sets(
    photos: Path, kind: str, levels: Sequence[str], count: int, size: tuple[int, int], seed: int
) -> Any:
    """``draw(j)``: the ``j``-th pair of ``kind``, its levels in turn, spread over the photos."""
    from diffmatch.data import SceneBenchmark, SyntheticBenchmark, list_images

    per_level = max(1, -(-count // len(levels)))
    # Pair j of level l uses photo j * stride + l (mod the count): spread over the folder.
    stride = max(1, len(list_images(photos)) // per_level)
    length = per_level * stride + len(levels)
    if kind == "scenes":
        sets = [SceneBenchmark(photos, level, size, length, seed) for level in levels]
    else:
        sets = [SyntheticBenchmark(photos, level, size, length, seed) for level in levels]

    def draw(j: int) -> dict[str, Any]:
        level = j % len(levels)
        return dict(sets[level][(j // len(levels)) * stride + level])

    return draw


@dataclass
class CueSamples:
    """Pixels with their cues and true error, as :func:`collect_cues` gathers them.

    Attributes:
        names: the cue of each column.
        cues: ``(P, len(names))`` raw cues.
        errors: ``(P,)`` EPE in px.
        pair: ``(P,)`` the index of each pixel's pair (the folds of :func:`select_cues`).
    """

    names: tuple[str, ...]
    cues: np.ndarray
    errors: np.ndarray
    pair: np.ndarray

    @classmethod
    def gather(cls, names: Sequence[str], rows: list[np.ndarray], errors: list[np.ndarray], pair: list[np.ndarray]) -> CueSamples:
        """One sample from per-pair pieces (an empty one when there are none)."""
        if not rows:
            return cls(tuple(names), np.zeros((0, len(names))), np.zeros(0), np.zeros(0, dtype=np.int64))
        return cls(tuple(names), np.concatenate(rows), np.concatenate(errors), np.concatenate(pair))


def collect_cues(
    model: DiffMatch,
    items: Sequence[dict[str, Any]],
    num_samples: int = 3,
    num_steps: int | None = None,
    pixels: int = 3000,
    seed: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
    refiner: VariationalRefiner | None = None,
    reverse_samples: int | None = None,
    layer_search: LayerSearchConfig | None = None,
) -> tuple[CueSamples, CueSamples | None]:
    """All cues and the true EPE of up to ``pixels`` random valid pixels of each pair.

    ``refiner``: refine the flows first, as :class:`~diffmatch.matcher.DiffMatcher` does by default.
    ``reverse_samples``: the reverse pass's hypotheses (``None``: ``num_samples``).
    ``layer_search``: also run the layer search on each pair's result
    (:func:`~diffmatch.refinement.layer_search.search_layers`, ``refiner`` refining what it takes), and
    gather the pixels it takes, with their :data:`SEARCH_FIT_CUES` and their new error.

    Returns:
        ``(matched, taken)``: the pixels of the matches, with :data:`~diffmatch.confidence.CUES`; and,
        with ``layer_search``, up to ``pixels`` of the pixels taken per pair (else ``None``).
    """
    rows, errs, ids = [], [], []
    taken_rows, taken_errs, taken_ids = [], [], []
    rng = np.random.default_rng(seed)
    for i, item in enumerate(items):
        start = time.perf_counter()
        gen = torch.Generator(device=device).manual_seed(seed * 100003 + i)
        src, tgt = item["source"][None].to(device), item["target"][None].to(device)
        truth = item["flow"][None].to(device)
        result, cues = match_with_cues(
            model, src, tgt, num_samples, num_steps, generator=gen, reverse=True, refiner=refiner,
            reverse_samples=reverse_samples,
        )
        valid = item["mask"].bool()
        epe = end_point_error(result.flow, truth)[0].cpu()
        where = _draw(valid & torch.isfinite(epe), pixels, rng)
        rows.append(_rows(cues, CUES, where))
        errs.append(epe.numpy().ravel()[where])
        ids.append(np.full(where.size, i))
        note = ""
        if layer_search is not None:
            searched, taken, costs = search_layers(result, src, tgt, model.global_flows, refiner, layer_search)
            epe = end_point_error(searched.flow, truth)[0].cpu()
            where = _draw(valid & taken[0, 0].cpu() & torch.isfinite(epe), pixels, rng)
            if where.size:
                taken_rows.append(_rows(search_cues(searched, costs), SEARCH_FIT_CUES, where))
                taken_errs.append(epe.numpy().ravel()[where])
                taken_ids.append(np.full(where.size, i))
            note = f", {float(taken.float().mean()):.1%} taken by the layer search"
        if progress:
            print(f"  pair {i + 1}/{len(items)} {item.get('kind', 'synthetic')} {item['name']} {item['corruption']}: "
                  f"{time.perf_counter() - start:.1f} s{note}", file=sys.stderr)
    matched = CueSamples.gather(CUES, rows, errs, ids)
    searched_pixels = None if layer_search is None else CueSamples.gather(SEARCH_FIT_CUES, taken_rows, taken_errs, taken_ids)
    return matched, searched_pixels


def _draw(valid: torch.Tensor, pixels: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat indices of up to ``pixels`` random pixels of the ``(H, W)`` mask ``valid``."""
    where = np.flatnonzero(valid.numpy().ravel())
    return np.sort(rng.choice(where, pixels, replace=False)) if where.size > pixels else where


def _rows(cues: dict[str, torch.Tensor], names: Sequence[str], where: np.ndarray) -> np.ndarray:
    """``(len(where), len(names))``: the named ``(1, 1, H, W)`` cue maps at flat pixel indices ``where``."""
    return torch.cat([cues[name][0] for name in names]).flatten(1).cpu().numpy().T[where]


def pair_ause(samples: CueSamples, uncertainty: np.ndarray) -> float:
    """AUSE-EPE of ``uncertainty`` ``(P,)`` (larger: less certain) within each pair of ``samples``,
    averaged over the pairs: how well it ranks the errors of one image (:func:`diffmatch.metrics.ause`)."""
    return float(np.mean([ause(samples.errors[samples.pair == p], uncertainty[samples.pair == p]) for p in np.unique(samples.pair)]))


def select_cues(
    samples: CueSamples, taus: Sequence[float] = DEFAULT_TAUS, default_tau: float | None = None, transform: str = "log"
) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Pick the cue subset with the lowest held-out log loss (2 folds of pairs), preferring small ones.

    Every subset of ``samples.names`` is tried.

    Args:
        samples: the pixels, their cues and errors.
        taus: thresholds in px.
        default_tau: the ``τ`` whose confidence's ranking is reported (``None``: the middle one).
        transform: how the cues in pixels are compressed (:attr:`Calibrator.transform
            <diffmatch.confidence.Calibrator.transform>`).

    Returns:
        ``(chosen, table)``: the chosen cue names, and one row per subset with ``cues``, ``nll``
        (held-out log loss summed over ``taus``), ``ece`` (held-out ECE per τ) and ``ause`` (held-out
        AUSE-EPE of ``1 - P(EPE < default_tau)`` within each pair, :func:`pair_ause`).
    """
    cues, errors, names = samples.cues, samples.errors, samples.names
    default_tau = taus[len(taus) // 2] if default_tau is None else default_tau
    fold = (np.unique(samples.pair, return_inverse=True)[1] // 2) % 2
    table = []
    for r in range(1, len(names) + 1):
        for subset in itertools.combinations(range(len(names)), r):
            chosen = tuple(names[k] for k in subset)
            nll, probs = 0.0, {tau: np.zeros(errors.size) for tau in taus}
            for f in (0, 1):
                train, test = fold != f, fold == f
                cal = fit_calibrator(cues[train][:, subset], errors[train], chosen, taus, default_tau, transform=transform)
                for tau in taus:
                    probs[tau][test] = cal.predict_numpy(cues[test][:, subset], tau)
            for tau in taus:
                nll += logistic_loss(probs[tau], errors < tau)
            ece = {f"{tau:g}": expected_calibration_error(probs[tau], errors < tau) for tau in taus}
            table.append({"cues": list(chosen), "nll": nll, "ece": ece, "ause": pair_ause(samples, 1.0 - probs[default_tau])})
    best = min(row["nll"] for row in table)
    close = [row for row in table if row["nll"] <= best + _TOLERANCE]
    pick = min(close, key=lambda row: (bool(REVERSE_CUES & set(row["cues"])), len(row["cues"]), row["nll"]))
    return tuple(pick["cues"]), sorted(table, key=lambda row: row["nll"])


def write_calibrated(checkpoint: str | Path, out: str | Path, calibration: dict[str, Any]) -> Path:
    """Copy ``checkpoint`` to ``out`` with ``calibration`` under its top-level ``"calibration"`` key, atomically.

    A stage-2 file keeps finding its stage-1 file (:func:`diffmatch.models.weights.rewrite_weights_file`).
    """
    return rewrite_weights_file(checkpoint, out, calibration=calibration)


def check_error_spread(errors: np.ndarray, taus: Sequence[float]) -> None:
    """A calibration needs pixels on both sides of every τ; say so in one line when a model has none.

    Raises:
        ValueError: every pixel is within ``τ``, or none is (a briefly trained model).
    """
    for tau in taus:
        share = float((errors < tau).mean())
        if share in (0.0, 1.0):
            which = "none" if share == 0.0 else "every one"
            raise ValueError(
                f"cannot calibrate at τ = {tau:g} px: {which} of the {errors.size} pixels is within it "
                f"(median error {np.median(errors):.1f} px); a confidence needs both kinds: train the model "
                "further, or choose --taus (and --default-tau) around its errors"
            )
