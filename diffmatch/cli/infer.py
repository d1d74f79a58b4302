"""``python infer.py``: dense flow and uncertainty for your own image pairs.

Writes, per pair, ``flow.npy`` (float32 ``(H_t, W_t, 2)``: target grid, ``target(x) ≈ source(x +
flow(x))``, pixels, at the target's original size), ``uncertainty.npy`` (float32 ``(H_t, W_t)``,
variance across hypotheses in px²), the flow in ``--flow-format``, and PNG pictures. DiffMatch's
hypotheses are refined to sub-pixel precision at the target's full resolution unless
``--no-refine`` (:class:`~diffmatch.refinement.VariationalRefiner`). A calibrated
checkpoint (``python -m diffmatch.calibrate``) adds ``confidence.npy`` (float32 ``(H_t, W_t)``, the
probability that each match is within τ px, τ = 3 unless calibrated otherwise) and
``confidence.png``; ``--min-confidence P`` then marks matches below ``P`` invalid in ``flow.npy``
and the flow file (NaN in ``.npy``, ``.npz`` and ``.flo``; valid bit 0 in KITTI ``.png``, ``valid``
in ``.npz``). Every file is written atomically. A failed pair is reported and skipped; the exit status is 1 if any pair failed,
2 for bad arguments.

With ``--pairs`` each pair's folder appears whole, so a re-run skips the pairs whose folders are
complete (``--overwrite`` redoes them), and ``--devices N`` splits the list over N processes
(:mod:`diffmatch.cli.pair_list`).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from diffmatch.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    OneLineArgumentParser,
    check_out_folder,
    describe_os_error,
    one_line_errors,
    print_error,
    program,
    remove_empty_folders,
)
from diffmatch.cli.pair_progress import PairTotals, pair_folder, pairs_to_do, summary_line
from diffmatch.errors import InputError
from diffmatch.io import FLOW_FORMATS, atomic_folder, atomic_open, load_image, save_image, write_flow
from diffmatch.threads import configure_threads

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from diffmatch.result import MatchResult

# A matcher: (source, target, index in the list) -> result.
Matcher = Callable[[np.ndarray, np.ndarray, int], "MatchResult"]

# torch, the model and matplotlib are imported where they are used: `--help`, bad arguments and an
# unwritable --out answer in a fraction of a second instead of the ~10 s those imports take.

__all__ = [
    "LARGE_IMAGE_MP",
    "check_out_folder",
    "main",
    "match_pair",
    "output_names",
    "parse_args",
    "read_pairs_file",
    "remove_empty_folders",
    "split_pairs_line",
    "write_outputs",
]

MATCHERS = ("diffmatch", "dift", "dino", "fused")
# Above this many megapixels (source or target) a run warns: memory and output grow with the pixels
# (README, "Inference on your own images": about 1.1 GB plus 0.38 GB of RAM (0.14 GB with --no-refine) and
# 20 MB of output per megapixel).
LARGE_IMAGE_MP = 12.0
# Write errors that end the run: no later pair could be written either.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
# --device and Lightning's --accelerator name the same choice in two vocabularies.
_ACCELERATOR_OF = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}
_DEVICE_OF = {accelerator: device for device, accelerator in _ACCELERATOR_OF.items()}


def _image_size(text: str) -> int | str:
    from diffmatch.matcher import parse_image_size  # torch loads only once a pair is matched

    try:
        return parse_image_size(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(prog=program("infer.py"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="source image (the flow points into it)")
    parser.add_argument("--target", help="target image (the flow lives on its grid)")
    parser.add_argument("--pairs", help="text file with one 'source target' pair per line")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", help="Lightning .ckpt or exported weights (default: the bundled model, diffmatch/assets/diffmatch_xfeat_stage2.pt)")
    parser.add_argument("--samples", type=int, default=3, help="hypotheses N (default 3)")
    parser.add_argument(
        "--steps", type=int,
        help="DDIM steps K, 1..T where T is the model's num_train_timesteps (5 for the bundled model); "
        "default: the checkpoint's own, its sampling_steps or else T",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the model runs (default auto: CUDA when available)")
    parser.add_argument("--flow-format", default="flo", choices=[f[1:] for f in FLOW_FORMATS])
    parser.add_argument("--no-viz", action="store_true", help="skip the PNG pictures")
    parser.add_argument(
        "--min-confidence", type=float, metavar="P",
        help="mark matches with a calibrated confidence below P (0..1) invalid in the flow files "
        "(NaN; KITTI png: valid bit 0); needs a calibrated checkpoint",
    )
    parser.add_argument(
        "--max-size", type=int, metavar="PX",
        help="match downscaled copies whose longer side is at most PX, then upsample the flow to the "
        "target's full size (for large images: memory and time follow the matched size)",
    )
    parser.add_argument(
        "--image-size", type=_image_size, metavar="S",
        help="DiffMatch's processing size: a multiple of 32 for the bundled model, or 'auto' (the larger "
        "side, 384 to 640; finer in pixels on large images, see the README's 'Processing size'); "
        "default: the checkpoint's own (384 for the bundled model)",
    )
    parser.add_argument(
        "--no-refine", action="store_true",
        help="skip the sub-pixel refinement of DiffMatch's flow at full resolution (faster, coarser; "
        "README, 'Sub-pixel refinement')",
    )
    passes = parser.add_mutually_exclusive_group()
    passes.add_argument(
        "--one-pass", action="store_true",
        help="match in one pass only (default: two passes where the view changes a lot: the source warped by "
        "the first pass's homography is matched again; README, 'Two-pass matching')",
    )
    passes.add_argument("--two-pass", action="store_true", help="the default, two-pass matching (kept for old scripts)")
    layers = parser.add_mutually_exclusive_group()
    layers.add_argument(
        "--no-layer-search", action="store_true",
        help="leave out the layer search (default: each pixel takes a plane that the model's global cost sees "
        "where that plane matches it clearly better and the window's texture pins it down: better on 3D "
        "scenes with parallax and wide baselines, about even on strongly corrupted images, about 0.7 s more per "
        "512² pair on 2 CPU cores; README, 'Layer search')",
    )
    layers.add_argument("--layer-search", action="store_true", help="the default, the layer search (kept for old scripts)")
    parser.add_argument(
        "--rotations", type=_rotations, default=None, metavar="ANGLES",
        help="in-plane rotations in degrees (comma list, e.g. 45,-45,90,-90,180; 'none' for none) tried where "
        "the first pass finds little it trusts (default 45,-45; README, 'Two-pass matching')",
    )
    parser.add_argument(
        "--precision", default="32", choices=("32", "bf16", "16"),
        help="dtype of DiffMatch's networks: 32 (default), bf16 (CUDA, or a CPU with native bfloat16) or 16 "
        "(CUDA only); the cost volume and flows stay float32 (docs/results.md, 'Speed and memory')",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="with --pairs: redo the pairs whose folders are already complete (default: skip them, so a re-run resumes)",
    )
    parser.add_argument(
        "--devices", type=int, metavar="N",
        help="split a --pairs list over N processes, each loading the model once (Lightning DDP: gloo on CPU, "
        "NCCL on GPUs); default 1: this process",
    )
    parser.add_argument(
        "--accelerator", choices=("auto", "cpu", "gpu"),
        help="what the --devices processes run on (default: as --device says; auto: GPUs when CUDA is available)",
    )
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
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        parser.error(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    if args.max_size is not None and args.max_size < 16:
        parser.error(f"--max-size must be >= 16 px, got {args.max_size}")
    if args.devices is not None and args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")
    if args.devices is not None and not args.pairs:
        parser.error("--devices splits a --pairs list over processes; give --pairs FILE")
    if args.overwrite and not args.pairs:
        parser.error("--overwrite applies to --pairs (a single pair's files always replace those in --out)")
    if args.device and args.accelerator and _ACCELERATOR_OF[args.device] != args.accelerator:
        parser.error(f"--device {args.device} and --accelerator {args.accelerator} disagree; give one of them")
    args.devices = args.devices or 1
    args.device = args.device or _DEVICE_OF[args.accelerator or "auto"]
    args.accelerator = args.accelerator or _ACCELERATOR_OF[args.device]
    return args


def split_pairs_line(line: str) -> list[str]:
    """The fields of one pairs-file line.

    A line with a tab is split at tabs, each field taken literally (spaces, quotes, commas and ``#``
    included). Otherwise fields are separated by spaces or commas, shell-style: ``"..."`` or
    ``'...'`` keep spaces, commas and ``#`` inside a path, ``#`` at the start of a field begins a
    comment, and backslashes are literal (Windows paths).

    Raises:
        InputError: an unclosed quote.
    """
    if "\t" in line:
        fields = []
        for field in (f.strip() for f in line.split("\t")):
            if field.startswith("#"):
                break
            if field:
                fields.append(field)
        return fields
    fields, current, quote, started = [], [], None, False
    for char in line:
        if quote is not None:
            if char == quote:
                quote = None
            else:
                current.append(char)
        elif char in "\"'":
            quote, started = char, True
        elif char.isspace() or char == ",":
            if started:
                fields.append("".join(current))
                current, started = [], False
        elif char == "#" and not started:
            break
        else:
            current.append(char)
            started = True
    if quote is not None:
        raise InputError(f"unclosed {quote} quote")
    if started:
        fields.append("".join(current))
    return fields


def read_pairs_file(path: str | Path) -> list[tuple[Path, Path]]:
    """Read ``source target`` lines (see :func:`split_pairs_line`; blank lines and ``#`` comments allowed).

    Relative paths are relative to the pairs file's folder, not to the working directory.

    Raises:
        InputError: a missing or empty file, or a line without exactly two paths (names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pairs file not found")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            parts = split_pairs_line(line)
        except InputError as err:
            raise InputError(f"{path}:{number}: {err} in {line.strip()!r}") from None
        if not parts:
            continue
        if len(parts) != 2:
            raise InputError(
                f"{path}:{number}: expected 'source target', got {len(parts)} path(s) in {line.strip()!r} "
                "(quote paths with spaces, commas or '#', or separate the two with a tab)"
            )
        pairs.append(tuple((path.parent / p) if not Path(p).is_absolute() else Path(p) for p in parts))
    if not pairs:
        raise InputError(f"{path}: no pairs listed")
    return pairs


def output_names(flow_format: str, viz: bool, confidence: bool) -> list[str]:
    """The files :func:`write_outputs` writes for these options, in its order.

    Args:
        flow_format: ``--flow-format`` (``npy``, ``flo``, ``png`` or ``npz``).
        viz: the PNG pictures too.
        confidence: the result has a calibrated confidence.
    """
    names = ["flow.npy", "uncertainty.npy"] + (["confidence.npy"] if confidence else [])
    if flow_format != "npy":
        names.append(f"flow.{flow_format}")
    if viz:
        # With --flow-format png the KITTI flow file is flow.png: the colour picture steps aside.
        names += ["flow_color.png" if flow_format == "png" else "flow.png", "warp.png", "uncertainty.png", "panel.png"]
        names += ["confidence.png"] if confidence else []
    return names


def write_outputs(
    out: Path,
    result: MatchResult,
    source: np.ndarray,
    target: np.ndarray,
    flow_format: str,
    viz: bool,
    min_confidence: float | None = None,
) -> list[str]:
    """Write one pair's arrays and pictures into ``out``, each file atomically.

    ``flow.png``, ``warp.png`` and ``uncertainty.png`` are array operations saved with OpenCV;
    matplotlib draws only ``panel.png``, the composite with titles. A result with ``confidence``
    adds ``confidence.npy`` and ``confidence.png`` (inferno, black 0 to yellow 1). With
    ``min_confidence``, pixels below it are invalid in ``flow.npy`` and the flow file: NaN
    (``.npy``, ``.npz``, ``.flo``), KITTI ``.png`` valid bit 0, and ``valid`` in ``.npz``; the
    pictures show the whole flow.

    Returns:
        The names of the files written, in order (:func:`output_names`).

    Raises:
        InputError: ``min_confidence`` for a result without confidence.
    """
    arrays = result.numpy(0)
    flow, uncertainty = arrays["flow"], arrays["uncertainty"]
    confidence = arrays.get("confidence")
    valid = None
    if min_confidence is not None:
        if confidence is None:
            raise InputError("--min-confidence needs a calibrated checkpoint (python -m diffmatch.calibrate)")
        valid = confidence >= min_confidence
    masked = flow if valid is None else np.where(valid[..., None], flow, np.nan).astype(np.float32)
    saved = [("flow.npy", masked), ("uncertainty.npy", uncertainty)]
    if confidence is not None:
        saved.append(("confidence.npy", confidence))
    for name, value in saved:
        with atomic_open(out / name) as handle:
            np.save(handle, value.astype(np.float32))
    if flow_format == "npz":
        write_flow(out / "flow.npz", masked, valid=valid, uncertainty=uncertainty, samples=arrays["samples"])
    elif flow_format != "npy":
        write_flow(out / f"flow.{flow_format}", masked, valid=valid)
    if viz:
        from diffmatch.viz import blend_warp, flow_to_color, panel_figure, save_figure, uncertainty_to_color

        # With --flow-format png the KITTI flow file is flow.png: the colour picture steps aside.
        picture = "flow_color.png" if flow_format == "png" else "flow.png"
        save_image(out / picture, flow_to_color(flow))
        save_image(out / "warp.png", blend_warp(source, target, flow))
        save_image(out / "uncertainty.png", uncertainty_to_color(uncertainty))
        save_figure(out / "panel.png", panel_figure(source, target, flow, uncertainty))
        if confidence is not None:
            save_image(out / "confidence.png", uncertainty_to_color(confidence, vmax=1.0, legend=False))
    return output_names(flow_format, viz, confidence is not None)


def _rotations(text: str) -> tuple[float, ...]:
    """``--rotations``: a comma list of finite angles in degrees, or ``none``."""
    if text.strip().lower() == "none":
        return ()
    try:
        angles = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        angles = ()
    if not angles or not all(math.isfinite(a) for a in angles):
        raise argparse.ArgumentTypeError(f"expected a comma list of angles in degrees or 'none', got {text!r}")
    return angles


def _build_matcher(args: argparse.Namespace, device: str | torch.device | None = None) -> tuple[Matcher, bool]:
    """The matcher ``--matcher`` names, loaded once, and whether its results have a calibrated confidence.

    ``device``: where it runs (``None``: ``--device``; a ``--devices`` process passes its own).
    """
    device = args.device if device is None else device
    if args.matcher == "diffmatch":
        from diffmatch.matcher import DiffMatcher
        from diffmatch.two_pass import TwoPassConfig

        if args.one_pass and args.rotations is not None:
            raise InputError("--rotations applies to two-pass matching, not --one-pass")
        two_pass = False if args.one_pass else TwoPassConfig() if args.rotations is None else TwoPassConfig(rotations=args.rotations)
        matcher = DiffMatcher.from_checkpoint(
            args.checkpoint,
            device=device,
            image_size=args.image_size,
            refine=False if args.no_refine else None,
            two_pass=two_pass,
            precision=args.precision,
            layer_search=not args.no_layer_search,
        )
        reason = matcher.confidence_unavailable()
        if args.min_confidence is not None and reason is not None:
            raise InputError(f"--min-confidence: {args.checkpoint or 'the bundled checkpoint'}: {reason}")
        limit = matcher.model.config.num_train_timesteps
        if args.steps is not None and args.steps > limit:
            raise InputError(f"--steps must be in [1, {limit}] for this model, got {args.steps}")

        def run(source: np.ndarray, target: np.ndarray, index: int) -> MatchResult:
            import torch

            # A fresh generator per pair: a pair's result depends on --seed alone, not on which pairs
            # came before it in this process (nor on how --devices splits the list).
            gen = torch.Generator(device=matcher.device).manual_seed(args.seed)
            return matcher.match(
                source, target, num_samples=args.samples, num_steps=args.steps, generator=gen, max_size=args.max_size
            )

        return run, reason is None
    if args.min_confidence is not None:
        raise InputError(f"--min-confidence needs --matcher diffmatch with a calibrated checkpoint, not {args.matcher}")
    if args.image_size is not None:
        raise InputError(f"--image-size applies to --matcher diffmatch, not {args.matcher}")
    flags = [flag for flag, given in (("--no-refine", args.no_refine), ("--one-pass", args.one_pass),
                                      ("--two-pass", args.two_pass), ("--rotations", args.rotations is not None),
                                      ("--layer-search", args.layer_search),
                                      ("--no-layer-search", args.no_layer_search)) if given]
    if flags:
        flag = flags[0]
        raise InputError(f"{flag} applies to --matcher diffmatch, not {args.matcher}")
    if args.precision != "32":
        raise InputError(f"--precision applies to --matcher diffmatch, not {args.matcher}")
    from diffmatch.inputs import resolve_device
    from diffmatch.models.zeroshot import ZeroShotMatcher

    zero = ZeroShotMatcher.from_name(
        args.matcher, sd_model=args.sd_model, dino_model=args.dino_model, device=resolve_device(device)
    )
    return (lambda source, target, index: zero.match(source, target, max_size=args.max_size)), False


def _large_image_warning(path: Path, image: np.ndarray) -> str | None:
    h, w = image.shape[:2]
    megapixels = h * w / 1e6
    if megapixels <= LARGE_IMAGE_MP:
        return None
    return (
        f"warning: {path} is {w}x{h} ({megapixels:.0f} MP); full-size matching needs about "
        f"{1.1 + 0.38 * megapixels:.1f} GB of memory ({1.1 + 0.14 * megapixels:.1f} GB with --no-refine) and writes "
        f"about {20 * megapixels:.0f} MB; --max-size 2048 matches a downscaled copy"
    )


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Run ``infer.py``; returns the exit status.

    0: every pair written (or already complete); 1: a pair failed (the others are written) or the
    disk is full (the run stops); 2: bad arguments, checked before the model loads; 130: interrupted
    (Ctrl-C). Each pair's files appear together or not at all (:func:`~diffmatch.io.atomic_folder`).
    """
    started = time.perf_counter()
    args = parse_args(argv)
    out = Path(args.out)
    created: list[Path] = []
    processes = None
    try:
        created = check_out_folder(out)  # before the model loads: a bad --out costs nothing
        pairs = read_pairs_file(args.pairs) if args.pairs else [(Path(args.source), Path(args.target))]
        if args.devices > 1:
            from diffmatch.cli.pair_list import PairListProcesses  # Lightning loads only for --devices N

            # the command line's own arguments (also under `diffmatch match`): Lightning re-runs it
            from_command_line = argv is None or list(argv) == sys.argv[len(sys.argv) - len(argv) :]
            processes = PairListProcesses(args.accelerator, args.devices, from_command_line)
        # torch, OpenCV and the refinement within one budget (diffmatch.threads), shared by the processes
        configure_threads(None if processes is None else processes.thread_share())
        run, confidence = _build_matcher(args, None if processes is None else processes.device)  # once, for every pair
    except (InputError, ValueError) as err:
        remove_empty_folders(created)
        print_error(err)
        return EXIT_USAGE
    except BaseException:
        remove_empty_folders(created)
        raise
    todo = [0]
    if args.pairs:
        todo = pairs_to_do(out, pairs, output_names(args.flow_format, not args.no_viz, confidence), args.overwrite)
    if processes is None or processes.is_first:
        _notes(args, out, len(pairs), len(todo))
    try:
        if processes is None:
            totals = _match_pairs(args, out, pairs, todo, run)
        else:
            totals = processes.predict(todo, lambda index: match_pair(args, out, index, pairs[index], run))
    except BaseException:  # Ctrl-C, a full disk: leave no empty folder behind
        remove_empty_folders(created)
        raise
    if totals is None:  # another of the --devices processes: the first one reports
        return 0
    if args.pairs:
        count = 1 if processes is None else args.devices
        print(summary_line(totals, len(pairs), count, time.perf_counter() - started), flush=True)
    if totals.failed and len(pairs) > 1:
        print_error(f"{totals.failed} of {len(todo)} pairs failed")
    return EXIT_FAILED if totals.failed or totals.not_tried else 0


def _notes(args: argparse.Namespace, out: Path, pairs: int, todo: int) -> None:
    """What the user should know before the pairs are matched, on stderr."""
    if args.samples == 1 and args.matcher == "diffmatch":
        print("note: --samples 1 gives an all-zero uncertainty map (the variance needs >= 2 hypotheses)", file=sys.stderr)
    if args.pairs and todo < pairs:
        print(f"note: {pairs - todo} of {pairs} pairs are already complete in {out} and are skipped "
              "(--overwrite redoes them)", file=sys.stderr, flush=True)


def _match_pairs(
    args: argparse.Namespace, out: Path, pairs: list[tuple[Path, Path]], todo: list[int], run: Matcher
) -> PairTotals:
    """Match and write the pairs ``todo`` in this process.

    Raises:
        OSError: the disk is full or read-only: no later pair could be written either (the pairs
            written so far are complete).
    """
    from tqdm import tqdm

    totals = PairTotals()
    start = time.perf_counter()
    for index in tqdm(todo, desc="pairs", unit="pair", disable=len(todo) < 2):
        try:
            written = match_pair(args, out, index, pairs[index], run)
        except OSError as err:  # the disk is full or read-only
            done = f"; pairs 0..{index - 1} are written" if index else ""
            raise OSError(err.errno, f"{err.strerror} (pair {index}{done})", err.filename) from None
        totals.written += written
        totals.failed += not written
    totals.seconds = time.perf_counter() - start
    return totals


def match_pair(args: argparse.Namespace, out: Path, index: int, pair: tuple[Path, Path], run: Matcher) -> bool:
    """Match pair ``index`` and write its files; returns whether they were written.

    With ``--pairs`` the files go to the pair's folder (:func:`pair_folder`), which appears whole;
    a single pair's files join ``--out`` together. A written pair is one ``wrote`` line on stdout, a
    failed one an ``error:`` line on stderr (an unreadable image, a bad option for this pair, a file
    that cannot be written).

    Raises:
        OSError: the disk is full or read-only: no later pair could be written either.
    """
    src_path, tgt_path = pair
    folder = pair_folder(out, index, pair) if args.pairs else out
    try:
        source, target = load_image(src_path), load_image(tgt_path)
        if args.max_size is None:
            for path, image in ((src_path, source), (tgt_path, target)):
                warning = _large_image_warning(path, image)
                if warning:
                    _say(warning, sys.stderr)
        result = run(source, target, index)  # at most --max-size px, brought back to the full-size target
        # --pairs: the pair's folder appears whole; one pair: its files join --out together.
        with atomic_folder(folder, merge=not args.pairs) as staging:
            written = write_outputs(staging, result, source, target, args.flow_format, not args.no_viz, args.min_confidence)
    except (InputError, ValueError) as err:
        _say(f"error: pair {index} ({src_path} -> {tgt_path}): {err}", sys.stderr)
        return False
    except OSError as err:
        if err.errno in _DISK_ERRORS:
            raise
        _say(f"error: pair {index} ({src_path} -> {tgt_path}): {describe_os_error(err)}", sys.stderr)
        return False
    _say(f"wrote {folder}{os.sep}{', '.join(written)}", sys.stdout)
    return True


def _say(line: str, stream: TextIO) -> None:
    """One whole line, around the progress bar, flushed: --devices processes share the terminal."""
    from tqdm import tqdm

    tqdm.write(line, file=stream)
    stream.flush()
