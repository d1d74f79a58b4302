"""Time and peak memory per 512² pair: stage 1 alone against the cascade (stage 1 + flow upsampler).

    python scripts/bench_cascade.py --checkpoint PATH                 # a cascade .ckpt or exported file
    python scripts/bench_cascade.py --config configs/upsampler_xfeat.yaml   # random weights, that config's model
    python scripts/bench_cascade.py --config configs/upsampler_paper.yaml --device cuda

With ``--config``, the ``model.model`` and ``model.upsampler`` blocks of a training config build a randomly
initialised cascade (backbone weights forced to ``random``). "Stage 1" is the same model's
:meth:`DiffMatch.forward` (no upsampling; flow bilinearly resized to 512²). Peak memory is, on CUDA,
``torch.cuda.max_memory_allocated`` during the call; on CPU, the peak resident set size sampled every
2 ms in a thread (``/proc/self/statm``, Linux) during the first call minus the resident size before
it; each of the two measurements runs in a fresh process so that neither sees the other's freed memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import yaml

from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import load_checkpoint

SIZE = 512
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


class _PeakRSS:
    """Samples the resident set size in a thread while the ``with`` block runs."""

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def build(args: argparse.Namespace) -> DiffMatch:
    """The cascade of ``--checkpoint``, or a random one from ``--config``."""
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
        if model.upsampler is None:
            raise SystemExit(f"error: {args.checkpoint} has no upsampler (a stage-1 checkpoint)")
        return model
    config = yaml.safe_load(Path(args.config).read_text())["model"]
    if not config.get("upsampler"):
        raise SystemExit(f"error: {args.config} has no model.upsampler block")
    stage1 = dict(config["model"])
    stage1["feature_kwargs"] = {**stage1.get("feature_kwargs", {}), "weights": "random"}
    model = DiffMatch(stage1, config["upsampler"])
    model.init_from_stage1()
    return model.eval()


def measure(name: str, run, device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds per call (after the first, warm-up call) and peak memory in MB of the first call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        with _PeakRSS() as rss:
            run()
        peak = (rss.peak - rss.base) / 2**20
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"name": name, "seconds": (time.perf_counter() - start) / repeats, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="cascade Lightning .ckpt or exported weights")
    source.add_argument("--config", help="training config with model.model and model.upsampler (random weights)")
    parser.add_argument("--samples", type=int, default=3, help="hypotheses N (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps of each stage (default 5)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--only", choices=("stage1", "cascade"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only is None:  # one fresh process per measurement
        for only in ("stage1", "cascade"):
            subprocess.run([sys.executable, *sys.argv, "--only", only], check=True)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    model = build(args).to(device)
    g = torch.Generator().manual_seed(0)
    src, tgt = (torch.rand(1, 3, SIZE, SIZE, generator=g).to(device) for _ in range(2))

    def run(forward):
        return lambda: forward(model, src, tgt, args.samples, args.steps, 0.0, torch.Generator(device=device).manual_seed(0))

    cfg, up = model.config, model.upsampler.config
    if args.only == "stage1":
        print(f"input {SIZE}², N={args.samples}, {args.steps} DDIM steps, device {device}, threads {torch.get_num_threads()}")
        print(f"stage 1: image {cfg.image_size}², flow {cfg.cost_size}²; stage 2: flow {up.size}², R={up.radius}")
        row = measure("stage 1", run(DiffMatch.forward), device, args.repeats)
    else:
        row = measure("cascade", run(DiffMatch.forward), device, args.repeats)
    print(f"{row['name']:>8}: {row['seconds']:.3f} s/pair, peak memory +{row['peak_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
