"""``python -m diffmatch.calibrate CKPT --out CKPT_CAL`` (``diffmatch calibrate``): fit and write a
confidence calibration for a checkpoint (:mod:`diffmatch.confidence.fitting` says how).

The selection table (held-out log loss, ECE and AUSE of every cue set, and the AUSE of the variance
alone) is printed and stored in the calibration's ``info``;
``--out`` may be ``CKPT`` itself.

Example:
    diffmatch fetch-photos                  # once: the default --photos (diffmatch.assets.fetched_photos)
    python -m diffmatch.calibrate diffmatch/assets/diffmatch_xfeat_stage2.pt --out outputs/default_cal.pt

A stage-2 file (the bundled default) is calibrated as the whole cascade; the copy written to
``--out`` keeps finding its stage-1 file wherever it is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from diffmatch.assets import fetched_photos
from diffmatch.cli.common import (
    EXIT_FAILED,
    OneLineArgumentParser,
    check_out_file,
    one_line_errors,
    print_error,
    program,
    remove_empty_folders,
)
from diffmatch.confidence import CUES, TRANSFORMS, Calibrator, fit_calibrator
from diffmatch.confidence.fitting import (
    CueSamples,
    calibration_pairs,
    check_error_spread,
    collect_cues,
    pair_ause,
    select_cues,
    write_calibrated,
)
from diffmatch.errors import InputError
from diffmatch.inputs import resolve_device
from diffmatch.refinement import LayerSearchConfig, VariationalRefiner
from diffmatch.threads import configure_threads

__all__ = ["build_parser", "main"]

_MIN_SEARCH_PAIRS = 4  # pairs with taken pixels a layer-search part is fitted from, at least



def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m diffmatch.calibrate``."""
    parser = OneLineArgumentParser(prog=program("python -m diffmatch.calibrate"), description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="exported weights (.pt) or Lightning .ckpt")
    parser.add_argument("--out", required=True, help="the checkpoint file to write, with its calibration (may be CHECKPOINT itself)")
    parser.add_argument(
        "--photos", help="photo folder, not the benchmark's (default: the fetched photos, data/photos/extra in a checkout)"
    )
    parser.add_argument("--pairs", type=int, default=64, help="validation pairs (default 64; each kind's levels in turn)")
    parser.add_argument("--size", type=int, default=240, help="square side in px of the synthetic pairs (default 240, as the benchmark)")
    parser.add_argument("--scenes", type=float, default=0.25, help="share of pairs that are rendered 3D scenes at 384x512, as the scenes benchmark, 0..1 (default 0.25)")
    parser.add_argument("--corrupted", type=float, default=0.25, help="share of pairs with an ImageNet-C corruption, 0..1 (default 0.25; 0.5 left clean pairs under-confident, docs/confidence.md)")
    parser.add_argument("--samples", type=int, default=3, help="hypotheses N, 2 or more (default 3)")
    parser.add_argument("--reverse-samples", type=int, default=1, help="hypotheses of the reverse pass behind the fb_error cue (default 1: only its mean flow is read)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's own, its sampling_steps or else T)")
    parser.add_argument("--pixels", type=int, default=3000, help="valid pixels kept per pair (default 3000)")
    parser.add_argument("--taus", default="1,3,5", help="thresholds τ in px (default 1,3,5)")
    parser.add_argument("--default-tau", type=float, default=3.0, help="τ of MatchResult.confidence (default 3)")
    parser.add_argument(
        "--transform", choices=TRANSFORMS, default="log",
        help="how cues in pixels are compressed: log, log(x + 0.01 px) (the default), or log1p, log(1 + x), as calibrations before 2026-12-05",
    )
    parser.add_argument("--cues", default="auto", help=f"'auto' (chosen by measurement) or a comma list of {','.join(CUES)}")
    parser.add_argument("--seed", type=int, default=1, help="seed of the pairs, sampling and pixel draws (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--no-layer-search", action="store_true",
        help="fit no part for the pixels the layer search takes (default: run the search on every pair and fit one, "
        "so that DiffMatcher(layer_search=True) gives them their own confidence)",
    )
    parser.add_argument(
        "--no-refine", action="store_true",
        help="calibrate the model's flow without the sub-pixel refinement (default: refined, as DiffMatcher matches)",
    )
    return parser


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
    if not 0.0 <= args.scenes <= 1.0:
        raise InputError(f"--scenes is a share of the pairs, in [0, 1], got {args.scenes:g}")
    if args.samples < 1:
        raise InputError(f"--samples must be >= 1, got {args.samples}")
    if args.samples == 1:
        raise InputError("--samples 1 has no variance to calibrate (one hypothesis's is unknown); use --samples 2 or more")
    if args.reverse_samples < 1:
        raise InputError(f"--reverse-samples must be >= 1, got {args.reverse_samples}")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.size < 32:
        raise InputError(f"--size must be >= 32 px, got {args.size}")
    return taus, fixed


def _variance_ause(samples: CueSamples) -> float | None:
    """How well the variance alone ranks the errors within each pair (``None`` without it)."""
    if "variance" not in samples.names:
        return None
    return pair_ause(samples, samples.cues[:, samples.names.index("variance")])


