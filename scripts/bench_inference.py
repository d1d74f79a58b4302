"""Inference speed and memory at 512², side by side: the default model, the paper-size model, the floors.

    python scripts/bench_inference.py                                   # CPU (and CUDA when present)
    python scripts/bench_inference.py --skip-paper --repeats 3          # without the paper-size model
    python scripts/bench_inference.py --device cuda --precision 32,bf16,autocast-bf16 --repeats 10
    python scripts/bench_inference.py --device cpu --precision 32,bf16 --paper-precision 32
    python scripts/bench_inference.py --checkpoint PATH --compare OLD.pt --image-size 512
    python scripts/bench_inference.py --json results.json               # also write the rows as JSON
    python scripts/bench_inference.py --skip-paper --pair-list 50       # adds pair-list throughput

Rows, per device and precision:

* the default model (``--checkpoint``, default the bundled one) on a 512² pair (the bundled sample
  pair, resized) with 1 and 3 hypotheses, as ``DiffMatcher.match`` runs it by default: refined, with
  the calibrated confidence (whose cues include a reverse pass), two-pass matching on (a small-motion
  pair like this one never runs the second pass), the layer search on; the same without the layer
  search; and the model's own flow, unrefined (no confidence, so no reverse pass, and no search);
* the default on a large viewpoint change, on which the second pass runs: the same pair with the
  target turned 60° (and zoomed 1.2×), 1 and 3 hypotheses, with two passes (the default) and with
  one (``two_pass=False``);
* the paper-size model: ``configs/paper.yaml``'s ``model.model`` built with random VGG-16 weights
  (``DiffMatch(..., pretrained_features=False)``: no ImageNet file is needed, and the weights do
  not change the time), 1, 2 and 3 samples × 5 DDIM steps, unrefined, no layer search, against the paper's
  112 / 123 / 140 ms on its GPU (``--skip-paper`` leaves it out: minutes on a CPU);
* the VGG-16 floor: a plain ``torchvision.models.vgg16().features`` pass over both images, the
  least any VGG-based matcher at 512² costs; every row's time is also given as a multiple of it;
* OpenCV's DIS optical flow (medium preset), the classical reference (CPU only);
* the sub-pixel refinement alone, as a 3-hypothesis match with the confidence runs it (4 flows at
  512²: the hypotheses and the reverse flow), by each solver of ``VariationalRefiner``: OpenCV's
  (CPU only) and PyTorch's (on the device; one timed call on a CPU, where it takes tens of seconds);
* with ``--pair-list N``: ``diffmatch match --pairs`` on a list of ``N`` copies of the bundled sample
  pair (its own 512x345 size, the default settings, ``--no-viz``), in one process and with
  ``--devices 2`` (CPU: two gloo processes; CUDA: one process per GPU, when there are two): pairs per
  second of matching and the wall time with start-up, as the command's closing line reports them.

``--precision`` lists the precisions of the model rows: ``32``, ``bf16``, ``16`` (CUDA), as
``DiffMatcher(precision=...)`` runs them (weights cast once; the matching in float32), and
``autocast-bf16``: the float32 model with the whole match under ``torch.autocast(bfloat16)``, how
bf16 ran before (kept to compare). ``--compile`` adds compiled rows (``DiffMatcher(compile=True)``;
the compilation is in the warm-up, not in the time).

Each measurement runs in a fresh process so that its peak memory is its own: on the CPU the peak
resident memory of the whole process (``ru_maxrss``, Python runtime and torch included), on CUDA the
GPU memory allocated by torch (``max_memory_allocated``); CUDA timings end with a synchronisation.
One warm-up call precedes the ``--repeats`` timed calls (the paper rows on a CPU: 1 timed call).
Besides wall-clock seconds, each row gives the process's CPU seconds (user + system, all threads):
on a shared machine the wall clock grows with the other jobs, the CPU time much less. The 1-minute
load average is printed with the CPU rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SIZE = 512
ROOT = Path(__file__).resolve().parents[1]
PAPER_MS = {1: 112, 2: 123, 3: 140}  # the paper's GPU timings of its model at 512², ms per pair
PRECISIONS = ("32", "bf16", "16", "autocast-bf16")
TURN = 60.0  # degrees: the large-viewpoint rows' target turn


def _images(turned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled sample pair resized to 512², a real pair: on random noise two-pass matching would
    find a large "motion" and run its second pass, which a real small-motion pair never does.
    ``turned``: the target turned by :data:`TURN` degrees about its centre (and zoomed by 1.2 so
    that no corner is empty), a large viewpoint change on which the second pass runs."""
    import torch.nn.functional as F

    from diffmatch.assets import sample_pair
    from diffmatch.geometry import homography_to_flow, warp
    from diffmatch.inputs import to_image_batch
    from diffmatch.io import load_image
    from diffmatch.two_pass import rotation_homography

    source, target = (
        F.interpolate(to_image_batch(load_image(path)), size=(SIZE, SIZE), mode="bilinear", antialias=True)
        for path in sample_pair()
    )
    if turned:
        centre = (SIZE - 1) / 2
        zoom = torch.tensor([[1 / 1.2, 0, centre * (1 - 1 / 1.2)], [0, 1 / 1.2, centre * (1 - 1 / 1.2)], [0, 0, 1]],
                            dtype=torch.float64)
        turn = rotation_homography(TURN, (SIZE, SIZE), (SIZE, SIZE)) @ zoom  # target pixels -> source pixels
        target, _ = warp(target, homography_to_flow(turn, (SIZE, SIZE)).float(), padding_mode="border")
    return source, target


