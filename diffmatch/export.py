"""``python -m diffmatch.export CKPT OUT [--half] [--no-ema]``: a Lightning checkpoint to a small inference file."""

from __future__ import annotations

import argparse
import sys

from diffmatch.io import InputError
from diffmatch.weights import export_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffmatch.export", description=__doc__)
    parser.add_argument("checkpoint", help="Lightning .ckpt (or an exported file)")
    parser.add_argument("out", help="destination .pt file")
    parser.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    parser.add_argument(
        "--no-ema",
        dest="ema",
        action="store_false",
        help="export the trained denoiser, not its moving average (Lightning checkpoints of runs with ema_decay)",
    )
    args = parser.parse_args(argv)
    try:
        path = export_weights(args.checkpoint, args.out, half=args.half, ema=args.ema)
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