def _print_table(table: list[dict], chosen: tuple[str, ...], taus: tuple[float, ...], variance_ause: float | None) -> None:
    print(f"{'cues':<45} {'held-out NLL':>12}  " + "  ".join(f"ECE@{t:g}" for t in taus) + "   AUSE")
    for row in table:
        mark = " *" if tuple(row["cues"]) == chosen else ""
        ece = "  ".join(f"{row['ece'][f'{t:g}']:.4f}" for t in taus)
        print(f"{'+'.join(row['cues']):<45} {row['nll']:>12.4f}  {ece}  {row['ause']:.4f}{mark}")
    if variance_ause is not None:
        print(f"AUSE (EPE, within each pair) ranking by the variance alone: {variance_ause:.4f}")


def _layer_search_part(
    taken: CueSamples,
    taus: tuple[float, ...],
    default_tau: float,
    search: LayerSearchConfig | None,
    refined: bool,
    command: list[str],
    transform: str = "log",
) -> Calibrator | None:
    """The calibration of the pixels the layer search took, its cues chosen as the main one's; ``None``
    (said in one line) when too few were taken, or all of them on one side of a τ."""
    pairs = len(np.unique(taken.pair))
    labels = [taken.errors < tau for tau in taus]
    if pairs < _MIN_SEARCH_PAIRS or any(label.all() or not label.any() for label in labels):
        print(f"no layer-search part: the search took pixels in {pairs} pairs (need {_MIN_SEARCH_PAIRS}), "
              "or they all lie on one side of a τ; taken pixels will keep the confidence of the match they replace")
        return None
    print("layer-search part (pixels the search took):")
    chosen, table = select_cues(taken, taus, default_tau, transform)
    variance_ause = _variance_ause(taken)
    _print_table(table, chosen, taus, variance_ause)
    columns = [taken.names.index(c) for c in chosen]
    info = {
        "pairs": pairs,
        "pixels": int(taken.errors.size),
        "search": asdict(search) if search else None,
        "selection": table,
        "variance_ause": variance_ause,
        "command": command,
    }
    return fit_calibrator(taken.cues[:, columns], taken.errors, chosen, taus, default_tau, info, refined, transform=transform)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Fit and write; returns the exit status (0 ok, 1 the fit failed, 2 bad input, 130 interrupted).

    Arguments and ``--out`` are checked before the model and photos are loaded.
    """
    args = build_parser().parse_args(argv)
    taus, fixed = _check_arguments(args)
    default_photos = fetched_photos()
    photos = Path(args.photos) if args.photos is not None else default_photos
    created = check_out_file(args.out)
    threads = configure_threads()  # one budget (diffmatch.threads); recorded: it decides the last bits of a match
    try:
        from diffmatch.models.weights import load_checkpoint

        device = resolve_device(args.device)
        model = load_checkpoint(args.checkpoint, device=device)
        limit = model.config.num_train_timesteps
        if args.steps is not None and args.steps > limit:
            raise InputError(f"--steps must be in [1, {limit}] for this model, got {args.steps}")
        items = calibration_pairs(photos, args.pairs, args.size, args.corrupted, args.seed, args.scenes)
    except BaseException:
        remove_empty_folders(created)
        raise
    start = time.perf_counter()
    print(f"matching {len(items)} pairs from {photos} ...", file=sys.stderr)
    refiner = None if args.no_refine else VariationalRefiner()
    search = None if args.no_layer_search else LayerSearchConfig()
    matched, taken = collect_cues(
        model, items, args.samples, args.steps, args.pixels, args.seed, device, True, refiner, args.reverse_samples, search
    )
    match_seconds = time.perf_counter() - start
    try:
        check_error_spread(matched.errors, taus)
        chosen, table = select_cues(matched, taus, args.default_tau, args.transform)
    except ValueError as err:
        print_error(err)
        return EXIT_FAILED
    if fixed is not None:
        chosen = fixed
    variance_ause = _variance_ause(matched)
    _print_table(table, chosen, taus, variance_ause)
    errors = matched.errors
    info = {
        "photos": photos.name if photos.resolve() == default_photos.resolve() else str(photos),
        "pairs": len(items),
        "corrupted": sum(item["corruption"] != "clean" for item in items),
        "scenes": sum(item["kind"] == "scenes" for item in items),
        "size": args.size,
        "samples": args.samples,
        "reverse_samples": args.reverse_samples,
        "steps": args.steps,
        "pixels": int(errors.size),
        "seed": args.seed,
        "threads": threads,
        "refinement": None if refiner is None else asdict(refiner),
        "selection": table,
        "variance_ause": variance_ause,
        "match_seconds": match_seconds,
        "command": ["python", "-m", "diffmatch.calibrate", *(sys.argv[1:] if argv is None else argv)],
    }
    columns = [CUES.index(c) for c in chosen]
    calibrator = fit_calibrator(
        matched.cues[:, columns], errors, chosen, taus, args.default_tau, info, refiner is not None, args.reverse_samples,
        args.transform,
    )
    if taken is not None:
        part = _layer_search_part(taken, taus, args.default_tau, search, refiner is not None, info["command"], args.transform)
        calibrator = replace(calibrator, layer_search=part)
    out = write_calibrated(args.checkpoint, args.out, calibrator.to_dict())
    print(f"cues: {', '.join(chosen)}; {errors.size} pixels of {len(items)} pairs; matching took {match_seconds:.0f} s")
    part = calibrator.layer_search
    if part is not None:
        print(f"layer-search part: cues {', '.join(part.cues)}; {part.info['pixels']} taken pixels of {part.info['pairs']} pairs")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
