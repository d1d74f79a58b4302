"""Fit a confidence calibration for a checkpoint: ``python -m diffmatch.calibrate CKPT --out CKPT_CAL``.

Flow convention: flow on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels, channel
0 = x; tensors ``(B, 2, H, W)``.

The validation pairs are the synthetic benchmark's kind (:class:`~diffmatch.data.SyntheticBenchmark`:
homographies of the easy, medium and hard ranges, 240², mild colour changes), built from photos
*other than* the benchmark's held-out ones: by default the fetched photos in ``data/photos/extra``
(``python scripts/fetch_photos.py``). A quarter of the pairs (``--corrupted``) get an ImageNet-C
corruption (the 15 types in turn, severity 5 or 3), so the confidence holds on degraded images too;
with half of them, clean held-out pairs came out under-confident (ECE 0.064 against 0.026 at 3 px). Each pair is matched once
with all cues (:func:`diffmatch.cues.match_with_cues`), its hypotheses refined at full resolution as
:class:`~diffmatch.matcher.DiffMatcher` does by default (``--no-refine``: not); a few thousand valid
pixels per pair are kept with their true error.

The cues are chosen by measurement: every subset of :data:`~diffmatch.confidence.CUES` is fitted on
half of the pairs and scored (log loss, summed over the τ) on the other half, and back; the best
subset wins, where a smaller one within 0.002 nats (and one without the reverse pass) is preferred.
The chosen calibration is refitted on all pairs and written, with the rest of the checkpoint
unchanged, to ``--out`` (atomically; ``--out`` may be ``CKPT`` itself). The selection table and the
held-out ECE are printed and stored in the calibration's ``info``.

Example:
    python scripts/fetch_photos.py          # once: data/photos/extra
    python -m diffmatch.calibrate checkpoints/diffmatch_xfeat.pt --out checkpoints/diffmatch_xfeat.pt
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmatch.cli.common import (
    EXIT_FAILED,
    OneLineArgumentParser,
    check_out_file,
    one_line_errors,
    print_error,
    remove_empty_folders,
)
from diffmatch.confidence import CUES, DEFAULT_TAUS, fit_calibrator, logistic_loss
from diffmatch.cues import match_with_cues
from diffmatch.evaluation.calibration import expected_calibration_error
from diffmatch.inputs import resolve_device
from diffmatch.io import InputError, atomic_open
from diffmatch.metrics import end_point_error
from diffmatch.refinement import VariationalRefiner
from diffmatch.threads import configure_threads

__all__ = ["build_parser", "calibration_pairs", "collect_cues", "main", "select_cues", "write_calibrated"]

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos" / "extra"
_TOLERANCE = 0.002  # nats: a smaller cue set this close to the best is preferred
_SEVERITIES = (5, 3)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m diffmatch.calibrate``."""
    parser = OneLineArgumentParser(prog="python -m diffmatch.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="exported weights (.pt) or Lightning .ckpt")
    parser.add_argument("--out", required=True, help="the checkpoint file to write, with its calibration (may be CHECKPOINT itself)")
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="photo folder, not the benchmark's (default data/photos/extra)")
    parser.add_argument("--pairs", type=int, default=48, help="validation pairs (default 48, a third per level)")
    parser.add_argument("--size", type=int, default=240, help="square image side in px (default 240, as the benchmark)")
    parser.add_argument("--corrupted", type=float, default=0.25, help="share of pairs with an ImageNet-C corruption, 0..1 (default 0.25; 0.5 left clean pairs under-confident, README)")
    parser.add_argument("--samples", type=int, default=3, help="hypotheses N (default 3)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's own, its sampling_steps or else T)")
    parser.add_argument("--pixels", type=int, default=3000, help="valid pixels kept per pair (default 3000)")
    parser.add_argument("--taus", default="1,3,5", help="thresholds τ in px (default 1,3,5)")
    parser.add_argument("--default-tau", type=float, default=3.0, help="τ of MatchResult.confidence (default 3)")
    parser.add_argument("--cues", default="auto", help=f"'auto' (chosen by measurement) or a comma list of {','.join(CUES)}")
    parser.add_argument("--seed", type=int, default=1, help="seed of the pairs, sampling and pixel draws (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--no-refine", action="store_true",
        help="calibrate the model's flow without the sub-pixel refinement (default: refined, as DiffMatcher matches)",
    )
    return parser


