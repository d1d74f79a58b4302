"""``python -m diffmatch.export CKPT OUT [--half] [--no-ema]``: a Lightning checkpoint to a small inference file.

``--onnx`` writes an ONNX graph of the stage-1 model instead (``OUT.onnx``; :mod:`diffmatch.onnx_export`):
the DDIM steps unrolled (``--steps``, default the checkpoint's), the start noise an input, the images
fixed at the processing size (``--image-size``, default the checkpoint's), opset ``--opset`` (>= 17).
"""

from __future__ import annotations

import argparse
import sys

from diffmatch.io import InputError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        self.exit(2, f"error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m diffmatch.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Lightning .ckpt (or an exported file)")
    parser.add_argument("out", help="destination .pt file (.onnx with --onnx)")
    parser.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    parser.add_argument(
        "--no-ema",
        dest="ema",
        action="store_false",
        help="export the trained denoiser, not its moving average (Lightning checkpoints of runs with ema_decay)",
    )
    parser.add_argument("--onnx", action="store_true", help="export the stage-1 model as an ONNX graph (needs onnx)")
    parser.add_argument("--steps", type=int, help="--onnx: DDIM steps to unroll (default: the checkpoint's sampling_steps, else T)")
    parser.add_argument("--image-size", type=int, help="--onnx: the graph's square input size (default: the checkpoint's)")
    parser.add_argument("--opset", type=int, default=17, help="--onnx: ONNX opset, >= 17 (default 17)")
    args = parser.parse_args(argv)
    if args.onnx and args.half:
        parser.error("--half applies to .pt exports, not --onnx (the graph is float32)")
    if not args.onnx and (args.steps is not None or args.image_size is not None or args.opset != 17):
        parser.error("--steps, --image-size and --opset apply to --onnx")
    try:
        if args.onnx:
            from diffmatch.onnx_export import export_checkpoint_onnx

            path = export_checkpoint_onnx(
                args.checkpoint, args.out, num_steps=args.steps, image_size=args.image_size, opset=args.opset, ema=args.ema
            )
        else:
            from diffmatch.weights import export_weights

            path = export_weights(args.checkpoint, args.out, half=args.half, ema=args.ema)
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
