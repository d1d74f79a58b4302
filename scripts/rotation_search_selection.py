"""How two-pass matching's rotation search behaves on a set of photos: per pair, pass 1's mean
calibrated confidence, whether a rotated pass replaced it, and the AEPE with and without the search.

    diffmatch fetch-photos
    python scripts/rotation_search_selection.py --root data/photos/extra     # the training photos

Scene pairs (``stereo``, ``medium``, ``wide``; 384 × 512) and synthetic pairs (``medium``, ``hard``;
240²) are built from ``--root`` as the benchmarks build them from the held-out photos. Prints one
line per pair and the mean AEPE per set. Flow convention: ``target(x) ≈ source(x + flow(x))``, px.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import diffmatch.two_pass as two_pass
from diffmatch.data.benchmark import SyntheticBenchmark
from diffmatch.data.scenes import SceneBenchmark
from diffmatch.errors import InputError
from diffmatch.evaluation.methods import pair_seed
from diffmatch.matcher import DiffMatcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="photo folder (e.g. data/photos/extra, the training photos)")
    parser.add_argument("--checkpoint", help="weights file (default: the bundled model)")
    parser.add_argument("--scene-pairs", type=int, default=10, help="scene pairs per level (default 10)")
    parser.add_argument("--synthetic-pairs", type=int, default=12, help="synthetic pairs per level (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (each pair's noise: pair_seed)")
    args = parser.parse_args(argv)
    try:
        matcher = DiffMatcher.from_checkpoint(args.checkpoint)
        sets = [(level, SceneBenchmark(args.root, level=level, size=(384, 512), num_pairs=args.scene_pairs))
                for level in ("stereo", "medium", "wide")]
        sets += [(f"synthetic-{level}", SyntheticBenchmark(args.root, size=(240, 240), level=level, num_pairs=args.synthetic_pairs))
                 for level in ("medium", "hard")]
    except (InputError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seen: dict[str, object] = {}
    search = two_pass._search_rotations

    def recording(search_match, source, target, first, config):  # type: ignore[no-untyped-def]
        seen["confidence"] = float(first.confidence.mean()) if first.confidence is not None else float("nan")
        kept = search(search_match, source, target, first, config)
        seen["rotated"] = kept is not first
        return kept

    two_pass._search_rotations = recording
    configs = {"off": two_pass.TwoPassConfig(rotations=()), "on": two_pass.TwoPassConfig()}
    print("set pair pass1_confidence rotated aepe_without aepe_with")
    for label, dataset in sets:
        errors = {name: [] for name in configs}
        for index in range(len(dataset)):
            item = dataset[index]
            source, target = item["source"][None], item["target"][None]
            mask = item["mask"].bool()
            for name, config in configs.items():
                generator = torch.Generator().manual_seed(pair_seed(args.seed, source, target))
                result = matcher.match(source, target, num_samples=3, generator=generator, two_pass=config)
                errors[name].append(float((result.flow[0] - item["flow"]).norm(dim=0)[mask].mean()))
            print(f"{label} {index} {seen['confidence']:.3f} {seen['rotated']} {errors['off'][-1]:.3f} {errors['on'][-1]:.3f}", flush=True)
        print(f"{label} mean: without {np.mean(errors['off']):.3f}, with {np.mean(errors['on']):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
