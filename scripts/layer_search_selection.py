"""How the layer search's settings score on a set of photos: AEPE and pose AUC per scene level.

    diffmatch fetch-photos
    python scripts/layer_search_selection.py --root data/photos/extra     # the training photos

Scene pairs (384 × 512, the benchmark's motions of each level) are built from ``--root`` as the
scene benchmark builds them from the held-out photos. Each pair is matched once as ``DiffMatcher``
matches by default but without the layer search (two passes, refinement, calibrated confidence;
noise seeded by ``pair_seed``), then every setting of :data:`SETTINGS` searches that same result
(:func:`~diffmatch.refinement.layer_search.search_layers`, with the matcher's ``F_init`` and
refinement), so the settings differ only in the search. Prints, per level and setting, the mean AEPE
and the pose AUC@5/10/20 (the evaluation's pose protocol: 5000 matches drawn by confidence,
essential matrix, RANSAC at 0.5 px). Flow convention: ``target(x) ≈ source(x + flow(x))``, px.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from diffmatch.data.scenes import SCENE_LEVELS, SceneBenchmark
from diffmatch.errors import InputError
from diffmatch.evaluation.methods import pair_seed
from diffmatch.evaluation.runner import PoseOptions, pair_pose_error
from diffmatch.matcher import DiffMatcher
from diffmatch.metrics import pose_auc
from diffmatch.refinement import LayerSearchConfig, search_layers

SETTINGS: dict[str, LayerSearchConfig | None] = {
    "off": None,
    "default": LayerSearchConfig(),
    "below=0.65": LayerSearchConfig(below=0.65),
    "below=0.5": LayerSearchConfig(below=0.5),
    "ratio=0.9": LayerSearchConfig(ratio=0.9),
    "ratio=1.0": LayerSearchConfig(ratio=1.0),
    "max_layers=5": LayerSearchConfig(max_layers=5),
    "window=1/24": LayerSearchConfig(window=1 / 24),
    "window=1/12": LayerSearchConfig(window=1 / 12),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="photo folder (e.g. data/photos/extra, the training photos)")
    parser.add_argument("--checkpoint", help="weights file (default: the bundled model)")
    parser.add_argument("--pairs", type=int, default=30, help="scene pairs per level (default 30)")
    parser.add_argument("--levels", default=",".join(SCENE_LEVELS), help="comma list of scene levels (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (each pair's noise: pair_seed)")
    args = parser.parse_args(argv)
    try:
        levels = [level.strip() for level in args.levels.split(",") if level.strip()]
        matcher = DiffMatcher.from_checkpoint(args.checkpoint)
        sets = [(level, SceneBenchmark(args.root, level=level, size=(384, 512), num_pairs=args.pairs)) for level in levels]
    except (InputError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def raw_flow(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return matcher.match_raw(source, target).flow

    print("level setting aepe auc@5 auc@10 auc@20")
    for level, dataset in sets:
        scores: dict[str, list[tuple[float, float]]] = {name: [] for name in SETTINGS}
        for index in range(len(dataset)):
            item = dataset[index]
            source, target = item["source"][None], item["target"][None]
            generator = torch.Generator().manual_seed(pair_seed(args.seed, source, target))
            result = matcher.match(source, target, generator=generator, layer_search=False)
            for name, config in SETTINGS.items():
                searched = result if config is None else search_layers(result, source, target, raw_flow, matcher.refiner, config)[0]
                aepe = float((searched.flow[0] - item["flow"]).norm(dim=0)[item["mask"].bool()].mean())
                scores[name].append((aepe, max(pair_pose_error(searched, item, PoseOptions()))))
        for name, values in scores.items():
            aepe, pose = np.array(values).T
            aucs = pose_auc(list(pose), (5, 10, 20))
            print(level, name, f"{aepe.mean():.2f}", *(f"{100 * a:.1f}" for a in aucs.values()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
