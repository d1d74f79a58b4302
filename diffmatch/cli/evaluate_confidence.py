"""``python -m diffmatch.evaluate_confidence`` (``diffmatch evaluate-confidence``): reliability, ECE and
homography accuracy of a calibrated checkpoint on the synthetic benchmark, or reliability and ECE on
the 3D scenes benchmark (:mod:`diffmatch.evaluation.confidence` says what is measured).

Example:
    python -m diffmatch.evaluate_confidence --checkpoint CKPT_CAL --limit 10 --out outputs/confidence-clean
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from diffmatch.cli.common import (
    OneLineArgumentParser,
    check_out_folder,
    one_line_errors,
    program,
    remove_empty_folders,
)
from diffmatch.errors import InputError
from diffmatch.evaluation.confidence import (
    format_tables,
    plot_reliability,
    run_evaluation,
)
from diffmatch.io import atomic_open
from diffmatch.threads import configure_threads

__all__ = ["build_parser", "main"]



def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m diffmatch.evaluate_confidence``."""
    parser = OneLineArgumentParser(prog=program("python -m diffmatch.evaluate_confidence"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a calibrated checkpoint (default: the bundled one)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dataset", default="synthetic", choices=("synthetic", "scenes"),
                        help="synthetic (homographies; the default) or scenes (3D scenes: no homography rows)")
    parser.add_argument("--root", help="benchmark photo folder (default: the bundled held-out photos)")
    parser.add_argument("--corruptions", default="none", help="'none', 'all' or a comma list of ImageNet-C names")
    parser.add_argument("--severity", type=int, default=5, help="corruption severity 1..5 (default 5)")
    parser.add_argument("--limit", type=int, help="at most N pairs per level (before corruption)")
    parser.add_argument("--samples", type=int, default=3, help="hypotheses N (default 3)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's own, its sampling_steps or else T)")
    parser.add_argument("--num", type=int, default=500, help="matches K given to the homography estimator (default 500)")
    parser.add_argument("--threshold", type=float, default=3.0, help="MAGSAC++ threshold in px (default 3)")
    parser.add_argument("--bins", type=int, default=10, help="reliability bins (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling, random matches and corruptions")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--one-pass", action="store_true",
        help="match in one pass, as the calibration was fitted (default: as DiffMatcher matches, in two passes "
        "where the view changes a lot, one match per calibrated τ since the passes are chosen by the confidence "
        "at that τ)",
    )
    layers = parser.add_mutually_exclusive_group()
    layers.add_argument(
        "--no-layer-search", action="store_true",
        help="match without the layer search (default: with it, as DiffMatcher matches; README, 'Layer search')",
    )
    layers.add_argument("--layer-search", action="store_true", help="the default, with the layer search (kept for old scripts)")
    return parser


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit status (0 ok, 2 bad input, 130 interrupted).

    Arguments and ``--out`` are checked before the photos and the model are loaded.
    """
    args = build_parser().parse_args(argv)
    from diffmatch.evaluation.datasets import build_subsets, parse_corruptions
    from diffmatch.matcher import DiffMatcher

    corruptions = parse_corruptions(args.corruptions)
    for flag, value, least in (("--samples", args.samples, 1), ("--steps", args.steps, 1), ("--num", args.num, 4),
                               ("--bins", args.bins, 1), ("--limit", args.limit, 1)):
        if value is not None and value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")
    out = Path(args.out)
    created = check_out_folder(out)
    threads = configure_threads()  # one budget (diffmatch.threads); recorded: it decides the last bits of a match
    try:
        subsets = build_subsets(args.dataset, args.root, corruptions, args.severity, args.limit, args.seed)
        matcher = DiffMatcher.from_checkpoint(args.checkpoint, device=args.device, layer_search=not args.no_layer_search)
        if matcher.calibrator is None:
            raise InputError(
                f"{args.checkpoint or 'the bundled checkpoint'} has no confidence calibration "
                "(add one with `python -m diffmatch.calibrate CKPT --out CKPT_CAL`)"
            )
        limit = matcher.model.config.num_train_timesteps
        if args.steps is not None and args.steps > limit:
            raise InputError(f"--steps must be in [1, {limit}] for this model, got {args.steps}")
    except BaseException:
        remove_empty_folders(created)
        raise
    start = time.perf_counter()
    results = run_evaluation(args, matcher, subsets)
    taus = matcher.calibrator.taus
    summary = {
        "command": ["python", "-m", "diffmatch.evaluate_confidence", *(sys.argv[1:] if argv is None else argv)],
        "checkpoint": args.checkpoint,
        "calibration_info": {k: v for k, v in matcher.calibrator.info.items() if k != "selection"},
        "cues": list(matcher.calibrator.cues),
        "corruptions": list(corruptions),
        "severity": args.severity if corruptions else None,
        "threads": threads,
        "seconds_total": time.perf_counter() - start,
        "results": results,
    }
    with atomic_open(out / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=1)
    title = "clean" if not corruptions else f"ImageNet-C ({len(corruptions)} types, severity {args.severity})"
    plot_reliability(out / "reliability.png", {"all": results["all"]}, taus, title)
    print(format_tables(results, taus))
    print(f"wrote {out / 'summary.json'}, {out / 'reliability.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
