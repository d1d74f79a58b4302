"""Evaluate dense matchers on a benchmark: ``python -m diffmatch.evaluate``.

Example:
    python -m diffmatch.evaluate --dataset synthetic --methods checkpoint,raw-corr,dis --out outputs/eval
    python -m diffmatch.evaluate --dataset hpatches --root data/hpatches-sequences-release \\
        --methods checkpoint --corruptions all --severity 5 --out outputs/hpatches-c

Prints a table per method and group (``all``; the synthetic levels ``easy``/``medium``/``hard``;
 the scene levels ``stereo``/``medium``/``wide``;
the ETH3D rates ``rate_3`` .. ``rate_15``; the HPatches pairs ``1_2`` .. ``1_6``; each corruption
type) and writes, atomically, ``summary.json``, ``per_pair.csv``, ``sparsification.png`` and, with
corruptions, ``corruptions.png`` to ``--out``. A pair that fails is reported on stderr and in
``per_pair.csv`` and the run goes on; the exit status is then 1. Bad arguments, an ``--out`` that
cannot be written and ``--steps`` beyond the model's ``T`` exit with status 2 and a one-line error
before any pair runs; Ctrl-C exits with status 130. Metrics are defined in :mod:`diffmatch.metrics`; see ``docs/evaluation.md``.

The calibrated confidence (reliability diagram, ECE per τ) and homography accuracy from confident
matches have their own command, ``python -m diffmatch.evaluate_confidence``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import cv2
import torch

from diffmatch.cli.common import (
    EXIT_FAILED,
    OneLineArgumentParser,
    check_out_folder,
    one_line_errors,
    print_error,
    program,
    remove_empty_folders,
)
from diffmatch.errors import InputError
from diffmatch.evaluation.datasets import (
    DATASETS,
    PAPER_SAMPLES,
    PROTOCOLS,
    build_subsets,
    default_protocol,
    parse_corruptions,
)
from diffmatch.evaluation.methods import (
    MethodOptions,
    available_methods,
    build_methods,
    parse_methods,
)
from diffmatch.evaluation.report import format_table, summarize_records, write_outputs
from diffmatch.evaluation.runner import PoseOptions, run_evaluation
from diffmatch.inputs import resolve_device
from diffmatch.metrics import SPARSIFICATION_INTERVALS
from diffmatch.models.precision import check_precision
from diffmatch.threads import configure_threads

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m diffmatch.evaluate``."""
    parser = OneLineArgumentParser(
        prog=program("python -m diffmatch.evaluate"),
        description="Evaluate dense matchers (AEPE, PCK-1/3/5, AUSE, time per pair) on a benchmark.",
    )
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    parser.add_argument(
        "--root",
        help="generic: the pair list file; hpatches/eth3d: the dataset folder; "
        "synthetic: a photo folder (default: the bundled held-out photos)",
    )
    parser.add_argument(
        "--corruptions", default="none", help="'none' (clean), 'all' (15 ImageNet-C types) or a comma list"
    )
    parser.add_argument("--severity", type=int, default=5, help="corruption severity 1..5 (default 5)")
    parser.add_argument("--methods", required=True, help=f"comma list of: {', '.join(available_methods())}")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", help="DiffMatch checkpoint (default: the bundled one)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="hpatches/eth3d: 'paper' (default; the paper's Table 2: HPatches at the original resolution, "
        "ETH3D AEPE averaged over scenes) or '240' (HPatches at 240x240, ETH3D AEPE over images)",
    )
    parser.add_argument(
        "--samples", type=int, help="DiffMatch hypotheses per pair (default 3; paper protocol: 3 hpatches, 4 eth3d)"
    )
    parser.add_argument("--steps", type=int, help="DiffMatch sampling steps (default: the checkpoint's own, its sampling_steps or else T)")
    parser.add_argument("--limit", type=int, help="at most N pairs per level/rate/subset (before corruption)")
    parser.add_argument("--seed", type=int, default=0, help="seed of DiffMatch sampling and corruption noise")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument(
        "--precision", default="32", choices=("32", "bf16", "16"),
        help="dtype of DiffMatch's networks (default 32; 16 needs CUDA); the cost volume and flows stay float32",
    )
    parser.add_argument(
        "--pose-matches", type=int, default=5000, help="pose benchmarks: matches given to the essential matrix (default 5000)"
    )
    parser.add_argument(
        "--pose-estimator", choices=("ransac", "magsac"), default="ransac", help="pose benchmarks: OpenCV's estimator"
    )
    parser.add_argument(
        "--pose-threshold", type=float, default=0.5, help="pose benchmarks: inlier threshold in pixels (default 0.5)"
    )
    parser.add_argument(
        "--pose-trials", type=int, default=5,
        help="pose benchmarks: estimates from independent draws of matches, the best supported kept (default 5; 1: one estimate)",
    )
    parser.add_argument(
        "--pose-repeats", type=int, default=5,
        help="pose benchmarks: estimate each pair's pose this many times with seeds --seed, --seed + 1, ...; "
        "the AUC pools them, and summary.json gives its spread across the runs (default 5; 1: once)",
    )
    parser.add_argument("--sd-model", help="Stable Diffusion folder or Hub id for dift/fused")
    parser.add_argument("--dino-model", help="DINOv2 folder or Hub id for dino/fused")
    return parser


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _settings(
    args: argparse.Namespace, names: Sequence[str], corruptions: Sequence[str], device: torch.device
) -> dict[str, Any]:
    return {
        "dataset": args.dataset,
        "root": args.root,
        "corruptions": list(corruptions),
        "severity": args.severity if corruptions else None,
        "methods": list(names),
        "checkpoint": args.checkpoint,
        "protocol": args.protocol,
        "samples": args.samples,
        "steps": args.steps,
        "limit": args.limit,
        "seed": args.seed,
        "device": str(device),
        "precision": args.precision,
        "pose": {
            "matches": args.pose_matches, "estimator": args.pose_estimator, "threshold_px": args.pose_threshold,
            "trials": args.pose_trials, "repeats": args.pose_repeats,
        },
        "sparsification_intervals": SPARSIFICATION_INTERVALS,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "kornia": _version("kornia"),
            "scipy": _version("scipy"),
        },
    }


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit status (0 ok, 1 some pairs failed, 2 bad input, 130 interrupted).

    Every argument and ``--out`` are checked before the data and models are loaded, and ``--steps``
    against the checkpoint before the first pair runs.
    """
    args = build_parser().parse_args(argv)
    if args.dataset not in DATASETS:
        raise InputError(f"unknown dataset {args.dataset!r}, expected one of {', '.join(DATASETS)}")
    args.protocol = default_protocol(args.dataset, args.protocol)
    if args.samples is None:
        args.samples = PAPER_SAMPLES[args.dataset] if args.protocol == "paper" else 3
    names = parse_methods(args.methods)
    corruptions = parse_corruptions(args.corruptions)
    device = resolve_device(args.device)
    check_precision(args.precision, device)
    if args.pose_matches < 5 or args.pose_threshold <= 0 or args.pose_trials < 1 or args.pose_repeats < 1:
        raise InputError(
            f"--pose-matches must be >= 5, --pose-threshold > 0, --pose-trials >= 1 and --pose-repeats >= 1, got "
            f"{args.pose_matches}, {args.pose_threshold}, {args.pose_trials} and {args.pose_repeats}"
        )
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    created = check_out_folder(args.out)
    # torch, OpenCV and the refinement within one budget (diffmatch.threads); the count decides the
    # last bits of every match, so it is recorded (OMP_NUM_THREADS pins it for a reproducible run).
    threads = configure_threads()
    try:
        subsets = build_subsets(
            args.dataset, args.root, corruptions, args.severity, args.limit, args.seed, args.protocol
        )
        options = MethodOptions(
            checkpoint=args.checkpoint,
            num_samples=args.samples,
            num_steps=args.steps,
            seed=args.seed,
            device=device,
            precision=args.precision,
            sd_model=args.sd_model,
            dino_model=args.dino_model,
        )
        pose = PoseOptions(
            args.pose_matches, args.pose_estimator, args.pose_threshold, args.seed, args.pose_trials, args.pose_repeats
        )
        methods = build_methods(names, options)
    except BaseException:
        remove_empty_folders(created)
        raise

    start = time.perf_counter()
    records = run_evaluation(methods, subsets, device, pose=pose)
    results = summarize_records(records, args.protocol)
    failures = [r for r in records if r.error is not None]
    summary = {
        **_settings(args, names, corruptions, device),
        "threads": threads,
        "command": ["python", "-m", "diffmatch.evaluate", *(sys.argv[1:] if argv is None else argv)],
        "seconds_total": time.perf_counter() - start,
        "pck_definition": "pck1/3/5: per dataset, all valid pixels pooled; pck*_per_image: mean of per-image PCK",
        "aepe_definition": (
            "ETH3D, paper protocol: per rate, mean over scenes of each scene's mean per-image AEPE; "
            "'all': mean over rates (aepe_per_image: mean over images)"
            if args.protocol == "paper" and args.dataset == "eth3d"
            else "mean over images of each image's mean end-point error on valid pixels (px)"
        ),
        "ause_definition": "DenseMatching compute_aucs per image, averaged; ause_pck is PCK-1",
        "pose_definition": (
            "pose error = max(rotation error, angle between translation directions) in degrees, inf when "
            "no pose was found; pose_auc5/10/20: LoFTR's error_auc of the pose errors, every repeated estimate "
            "of every pair pooled; pose_auc*_std: standard deviation over the repeats of one run's AUC"
        ),
        "results": results,
        "failures": [
            {"method": r.method, "name": r.name, "tags": r.tags, "error": r.error} for r in failures
        ],
    }
    if args.protocol is not None:
        print(f"protocol: {args.protocol}")
    print(format_table(results))
    written = write_outputs(args.out, summary, records)  # an OSError (a full disk): one line, status 1
    print(f"wrote {', '.join(str(p) for p in written)}")
    if failures:
        print_error(f"{len(failures)} of {len(records)} (pair, method) evaluations failed; see per_pair.csv")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
