"""How the layer search's settings score on a set of photos: AEPE (and pose AUC on scenes) per group.

    diffmatch fetch-photos
    python scripts/layer_search_selection.py --root data/photos/extra     # the training photos' scenes
    python scripts/layer_search_selection.py --root data/photos/extra --dataset synthetic --limit 6
    python scripts/layer_search_selection.py --root data/photos/extra --dataset synthetic --limit 2 \
        --corruptions brightness,contrast,defocus_blur,fog,frost,gaussian_noise,jpeg_compression,snow

Pairs are built from ``--root`` as the evaluation builds them from the held-out photos
(:func:`~diffmatch.evaluation.datasets.build_subsets`: scene pairs at 384 × 512 with each level's
motions, or the synthetic benchmark's homographies, optionally with ImageNet-C at severity 5). Each
pair is matched once as ``DiffMatcher`` matches by default but without the layer search (two passes,
refinement, calibrated confidence; noise seeded by ``pair_seed``), then every setting of
:data:`SETTINGS` searches that same result (:func:`~diffmatch.refinement.layer_search.search_layers`,
with the matcher's ``F_init`` and refinement), so the settings differ only in the search. Prints, per
group (level, and corruption) and setting, the mean AEPE and, for scenes, the pose AUC@5/10/20 (the
evaluation's pose protocol: 5000 matches drawn by confidence, essential matrix, RANSAC at 0.5 px).
Flow convention: ``target(x) ≈ source(x + flow(x))``, px.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from diffmatch.errors import InputError
from diffmatch.evaluation.datasets import build_subsets, parse_corruptions
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
    "distinct=0": LayerSearchConfig(distinct=0.0),
    "distinct=0.05": LayerSearchConfig(distinct=0.05),
    "distinct=0.075": LayerSearchConfig(distinct=0.075),
    "distinct=0.15": LayerSearchConfig(distinct=0.15),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="photo folder (e.g. data/photos/extra, the training photos)")
    parser.add_argument("--checkpoint", help="weights file (default: the bundled model)")
    parser.add_argument("--dataset", choices=("scenes", "synthetic"), default="scenes", help="pair kind (default scenes)")
    parser.add_argument("--limit", type=int, help="pairs per level (default: all of the benchmark's)")
    parser.add_argument("--corruptions", default="none", help="synthetic: ImageNet-C types at severity 5, 'all' or a comma list (default none)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (each pair's noise: pair_seed)")
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)} (default all)")
    args = parser.parse_args(argv)
    chosen = list(SETTINGS) if args.settings == "all" else [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SETTINGS]
    if unknown or not chosen:
        print(f"error: --settings: unknown {unknown or 'nothing'}; choose from {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    try:
        matcher = DiffMatcher.from_checkpoint(args.checkpoint)
        subsets = build_subsets(args.dataset, args.root, parse_corruptions(args.corruptions), 5, args.limit)
    except (InputError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def raw_flows(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return matcher.match_raw(source, target).flow, matcher.match_raw(target, source).flow

    has_pose = args.dataset == "scenes"
    scores: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for subset in subsets:
        for index in range(len(subset.dataset)):
            item = subset.dataset[index]
            group = "/".join([subset.tags.get("level", "all"), str(item.get("corruption", "clean"))])
            source, target = item["source"][None], item["target"][None]
            generator = torch.Generator().manual_seed(pair_seed(args.seed, source, target))
            result = matcher.match(source, target, generator=generator, layer_search=False)
            for name in chosen:
                config = SETTINGS[name]
                searched = result if config is None else search_layers(result, source, target, raw_flows, matcher.refiner, config)[0]
                aepe = float((searched.flow[0] - item["flow"]).norm(dim=0)[item["mask"].bool()].mean())
                pose = max(pair_pose_error(searched, item, PoseOptions())) if has_pose else float("nan")
                scores.setdefault(group, {}).setdefault(name, []).append((aepe, pose))
    print("group setting aepe auc@5 auc@10 auc@20")
    for group, by_setting in scores.items():
        for name, values in by_setting.items():
            aepe, pose = np.array(values).T
            aucs = pose_auc(list(pose), (5, 10, 20)).values() if has_pose else ()
            print(group, name, f"{aepe.mean():.2f}", *(f"{100 * a:.1f}" for a in aucs), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