def _timed(fn, repeats: int, device: str) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per call, after one warm-up call."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()  # warm-up (and, with --compile, the compilation)
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats, (time.process_time() - cpu) / repeats


def _paper_model():
    """``configs/paper.yaml``'s model with random backbone weights (same architecture, same time)."""
    import yaml

    from diffmatch.models.config import config_from_dict
    from diffmatch.models.diffmatch import DiffMatch
    settings = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())["model"]["model"]
    return DiffMatch(config_from_dict(settings), pretrained_features=False)


def measure(
    kind: str, checkpoint: str | None, samples: int, repeats: int, device: str = "cpu", precision: str = "32",
    image_size: str | None = None, refine: bool = True, compile: bool = False, layer_search: bool = True,
    turned: bool = False, two_pass: bool = True,
) -> dict:
    """One measurement in this process: ``vgg``, ``dis``, ``model``, ``paper``, ``refine-opencv`` or
    ``refine-torch``; ``turned``: on the turned pair (:func:`_images`); ``two_pass``: the model's
    second pass allowed."""
    torch.set_grad_enabled(False)
    source, target = (x.to(device) for x in _images(turned))
    autocast = precision == "autocast-bf16"
    if kind == "dis":
        import cv2

        gray = [cv2.cvtColor((x[0].permute(1, 2, 0).cpu().numpy() * 255).astype("uint8"), cv2.COLOR_RGB2GRAY)
                for x in (source, target)]
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        run = lambda: dis.calc(gray[1], gray[0], None)  # noqa: E731
    elif kind.startswith("refine-"):
        from diffmatch.refinement import VariationalRefiner

        refiner = VariationalRefiner(backend=kind.removeprefix("refine-"))
        flows = torch.randn(1, 4, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).to(device)
        run = lambda: refiner(source, target, flows)  # noqa: E731
    elif kind == "vgg":
        from torchvision.models import vgg16

        net = vgg16(weights=None).features.eval().to(device)
        run = lambda: net(torch.cat([source, target]))  # noqa: E731
    else:
        import warnings

        from diffmatch.matcher import DiffMatcher, parse_image_size

        own = "32" if autocast else precision
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the slow-bf16-CPU warning: the row shows it
            if kind == "paper":
                matcher = DiffMatcher(_paper_model(), device=device, refine=refine, precision=own, compile=compile,
                                      layer_search=layer_search)
            else:
                size = None if image_size is None else parse_image_size(image_size)
                matcher = DiffMatcher.from_checkpoint(
                    checkpoint, device=device, image_size=size, refine=refine, precision=own, compile=compile,
                    layer_search=layer_search, two_pass=two_pass,
                )
        gen = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
        steps = 5 if kind == "paper" else None  # None: the checkpoint's own sampling steps
        run = lambda: matcher.match(source, target, num_samples=samples, num_steps=steps, generator=gen())  # noqa: E731
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
        seconds, cpu_seconds = _timed(run, repeats, device)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "samples": samples, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak_mb}


