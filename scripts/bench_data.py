"""Throughput of training pairs (pairs per second), single process and with DataLoader workers.

Usage:
    python scripts/bench_data.py [--sizes 256 512] [--workers 2] [--pairs 64] [--batch-size 8]
    python scripts/bench_data.py --paper [--workers 2] [--pairs 48]

``--paper`` times the paper's data instead: DPED-CityScape-ADE pairs rendered at 520² from CSV rows
(:class:`~diffmatch.data.CSVWarpPairs`), with and without one moving COCO object (probability 0.9,
as the official ETH3D model). No dataset is downloaded: the originals are the bundled photos
written as 2048 × 1024 PNGs (Cityscapes' size and format, the bulk of the set), the rows are drawn
from the CSV's distributions (``WarpConfig(preset='glunet')``) and the objects are random polygons
in 640 × 480 JPEGs (COCO's size) with a COCO JSON, all in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffmatch.data import (
    CocoObjects,
    CSVWarpPairs,
    MovingObjects,
    MovingObjectsConfig,
    SyntheticPairs,
    WarpConfig,
    bundled_photos,
    list_images,
)
from diffmatch.data.glunet_warps import sample_warp_row
from diffmatch.io import load_image, save_image

PAPER_SIZE = (520, 520)


def pairs_per_second(dataset: Dataset, pairs: int, workers: int, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    iterator = iter(loader)
    next(iterator)  # start-up (worker spawn, first decode) is not throughput
    start, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += batch["source"].shape[0]
        if seen >= pairs:
            break
    return seen / (time.perf_counter() - start)


def make_paper_like_data(folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """Write stand-in originals, a CSV of ``rows`` drawn rows and a COCO-style object set.

    Returns:
        ``(image_root, csv_file, coco_root)``.
    """
    photos = list_images(bundled_photos("train"))
    image_root, coco_root = folder / "training_datasets", folder / "coco"
    (image_root / "CityScape").mkdir(parents=True)
    (coco_root / "images" / "train2014").mkdir(parents=True)
    (coco_root / "annotations").mkdir()
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = WarpConfig(preset="glunet")
    lines = ["fname,aff/tps/homo," + ",".join(f"t{i}" for i in range(1, 19))]
    images, annotations = [], []
    for index, path in enumerate(photos):
        photo = load_image(path)
        save_image(image_root / "CityScape" / f"{index}.png", cv2.resize(photo, (2048, 1024)))
        name = f"COCO_train2014_{index:012d}.jpg"
        save_image(coco_root / "images" / "train2014" / name, cv2.resize(photo, (640, 480)))
        images.append({"id": index, "file_name": name, "height": 480, "width": 640})
        for k in range(3):  # star-shaped random polygons of 50-200 px radius
            centre = rng.uniform((150, 150), (490, 330))
            angles = np.sort(rng.uniform(0, 2 * np.pi, 10))
            radii = rng.uniform(50, 200, 10)
            points = centre + np.stack((np.cos(angles), np.sin(angles)), 1) * radii[:, None]
            points = np.clip(points, 0, (639, 479))
            area = 0.5 * abs(
                np.dot(points[:, 0], np.roll(points[:, 1], 1))
                - np.dot(points[:, 1], np.roll(points[:, 0], 1))
            )
            segmentation = [points.ravel().round(1).tolist()]
            annotations.append(
                {
                    "id": 3 * index + k,
                    "image_id": index,
                    "iscrowd": 0,
                    "area": area,
                    "segmentation": segmentation,
                }
            )
    for row in range(rows):
        kind, params = sample_warp_row(config, generator)
        code = {"affine": 0, "tps": 1, "homography": 2}[kind]
        values = [*params, *[0.0] * (18 - len(params))]
        lines.append(f"CityScape/{row % len(photos)}.png,{code}," + ",".join(f"{v:.10g}" for v in values))
    csv_file = image_root / "rows.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    (coco_root / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations})
    )
    return image_root, csv_file, coco_root


def bench_paper(args: argparse.Namespace) -> None:
    length = args.pairs + 2 * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        image_root, csv_file, coco_root = make_paper_like_data(Path(tmp), length)
        plain = CSVWarpPairs(image_root, csv_file, size=PAPER_SIZE)
        objects = MovingObjects(
            plain, CocoObjects(coco_root), MovingObjectsConfig(root=str(coco_root), number=1, probability=0.9)
        )
        print(f"paper data at {PAPER_SIZE[0]}²; 1 torch thread per process; batch {args.batch_size}")
        for name, dataset in (("DPED-CityScape-ADE rows", plain), ("+ 1 COCO object (p=0.9)", objects)):
            for workers in sorted({0, args.workers}):
                rate = pairs_per_second(dataset, args.pairs, workers, args.batch_size)
                per_worker = rate / max(workers, 1)
                print(f"{name:26s} workers={workers}  {rate:6.1f} pairs/s  ({per_worker:.1f} per process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--pairs", type=int, default=64, help="pairs timed per setting (after one warm-up batch)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--elastic", type=float, default=0.0, help="probability of elastic perturbations")
    parser.add_argument(
        "--paper", action="store_true", help="time the paper's data (see the module docstring)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.paper:
        bench_paper(args)
        return
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