def calibration_pairs(
    photos: str | Path, num_pairs: int, size: int = 240, corrupted: float = 0.25, seed: int = 1
) -> list[dict[str, Any]]:
    """Benchmark-like pairs from ``photos``: levels easy/medium/hard in turn, some corrupted.

    Returns:
        Items with ``source``/``target`` ``(3, size, size)``, ``flow`` ``(2, size, size)`` px on the
        target grid, ``mask``, ``name`` and ``corruption`` (``"clean"`` or an ImageNet-C name).

    Raises:
        InputError: the folder is the benchmark's held-out photos, or has no photos.
    """
    from diffmatch.data import BENCHMARK_LEVELS, CORRUPTIONS, SyntheticBenchmark, bundled_photos, list_images
    from diffmatch.data.corruptions import corrupt

    photos = Path(photos)
    if not photos.is_dir():
        raise InputError(f"--photos {photos}: no such folder (python scripts/fetch_photos.py fills data/photos/extra)")
    if photos.resolve() == bundled_photos("val").resolve():
        raise InputError(f"--photos {photos}: these are the benchmark's held-out photos; calibrate on other photos")
    levels = list(BENCHMARK_LEVELS)
    per_level = -(-num_pairs // len(levels))
    # Spread the pairs over the photos: pair j of level l uses photo j * stride + l (mod the count).
    stride = max(1, len(list_images(photos)) // per_level)
    length = per_level * stride + len(levels)
    sets = [SyntheticBenchmark(photos, level, (size, size), length, seed) for level in levels]
    items = []
    every = 0 if corrupted <= 0 else max(1, round(1 / corrupted))
    for i in range(num_pairs):
        level = i % len(levels)
        item = dict(sets[level][(i // len(levels)) * stride + level])
        item["corruption"] = "clean"
        if every and i % every == every - 1:
            k = i // every
            name, severity = CORRUPTIONS[k % len(CORRUPTIONS)], _SEVERITIES[k % len(_SEVERITIES)]
            for j, key in enumerate(("source", "target")):
                image = (item[key].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                image = corrupt(image, name, severity, seed * 1000 + 2 * i + j)
                item[key] = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
            item["corruption"] = f"{name}-{severity}"
        items.append(item)
    return items


def collect_cues(
    model: torch.nn.Module,
    items: Sequence[dict[str, Any]],
    num_samples: int = 3,
    num_steps: int | None = None,
    pixels: int = 3000,
    seed: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
    refiner: VariationalRefiner | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All cues and the true EPE of up to ``pixels`` random valid pixels of each pair.

    ``refiner``: refine the flows first, as :class:`~diffmatch.matcher.DiffMatcher` does by default.

    Returns:
        ``(cues, errors, pair)``: ``(P, len(CUES))`` in the order of :data:`CUES`, ``(P,)`` EPE in
        px, ``(P,)`` the index of each pixel's pair.
    """
    rows, errs, ids = [], [], []
    rng = np.random.default_rng(seed)
    for i, item in enumerate(items):
        start = time.perf_counter()
        gen = torch.Generator(device=device).manual_seed(seed * 100003 + i)
        src, tgt = item["source"][None].to(device), item["target"][None].to(device)
        result, cues = match_with_cues(
            model, src, tgt, num_samples, num_steps, generator=gen, reverse=True, refiner=refiner
        )
        epe = end_point_error(result.flow, item["flow"][None].to(device))[0].cpu()
        valid = item["mask"].bool() & torch.isfinite(epe)
        where = np.flatnonzero(valid.numpy().ravel())
        if where.size > pixels:
            where = np.sort(rng.choice(where, pixels, replace=False))
        stack = torch.cat([cues[name][0] for name in CUES]).flatten(1).cpu().numpy().T
        rows.append(stack[where])
        errs.append(epe.numpy().ravel()[where])
        ids.append(np.full(where.size, i))
        if progress:
            print(f"  pair {i + 1}/{len(items)} {item['name']} {item['corruption']}: "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return np.concatenate(rows), np.concatenate(errs), np.concatenate(ids)


def select_cues(
    cues: np.ndarray, errors: np.ndarray, pair: np.ndarray, taus: Sequence[float] = DEFAULT_TAUS
) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Pick the cue subset with the lowest held-out log loss (2 folds of pairs), preferring small ones.

    Returns:
        ``(chosen, table)``: the chosen cue names, and one row per subset with ``cues``, ``nll``
        (held-out log loss summed over ``taus``) and ``ece`` (held-out ECE per τ).
    """
    fold = (np.unique(pair, return_inverse=True)[1] // 2) % 2
    table = []
    for r in range(1, len(CUES) + 1):
        for subset in itertools.combinations(range(len(CUES)), r):
            names = tuple(CUES[k] for k in subset)
            nll, probs = 0.0, {tau: np.zeros(errors.size) for tau in taus}
            for f in (0, 1):
                train, test = fold != f, fold == f
                cal = fit_calibrator(cues[train][:, subset], errors[train], names, taus, taus[len(taus) // 2])
                for tau in taus:
                    probs[tau][test] = cal.predict_numpy(cues[test][:, subset], tau)
            for tau in taus:
                nll += logistic_loss(probs[tau], errors < tau)
            ece = {f"{tau:g}": expected_calibration_error(probs[tau], errors < tau) for tau in taus}
            table.append({"cues": list(names), "nll": nll, "ece": ece})
    best = min(row["nll"] for row in table)
    close = [row for row in table if row["nll"] <= best + _TOLERANCE]
    chosen = min(close, key=lambda row: ("fb_error" in row["cues"], len(row["cues"]), row["nll"]))
    return tuple(chosen["cues"]), sorted(table, key=lambda row: row["nll"])


def write_calibrated(checkpoint: str | Path, out: str | Path, calibration: dict[str, Any]) -> Path:
    """Copy ``checkpoint`` to ``out`` with ``calibration`` under its top-level ``"calibration"`` key, atomically."""
    data = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    data["calibration"] = calibration
    out = Path(out)
    with atomic_open(out, "wb") as handle:
        torch.save(data, handle)
    return out


def _floats(spec: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{what} must be a comma list of numbers, got {spec!r}") from None
    if not values or any(v <= 0 for v in values):
        raise InputError(f"{what} must list positive numbers, got {spec!r}")
    return values


def _check_arguments(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[str, ...] | None]:
    """Every check that needs neither the model nor the photos; returns ``(taus, fixed cues or None)``.

    Raises:
        InputError: the first bad argument.
    """
    taus = _floats(args.taus, "--taus")
    if args.default_tau not in taus:
        raise InputError(f"--default-tau {args.default_tau} must be one of --taus {taus}")
    fixed = None
    if args.cues != "auto":
        fixed = tuple(c.strip() for c in args.cues.split(",") if c.strip())
        if not fixed or any(c not in CUES for c in fixed):
            raise InputError(f"--cues must be 'auto' or a comma list of {', '.join(CUES)}, got {args.cues!r}")
    if args.pairs < 4 or args.pixels < 10:
        raise InputError("need --pairs >= 4 and --pixels >= 10")
    if not 0.0 <= args.corrupted <= 1.0:
        raise InputError(f"--corrupted is a share of the pairs, in [0, 1], got {args.corrupted:g}")
    if args.samples < 1:
        raise InputError(f"--samples must be >= 1, got {args.samples}")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.size < 32:
        raise InputError(f"--size must be >= 32 px, got {args.size}")
    return taus, fixed


def _check_errors(errors: np.ndarray, taus: Sequence[float]) -> None:
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


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Fit and write; returns the exit status (0 ok, 1 the fit failed, 2 bad input, 130 interrupted).

    Arguments and ``--out`` are checked before the model and photos are loaded.
    """
    args = build_parser().parse_args(argv)
    taus, fixed = _check_arguments(args)
    created = check_out_file(args.out)
    configure_threads()  # torch, OpenCV and the refinement within one budget (diffmatch.threads)
    try:
        from diffmatch.weights import load_checkpoint

        device = resolve_device(args.device)
        model = load_checkpoint(args.checkpoint, device=device)
        limit = model.config.num_train_timesteps
        if args.steps is not None and args.steps > limit:
            raise InputError(f"--steps must be in [1, {limit}] for this model, got {args.steps}")
        items = calibration_pairs(args.photos, args.pairs, args.size, args.corrupted, args.seed)
    except BaseException:
        remove_empty_folders(created)
        raise
    start = time.perf_counter()
    print(f"matching {len(items)} pairs from {args.photos} ...", file=sys.stderr)
    refiner = None if args.no_refine else VariationalRefiner()
    cues, errors, pair = collect_cues(
        model, items, args.samples, args.steps, args.pixels, args.seed, device, True, refiner
    )
    match_seconds = time.perf_counter() - start
    try:
        _check_errors(errors, taus)
        chosen, table = select_cues(cues, errors, pair, taus)
    except ValueError as err:
        print_error(err)
        return EXIT_FAILED
    if fixed is not None:
        chosen = fixed
    print(f"{'cues':<45} {'held-out NLL':>12}  " + "  ".join(f"ECE@{t:g}" for t in taus))
    for row in table:
        mark = " *" if tuple(row["cues"]) == chosen else ""
        ece = "  ".join(f"{row['ece'][f'{t:g}']:.4f}" for t in taus)
        print(f"{'+'.join(row['cues']):<45} {row['nll']:>12.4f}  {ece}{mark}")
    columns = [CUES.index(c) for c in chosen]
    photos = Path(args.photos)
    info = {
        "photos": photos.name if photos.resolve() == DEFAULT_PHOTOS.resolve() else str(photos),
        "pairs": len(items),
        "corrupted": sum(item["corruption"] != "clean" for item in items),
        "size": args.size,
        "samples": args.samples,
        "steps": args.steps,
        "pixels": int(errors.size),
        "seed": args.seed,
        "refinement": None if refiner is None else asdict(refiner),
        "selection": table,
        "match_seconds": match_seconds,
        "command": ["python", "-m", "diffmatch.calibrate", *(sys.argv[1:] if argv is None else argv)],
    }
    calibrator = fit_calibrator(cues[:, columns], errors, chosen, taus, args.default_tau, info, refiner is not None)
    out = write_calibrated(args.checkpoint, args.out, calibrator.to_dict())
    print(f"cues: {', '.join(chosen)}; {errors.size} pixels of {len(items)} pairs; matching took {match_seconds:.0f} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
