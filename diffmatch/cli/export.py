"""``python -m diffmatch.export CKPT OUT [--half | --float32] [--no-ema]``: a Lightning checkpoint to a small inference file.

``--interpolate OTHER --alpha A`` writes the weights ``(1 - A) * CKPT + A * OTHER`` instead, two
trainings of one model mixed in weight space (:func:`diffmatch.models.weights.interpolate_weights`;
the result has no confidence calibration: refit it with ``python -m diffmatch.calibrate``).

The weights keep the precision they are stored in (an exported float16 file stays float16) unless
``--half`` or ``--float32`` says otherwise. ``OUT`` is checked before anything is read: a folder or
an unwritable place is refused in one line (exit status 2).

``--stage1 FILE`` writes a cascade as a *stage-2 file*: only stage 2's weights, plus a reference
to ``FILE``, the exported stage-1 file it was trained on, which must stay where the reference finds
it (:func:`diffmatch.models.weights.save_weights`; the bundled default, a cascade, ships this way). A stage-2
file exported without ``--stage1`` becomes one whole cascade file.

``--upsample each|mean|once`` and ``--reverse-pass cascade|stage1`` change how a cascade's stage 2
runs at inference (:class:`diffmatch.models.config.UpsamplerConfig`: ``refine`` and
``reverse_pass``); the bundled default runs ``once`` and ``stage1``. A confidence calibration fitted
under other settings is left out: refit it with ``python -m diffmatch.calibrate``.

``--onnx`` writes an ONNX graph of the stage-1 model instead (``OUT.onnx``; :mod:`diffmatch.models.onnx`):
the DDIM steps unrolled (``--steps``, default the checkpoint's), the start noise an input, the images
fixed at the processing size (``--image-size``, default the checkpoint's), opset ``--opset`` (>= 17).
"""

from __future__ import annotations

import sys

from diffmatch.cli.common import (
    OneLineArgumentParser,
    check_out_file,
    one_line_errors,
    program,
    remove_empty_folders,
)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Export; returns the exit status (0 written, 1 a write failed, 2 bad input, 130 interrupted)."""
    parser = OneLineArgumentParser(prog=program("python -m diffmatch.export"), description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Lightning .ckpt (or an exported file)")
    parser.add_argument("out", help="destination .pt file (.onnx with --onnx)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--half", dest="half", action="store_const", const=True,
        help="store weights as float16 (half the size; default: the precision they are stored in)",
    )
    precision.add_argument(
        "--float32", dest="half", action="store_const", const=False, help="store weights as float32",
    )
    parser.add_argument(
        "--no-ema",
        dest="ema",
        action="store_false",
        help="export the trained denoiser, not its moving average (Lightning checkpoints of runs with ema_decay)",
    )
    parser.add_argument(
        "--interpolate", metavar="OTHER", help="mix CKPT's weights with OTHER's (same model settings): (1 - alpha) CKPT + alpha OTHER"
    )
    parser.add_argument("--alpha", type=float, help="--interpolate: OTHER's weight, in [0, 1]")
    parser.add_argument(
        "--stage1", metavar="FILE", help="write a cascade's stage 2 only, referring to FILE, its exported stage-1 file",
    )
    parser.add_argument(
        "--upsample", choices=("each", "mean", "once"),
        help="a cascade's stage 2 at inference: each stage-1 hypothesis (each), N samples of their mean (mean), "
        "or one sample of their mean that keeps their spread (once)",
    )
    parser.add_argument(
        "--reverse-pass", choices=("cascade", "stage1"),
        help="a cascade's reverse pass behind the confidence's fb_error cue: the whole cascade or stage 1 alone",
    )
    parser.add_argument("--onnx", action="store_true", help="export the stage-1 model as an ONNX graph (needs onnx)")
    parser.add_argument("--steps", type=int, help="--onnx: DDIM steps to unroll (default: the checkpoint's sampling_steps, else T)")
    parser.add_argument("--image-size", type=int, help="--onnx: the graph's square input size (default: the checkpoint's)")
    parser.add_argument("--opset", type=int, default=17, help="--onnx: ONNX opset, >= 17 (default 17)")
    args = parser.parse_args(argv)
    if args.onnx and args.half is not None:
        parser.error("--half and --float32 apply to .pt exports, not --onnx (the graph is float32)")
    if not args.onnx and (args.steps is not None or args.image_size is not None or args.opset != 17):
        parser.error("--steps, --image-size and --opset apply to --onnx")
    if (args.interpolate is None) != (args.alpha is None):
        parser.error("--interpolate and --alpha go together")
    if args.interpolate is not None and args.onnx:
        parser.error("--interpolate writes a .pt file, not --onnx")
    stage2 = {k: v for k, v in (("refine", args.upsample), ("reverse_pass", args.reverse_pass)) if v is not None}
    if (args.stage1 is not None or stage2) and (args.onnx or args.interpolate is not None):
        parser.error("--stage1, --upsample and --reverse-pass apply to plain .pt exports, not --onnx or --interpolate")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")
    created = check_out_file(args.out, flag=None)  # before the checkpoint is read
    try:
        if args.onnx:
            from diffmatch.models.onnx import export_checkpoint_onnx

            path = export_checkpoint_onnx(
                args.checkpoint, args.out, num_steps=args.steps, image_size=args.image_size, opset=args.opset, ema=args.ema
            )
        elif args.interpolate is not None:
            from diffmatch.models.weights import interpolate_weights

            path = interpolate_weights(args.checkpoint, args.interpolate, args.alpha, args.out, half=args.half, ema=args.ema)
        else:
            from diffmatch.models.weights import (
                export_weights,  # torch: after the arguments are known to be good
            )

            path = export_weights(args.checkpoint, args.out, half=args.half, ema=args.ema, stage1=args.stage1, stage2=stage2)
    except BaseException:
        remove_empty_folders(created)
        raise
    note = ""
    if stage2:
        from diffmatch.models.weights import read_calibration

        if read_calibration(path) is None and read_calibration(args.checkpoint) is not None:
            note = "; its calibration was fitted with other stage-2 settings and was left out: refit it with diffmatch calibrate"
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
