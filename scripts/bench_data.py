"""Throughput of synthetic training pairs (pairs per second), single process and with DataLoader workers.

Usage:
    python scripts/bench_data.py [--sizes 256 512] [--workers 2] [--pairs 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from diffmatch.data import SyntheticPairs, WarpConfig, bundled_photos


def pairs_per_second(dataset: SyntheticPairs, pairs: int, workers: int, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    iterator = iter(loader)
    next(iterator)  # start-up (worker spawn, first decode) is not throughput
    start, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += batch["source"].shape[0]
        if seen >= pairs:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--pairs", type=int, default=64, help="pairs timed per setting (after one warm-up batch)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--elastic", type=float, default=0.0, help="probability of elastic perturbations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch threads per process: 1; bundled train photos; batch size {args.batch_size}")
    for side in args.sizes:
        dataset = SyntheticPairs(
            bundled_photos("train"),
            size=(side, side),
            length=args.pairs + 2 * args.batch_size,
            warp=WarpConfig(elastic_probability=args.elastic),
        )
        for workers in sorted({0, args.workers}):
            rate = pairs_per_second(dataset, args.pairs, workers, args.batch_size)
            print(f"{side}x{side}  workers={workers}  {rate:7.1f} pairs/s")


if __name__ == "__main__":
    main()
