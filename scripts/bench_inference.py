"""Inference speed and memory at 512², against the VGG-16 floor.

    python scripts/bench_inference.py                      # bundled checkpoint
    python scripts/bench_inference.py --checkpoint PATH    # any checkpoint
    python scripts/bench_inference.py --paper              # also the paper-size model (random weights)
    python scripts/bench_inference.py --compare OLD.pt     # also another checkpoint, e.g. a retired one
    python scripts/bench_inference.py --paper --device cuda [--bf16]   # on a GPU (bf16 autocast)

Each measurement runs in a fresh process so that its peak resident memory (``ru_maxrss``, the whole
process including the Python runtime and torch) is its own; on CUDA the peak is the GPU memory
allocated by torch (``max_memory_allocated``) and every timing ends with a synchronisation. Prints
seconds per pair for 1 and 3 samples (each checkpoint's own number of DDIM steps; 5 for the paper
model), with and without the sub-pixel refinement (``DiffMatcher``'s default, run on the CPU), OpenCV's DIS optical flow (medium preset) on the same pair as the classical reference, the time
of a plain VGG-16 forward pass (``torchvision.models.vgg16().features``) on the same two images, and
each row's ratio to it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SIZE = 512


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, SIZE, SIZE, generator=g), torch.rand(1, 3, SIZE, SIZE, generator=g)


def _timed(fn, repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def measure(
    kind: str, checkpoint: str | None, samples: int, repeats: int, device: str = "cpu", bf16: bool = False,
    image_size: str | None = None, refine: bool = True,
) -> dict:
    """One measurement in this process: ``vgg``, ``model`` or ``paper``."""
    torch.set_grad_enabled(False)
    source, target = (x.to(device) for x in _images())
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)
    if kind == "dis":
        import cv2

        gray = [cv2.cvtColor((x[0].permute(1, 2, 0).cpu().numpy() * 255).astype("uint8"), cv2.COLOR_RGB2GRAY)
                for x in (source, target)]
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        run = lambda: dis.calc(gray[1], gray[0], None)  # noqa: E731
    elif kind == "vgg":
        from torchvision.models import vgg16

        net = vgg16(weights=None).features.eval().to(device)
        run = lambda: net(torch.cat([source, target]))  # noqa: E731
    else:
        from diffmatch.matcher import DiffMatcher, parse_image_size
        from diffmatch.model import DiffMatch, DiffMatchConfig

        if kind == "paper":
            model = DiffMatch(DiffMatchConfig(feature_kwargs={"weights": "random"}))
            matcher = DiffMatcher(model, device=device, refine=refine)
        else:
            size = None if image_size is None else parse_image_size(image_size)
            matcher = DiffMatcher.from_checkpoint(checkpoint, device=device, image_size=size, refine=refine)
        gen = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
        steps = 5 if kind == "paper" else None  # None: the checkpoint's own sampling steps
        run = lambda: matcher.match(source, target, num_samples=samples, num_steps=steps, generator=gen())  # noqa: E731
    with autocast:
        seconds = _timed(run, repeats, device)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "samples": samples, "seconds": seconds, "peak_mb": peak_mb}


def _run(
    kind: str, checkpoint: str | None, samples: int, repeats: int, device: str, bf16: bool, image_size: str | None = None,
    refine: bool = True,
) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, "--samples", str(samples), "--repeats", str(repeats), "--device", device]
    if not refine:
        cmd.append("--no-refine")
    if image_size is not None and kind == "model":
        cmd += ["--image-size", image_size]
    if bf16:
        cmd.append("--bf16")
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    parser.add_argument("--paper", action="store_true", help="also time the paper-size model (121 M U-Net, random weights)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--compare", metavar="CKPT", help="also time this checkpoint (e.g. a retired default)")
    parser.add_argument("--image-size", help="processing size of the checkpoint rows (an integer or auto; default: its own)")
    parser.add_argument("--no-refine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", choices=("vgg", "model", "paper", "dis"), help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(
            args.one, args.checkpoint, args.samples, args.repeats, args.device, args.bf16, args.image_size, not args.no_refine
        )))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, input {SIZE}x{SIZE}{', bf16 autocast' if args.bf16 else ''}")
    floor = _run("vgg", None, 1, args.repeats, args.device, args.bf16)
    print(f"{'VGG-16 features, both images':52s} {floor['seconds']:7.3f} s/pair  peak {floor['peak_mb']:7.0f} MB   1.00x")
    rows = [("model", args.checkpoint, s, refine) for refine in (True, False) for s in (1, 3)]
    rows += [("model", args.compare, s, True) for s in (1, 3)] if args.compare else []
    rows += [("paper", None, s, refine) for refine in (True, False) for s in (1, 3)] if args.paper else []
    if args.device == "cpu":
        rows.append(("dis", None, 1, False))
    for kind, checkpoint, samples, refine in rows:
        repeats = args.repeats if kind in ("model", "dis") or args.device == "cuda" else 1
        r = _run(kind, checkpoint, samples, repeats, args.device, args.bf16, args.image_size, refine)
        if kind == "dis":
            name = "OpenCV DIS (medium preset)"
        elif kind == "paper":
            name = f"paper config model, {samples} sample(s) x 5 steps"
        else:
            name = f"{Path(checkpoint).name if checkpoint else 'bundled model'}, {samples} sample(s)"
            name += f" at {args.image_size}" if args.image_size else ""
        name += "" if kind == "dis" else (", refined" if refine else ", unrefined")
        ratio = r["seconds"] / floor["seconds"]
        print(f"{name:52s} {r['seconds']:7.3f} s/pair  peak {r['peak_mb']:7.0f} MB  {ratio:5.2f}x")


if __name__ == "__main__":
    main()
