"""Score matchers on the sanity pairs (identical, 20 px shift, 10° rotation with 1.1× zoom) of photos.

    python scripts/sanity_check.py                                  # default model and DIS, held-out photos
    python scripts/sanity_check.py --methods checkpoint --checkpoint my.pt --photos a.jpg b.jpg

Prints the mean end-point error (px) per photo and case, and the mean over photos; for ``identical``
that is the mean flow magnitude, which should be zero. The pairs are built at each photo's own size
by :func:`diffmatch.evaluation.sanity.sanity_pairs`. Flow convention: ``target(x) ≈ source(x + flow(x))``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from diffmatch.data.photos import bundled_photos, list_images
from diffmatch.errors import InputError
from diffmatch.evaluation.methods import MethodOptions, build_methods, parse_methods
from diffmatch.evaluation.sanity import SANITY_CASES, sanity_errors
from diffmatch.io import load_image
from diffmatch.matcher import parse_image_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="checkpoint,dis", help="comma list (as python -m diffmatch.evaluate)")
    parser.add_argument("--checkpoint", default=None, help="DiffMatch checkpoint (default: the bundled one)")
    parser.add_argument("--photos", nargs="+", default=None, help="photos (default: the bundled held-out ones)")
    parser.add_argument("--samples", type=int, default=3, help="DiffMatch hypotheses (default 3, as infer.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-size", default=None,
        help="DiffMatch's processing size, an integer or 'auto' (default: the checkpoint's own)",
    )
    args = parser.parse_args(argv)
    try:
        photos = [Path(p) for p in args.photos] if args.photos else list_images(bundled_photos("val"))
        options = MethodOptions(
            checkpoint=args.checkpoint, num_samples=args.samples, seed=args.seed,
            image_size=None if args.image_size is None else parse_image_size(args.image_size),
        )
        methods = build_methods(parse_methods(args.methods), options)
        images = [load_image(p) for p in photos]
    except (InputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cases = list(SANITY_CASES)
    print(f"{'method':<12} {'photo':<24} " + " ".join(f"{c:>14}" for c in cases))
    for method in methods:
        rows = []
        for path, image in zip(photos, images):
            if hasattr(method, "generator"):  # every photo sampled with the same seed
                method.generator.manual_seed(args.seed)
            errors = sanity_errors(method, image)
            rows.append([errors[c] for c in cases])
            print(f"{method.name:<12} {path.name:<24} " + " ".join(f"{e:14.2f}" for e in rows[-1]))
        mean = np.mean(rows, axis=0)
        print(f"{method.name:<12} {'MEAN':<24} " + " ".join(f"{e:14.2f}" for e in mean))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
