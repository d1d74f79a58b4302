"""Inference speed and memory at 512², against the VGG-16 floor.

    python scripts/bench_inference.py                      # bundled checkpoint
    python scripts/bench_inference.py --checkpoint PATH    # any checkpoint
    python scripts/bench_inference.py --paper              # also the paper-size model (random weights)

Each measurement runs in a fresh process so that its peak resident memory (``ru_maxrss``, the whole
process including the Python runtime and torch) is its own. Prints seconds per pair for 1 and 3
samples × 5 DDIM steps, the time of a plain VGG-16 forward pass (``torchvision.models.vgg16().features``)
on the same two images, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

SIZE = 512


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, SIZE, SIZE, generator=g), torch.rand(1, 3, SIZE, SIZE, generator=g)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(kind: str, checkpoint: str | None, samples: int, repeats: int) -> dict:
    """One measurement in this process: ``vgg``, ``model`` or ``paper``."""
    torch.set_grad_enabled(False)
    source, target = _images()
    if kind == "vgg":
        from torchvision.models import vgg16

        net = vgg16(weights=None).features.eval()
        seconds = _timed(lambda: net(torch.cat([source, target])), repeats)
    else:
        from diffmatch.matcher import DiffMatcher
        from diffmatch.model import DiffMatch, DiffMatchConfig

        if kind == "paper":
            matcher = DiffMatcher(DiffMatch(DiffMatchConfig(feature_kwargs={"weights": "random"})), device="cpu")
        else:
            matcher = DiffMatcher.from_checkpoint(checkpoint, device="cpu")
        gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        seconds = _timed(lambda: matcher.match(source, target, num_samples=samples, num_steps=5, generator=gen()), repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "samples": samples, "seconds": seconds, "peak_mb": peak_mb}


def _run(kind: str, checkpoint: str | None, samples: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, "--samples", str(samples), "--repeats", str(repeats)]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    parser.add_argument("--paper", action="store_true", help="also time the paper-size model (121 M U-Net, random weights)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=("vgg", "model", "paper"), help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.checkpoint, args.samples, args.repeats)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, input {SIZE}x{SIZE}")
    floor = _run("vgg", None, 1, args.repeats)
    print(f"{'VGG-16 features, both images':40s} {floor['seconds']:7.3f} s/pair  peak {floor['peak_mb']:7.0f} MB   1.00x")
    rows = [("model", s) for s in (1, 3)] + ([("paper", s) for s in (1, 3)] if args.paper else [])
    for kind, samples in rows:
        r = _run(kind, args.checkpoint, samples, 1 if kind == "paper" else args.repeats)
        name = f"{'bundled/given' if kind == 'model' else 'paper config'} model, {samples} sample(s) x 5 steps"
        ratio = r["seconds"] / floor["seconds"]
        print(f"{name:40s} {r['seconds']:7.3f} s/pair  peak {r['peak_mb']:7.0f} MB  {ratio:5.2f}x")


if __name__ == "__main__":
    main()
