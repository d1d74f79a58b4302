"""``python infer.py``: dense flow and uncertainty for your own image pairs.

Writes, per pair, ``flow.npy`` (float32 ``(H_t, W_t, 2)``: target grid, ``target(x) ≈ source(x +
flow(x))``, pixels, at the target's original size), ``uncertainty.npy`` (float32 ``(H_t, W_t)``,
variance across hypotheses in px²), the flow in ``--flow-format``, and PNG pictures. Every file is
written atomically. A failed pair is reported and skipped; the exit status is 1 if any pair failed,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from diffmatch.io import FLOW_FORMATS, InputError, atomic_open, load_image, save_image, write_flow
from diffmatch.result import MatchResult

__all__ = ["main", "parse_args", "read_pairs_file", "write_outputs"]

MATCHERS = ("diffmatch", "dift", "dino", "fused")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="infer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="source image (the flow points into it)")
    parser.add_argument("--target", help="target image (the flow lives on its grid)")
    parser.add_argument("--pairs", help="text file with one 'source target' pair per line")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", help="Lightning .ckpt or exported weights (default: the bundled demo model)")
    parser.add_argument("--samples", type=int, default=3, help="hypotheses N (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--flow-format", default="flo", choices=[f[1:] for f in FLOW_FORMATS])
    parser.add_argument("--no-viz", action="store_true", help="skip the PNG pictures")
    parser.add_argument("--matcher", default="diffmatch", choices=MATCHERS, help="zero-shot matchers need --sd-model/--dino-model")
    parser.add_argument("--sd-model", help="Stable Diffusion folder or hub id (dift, fused)")
    parser.add_argument("--dino-model", help="DINOv2 folder or hub id (dino, fused)")
    args = parser.parse_args(argv)
    if bool(args.pairs) == bool(args.source or args.target):
        parser.error("give either --source and --target, or --pairs")
    if not args.pairs and not (args.source and args.target):
        parser.error("--source and --target go together")
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


def read_pairs_file(path: str | Path) -> list[tuple[Path, Path]]:
    """Read ``source target`` lines (``#`` comments and blank lines allowed); relative paths are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pairs file not found")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise InputError(f"{path}:{number}: expected 'source target', got {line!r}")
        pairs.append(tuple((path.parent / p) if not Path(p).is_absolute() else Path(p) for p in parts))
    if not pairs:
        raise InputError(f"{path}: no pairs listed")
    return pairs


def write_outputs(
    out: Path, result: MatchResult, source: np.ndarray, target: np.ndarray, flow_format: str, viz: bool
) -> None:
    """Write one pair's arrays and pictures into ``out``, each file atomically."""
    arrays = result.numpy(0)
    flow, uncertainty = arrays["flow"], arrays["uncertainty"]
    for name, value in (("flow.npy", flow), ("uncertainty.npy", uncertainty)):
        with atomic_open(out / name) as handle:
            np.save(handle, value.astype(np.float32))
    if flow_format == "npz":
        write_flow(out / "flow.npz", flow, uncertainty=uncertainty, samples=arrays["samples"])
    elif flow_format != "npy":
        write_flow(out / f"flow.{flow_format}", flow)
    if viz:
        from diffmatch.viz import blend_warp, flow_to_color, panel_figure, save_figure, uncertainty_figure

        save_image(out / "flow.png", flow_to_color(flow))
        save_image(out / "warp.png", blend_warp(source, target, flow))
        save_figure(out / "uncertainty.png", uncertainty_figure(uncertainty))
        save_figure(out / "panel.png", panel_figure(source, target, flow, uncertainty))


def _build_matcher(args: argparse.Namespace) -> Callable[[np.ndarray, np.ndarray, int], MatchResult]:
    if args.matcher == "diffmatch":
        from diffmatch.matcher import DiffMatcher

        matcher = DiffMatcher.from_checkpoint(args.checkpoint, device=args.device)
        limit = matcher.model.config.num_train_timesteps
        if args.steps > limit:
            raise InputError(f"--steps must be in [1, {limit}] for this model, got {args.steps}")

        def run(source: np.ndarray, target: np.ndarray, index: int) -> MatchResult:
            gen = torch.Generator(device=matcher.device).manual_seed(args.seed)
            return matcher.match(source, target, num_samples=args.samples, num_steps=args.steps, generator=gen)

        return run
    from diffmatch.inputs import resolve_device
    from diffmatch.zeroshot import ZeroShotMatcher

    device = resolve_device(args.device)
    zero = ZeroShotMatcher.from_name(args.matcher, sd_model=args.sd_model, dino_model=args.dino_model, device=device)
    return lambda source, target, index: zero.match(source, target)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        pairs = read_pairs_file(args.pairs) if args.pairs else [(Path(args.source), Path(args.target))]
        run = _build_matcher(args)
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.samples == 1 and args.matcher == "diffmatch":
        print("note: --samples 1 gives an all-zero uncertainty map (the variance needs >= 2 hypotheses)", file=sys.stderr)
    failed = 0
    for index, (src_path, tgt_path) in enumerate(tqdm(pairs, desc="pairs", unit="pair", disable=len(pairs) < 2)):
        folder = out if not args.pairs else out / f"{index:04d}_{src_path.stem}_{tgt_path.stem}"
        try:
            source, target = load_image(src_path), load_image(tgt_path)
            result = run(source, target, index)
            write_outputs(folder, result, source, target, args.flow_format, not args.no_viz)
        except (InputError, ValueError) as err:
            failed += 1
            tqdm.write(f"error: pair {index} ({src_path} -> {tgt_path}): {err}", file=sys.stderr)
            continue
        tqdm.write(f"wrote {folder}/flow.npy, uncertainty.npy{'' if args.no_viz else ', flow.png, warp.png, uncertainty.png, panel.png'}")
    if failed:
        print(f"error: {failed} of {len(pairs)} pairs failed", file=sys.stderr)
        return 1
    return 0
