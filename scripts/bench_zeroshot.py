"""Time per pair and peak memory of the zero-shot matchers (DIFT, DINOv2, SD+DINOv2).

Examples:
    # tiny random models built in a temporary folder (no download; numbers say nothing about quality)
    python scripts/bench_zeroshot.py --matcher fused
    # real weights
    python scripts/bench_zeroshot.py --matcher dift --sd-model /models/sd-2-1 --image-size 768 --device cuda

Without ``--sd-model`` / ``--dino-model`` the tiny checkpoints of ``tests/zeroshot_fixtures.py`` are
written to a temporary folder and used, at a small default image size (their VAE has stride 2, so
attention runs on large latents). Memory is the process's peak resident set size on CPU (it includes
the Python libraries) and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from diffmatch.models.zeroshot import ZeroShotMatcher


def _fixtures() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "tests" / "zeroshot_fixtures.py"
    spec = importlib.util.spec_from_file_location("zeroshot_fixtures", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: {path} not found; pass --sd-model/--dino-model")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matcher", choices=("dift", "dino", "fused"), default="fused")
    parser.add_argument("--sd-model", help="Stable Diffusion directory or Hub id (default: tiny random)")
    parser.add_argument("--dino-model", help="DINOv2 directory or Hub id (default: tiny random)")
    parser.add_argument("--image-size", type=int, help="processing size (default: 112 tiny, the paper's otherwise)")
    parser.add_argument("--ensemble-size", type=int, help="SD noise draws (default: the matcher's)")
    parser.add_argument("--pairs", type=int, default=3, help="timed pairs after one warm-up pair")
    parser.add_argument("--input-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    uses_sd, uses_dino = args.matcher in ("dift", "fused"), args.matcher in ("dino", "fused")
    tiny = (uses_sd and args.sd_model is None) or (uses_dino and args.dino_model is None)
    with tempfile.TemporaryDirectory() as tmp:
        sd_model, dino_model = args.sd_model, args.dino_model
        if tiny:
            fixtures = _fixtures()
            if uses_sd and sd_model is None:
                sd_model = str(fixtures.make_tiny_sd(Path(tmp) / "sd"))
            if uses_dino and dino_model is None:
                dino_model = str(fixtures.make_tiny_dino(Path(tmp) / "dino"))
        image_size = args.image_size or (112 if tiny else None)
        kwargs = {} if args.ensemble_size is None or not uses_sd else {"ensemble_size": args.ensemble_size}
        if args.matcher == "fused" and tiny:
            kwargs["sd_image_size"] = image_size
        start = time.perf_counter()
        matcher = ZeroShotMatcher.from_name(
            args.matcher,
            sd_model=sd_model if uses_sd else None,
            dino_model=dino_model if uses_dino else None,
            device=args.device,
            image_size=image_size,
            **kwargs,
        )
        load_s = time.perf_counter() - start
        generator = torch.Generator().manual_seed(0)
        h, w = args.input_size
        times = []
        for i in range(args.pairs + 1):
            source = torch.rand(1, 3, h, w, generator=generator)
            target = torch.rand(1, 3, h, w, generator=generator)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            matcher.match(source, target)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - start)
    memory = (
        f"peak CUDA allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        if args.device.startswith("cuda")
        else f"peak RSS {_peak_rss_mib():.0f} MiB"
    )
    label = "tiny random models" if tiny else "given models"
    print(
        f"{args.matcher} ({label}), processing size {matcher.image_size}, input {h}x{w}, {args.device}, "
        f"{args.threads} thread(s): load {load_s:.1f} s, {statistics.median(times):.3f} s/pair "
        f"(median of {len(times)}), {memory}"
    )


if __name__ == "__main__":
    main()