def _run(kind: str, samples: int, repeats: int, device: str, precision: str, args: argparse.Namespace,
         refine: bool = True, checkpoint: str | None = None, compile: bool = False, layer_search: bool = True,
         turned: bool = False, two_pass: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, "--samples", str(samples), "--repeats", str(repeats),
           "--device", device, "--precision", precision]
    if not refine:
        cmd.append("--no-refine")
    if turned:
        cmd.append("--turned")
    if not two_pass:
        cmd.append("--one-pass")
    if not layer_search:
        cmd.append("--no-layer-search")
    if compile:
        cmd.append("--compile")
    if args.image_size is not None and kind == "model":
        cmd += ["--image-size", args.image_size]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        nan = float("nan")
        return {"kind": kind, "samples": samples, "seconds": nan, "cpu_seconds": nan, "peak_mb": nan, "error": tail}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_env() -> dict[str, str]:
    """The environment of a child process: it imports this checkout's diffmatch, whatever is installed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def pair_list_rows(count: int, device: str) -> list[tuple[str, dict]]:
    """``diffmatch match --pairs`` on ``count`` copies of the sample pair, 1 and 2 processes."""
    import re
    import tempfile

    from diffmatch.assets import sample_pair

    rows = []
    processes = (1, 2) if device == "cpu" else tuple(dict.fromkeys((1, min(2, torch.cuda.device_count()))))
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.txt"
        pairs.write_text("".join("\t".join(str(p) for p in sample_pair()) + "\n" for _ in range(count)))
        for n in processes:
            cmd = [sys.executable, "-m", "diffmatch.cli", "match", "--pairs", str(pairs), "--out", str(Path(tmp) / f"out{n}"),
                   "--overwrite", "--no-viz", "--devices", str(n), "--accelerator", "cpu" if device == "cpu" else "gpu"]
            start = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=_child_env())
            wall = time.perf_counter() - start
            done = re.search(r"([0-9.]+) pairs/s", out.stdout)
            label = f"pair list of {count}, `--devices {n}`"
            if out.returncode != 0 or done is None:
                tail = ((out.stderr or out.stdout).strip().splitlines() or ["no output"])[-1]
                rows.append((label, {"error": tail}))
            else:
                rows.append((label, {"pairs_per_second": float(done.group(1)), "wall_seconds": wall}))
    return rows


def _rows(args: argparse.Namespace, device: str) -> list[tuple[str, dict]]:
    """The planned measurements on ``device``: (label, keyword arguments of :func:`_run`)."""
    rows: list[tuple[str, dict]] = []
    name = Path(args.checkpoint).name if args.checkpoint else "default model"
    size = f" at {args.image_size}" if args.image_size else ""
    compiles = (False, True) if args.compile else (False,)
    for precision in args.precision:
        if precision == "16" and device != "cuda":
            continue
        for compiled in compiles:
            tag = f"{precision}{', compiled' if compiled else ''}"
            # The default (refined, the confidence, the layer search), without the search, and the
            # model's own flow (unrefined: no confidence, no search).
            for refine, layers, what in ((True, True, "refined, with confidence, layer search"),
                                         (True, False, "refined, with confidence, no layer search"),
                                         (False, False, "unrefined")):
                for n in (1, 3):
                    rows.append((f"{name}{size}, {n} hyp., {what} [{tag}]",
                                 dict(kind="model", samples=n, refine=refine, checkpoint=args.checkpoint,
                                      precision=precision, compile=compiled, layer_search=layers)))
            # A large viewpoint change, on which the second pass runs: with it (the default) and without.
            for passes, what in ((True, "two passes (the default)"), (False, "one pass")):
                for n in (1, 3):
                    rows.append((f"{name}{size}, target turned {TURN:.0f}°, {n} hyp., {what} [{tag}]",
                                 dict(kind="model", samples=n, checkpoint=args.checkpoint, precision=precision,
                                      compile=compiled, turned=True, two_pass=passes)))
            if args.compare:
                for n in (1, 3):
                    rows.append((f"{Path(args.compare).name}, {n} hyp., refined [{tag}]",
                                 dict(kind="model", samples=n, checkpoint=args.compare, precision=precision,
                                      compile=compiled)))
            if not args.skip_paper and precision in args.paper_precision:
                for n in (1, 2, 3):
                    rows.append((f"paper config, {n} sample(s) x 5 steps, unrefined (paper: {PAPER_MS[n]} ms) [{tag}]",
                                 dict(kind="paper", samples=n, refine=False, precision=precision, compile=compiled,
                                      layer_search=False)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    parser.add_argument("--skip-paper", action="store_true", help="leave out the paper-size model (minutes on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row after one warm-up (default 3)")
    parser.add_argument("--paper-repeats", type=int, help="timed calls of the paper rows (default: 1 on CPU, --repeats on CUDA)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: the CPU, and CUDA too when present (default)")
    parser.add_argument("--precision", default="32",
                        help=f"comma list of the model rows' precisions, of {', '.join(PRECISIONS)} (default 32)")
    parser.add_argument("--paper-precision", help="which of --precision's precisions the paper rows run at (default: all)")
    parser.add_argument("--compile", action="store_true", help="also time the model rows with compile=True")
    parser.add_argument("--compare", metavar="CKPT", help="also time this checkpoint (e.g. a retired default)")
    parser.add_argument("--image-size", help="processing size of the checkpoint rows (an integer or auto; default: its own)")
    parser.add_argument("--json", metavar="PATH", help="also write every row as JSON")
    parser.add_argument("--pair-list", type=int, default=0, metavar="N",
                        help="also time `diffmatch match --pairs` on N pairs, 1 and 2 processes (default 0: not)")
    parser.add_argument("--no-refine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-layer-search", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--turned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-pass", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", choices=("vgg", "model", "paper", "dis", "refine-opencv", "refine-torch"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.checkpoint, args.samples, args.repeats, args.device, args.precision,
                                 args.image_size, not args.no_refine, args.compile, not args.no_layer_search,
                                 args.turned, not args.one_pass)))
        return
    for option in ("precision", "paper_precision"):
        text = getattr(args, option) if getattr(args, option) is not None else args.precision
        names = text if isinstance(text, list) else [p.strip() for p in text.split(",") if p.strip()]
        unknown = [p for p in names if p not in PRECISIONS]
        if unknown or not names:
            flag = "--" + option.replace("_", "-")
            parser.error(f"{flag}: expected a comma list of {', '.join(PRECISIONS)}, got {unknown or 'nothing'}")
        setattr(args, option, names)
    if args.repeats < 1 or (args.paper_repeats is not None and args.paper_repeats < 1):
        parser.error("--repeats and --paper-repeats must be >= 1")
    if args.pair_list < 0:
        parser.error("--pair-list must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, input {SIZE}x{SIZE}, seconds per pair after one warm-up call")
    records = []
    for device in devices:
        where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
        load = f", load average {os.getloadavg()[0]:.1f} at start" if device == "cpu" else ""
        print(f"\n{where}{load}\n")
        print("| row | s/pair | CPU s/pair | peak memory (MB) | x VGG floor |\n|---|---|---|---|---|")
        floor = _run("vgg", 1, args.repeats, device, "32", args)
        table = [("VGG-16 features, both images (floor)", floor)]
        print(f"| {table[0][0]} | {floor['seconds']:.3f} | {floor['cpu_seconds']:.2f} | {floor['peak_mb']:.0f} | 1.00 |",
              flush=True)
        planned = _rows(args, device)
        if device == "cpu":
            planned.append(("OpenCV DIS (medium preset)", dict(kind="dis", samples=1, refine=False, precision="32")))
            planned.append(("refinement alone, 4 flows, OpenCV", dict(kind="refine-opencv", samples=4, precision="32")))
        planned.append(("refinement alone, 4 flows, PyTorch", dict(kind="refine-torch", samples=4, precision="32")))
        for label, row in planned:
            repeats = args.repeats
            if row["kind"] == "paper" or (row["kind"] == "refine-torch" and device == "cpu"):
                repeats = args.paper_repeats or (args.repeats if device == "cuda" else 1)
            result = _run(row.pop("kind"), row.pop("samples"), repeats, device, row.pop("precision"), args, **row)
            seconds = result["seconds"]
            shown = f"failed: {result['error']}" if "error" in result else f"{seconds:.3f}"
            print(f"| {label} | {shown} | {result['cpu_seconds']:.2f} | {result['peak_mb']:.0f} | "
                  f"{seconds / floor['seconds']:.2f} |", flush=True)
            table.append((label, result))
        if args.pair_list:
            print("\n| pair list (the sample pair, 512x345) | pairs/s (matching) | wall with start-up (s) |\n|---|---|---|")
            for label, result in pair_list_rows(args.pair_list, device):
                if "error" in result:
                    print(f"| {label} | failed: {result['error']} | |", flush=True)
                else:
                    print(f"| {label} | {result['pairs_per_second']:.2f} | {result['wall_seconds']:.1f} |", flush=True)
                table.append((label, result))
        if device == "cpu":
            print(f"\n(load average {os.getloadavg()[0]:.1f} at the end)")
        records += [{"device": where, "row": label, **result} for label, result in table]
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
