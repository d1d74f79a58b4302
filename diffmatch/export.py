"""``python -m diffmatch.export CKPT OUT [--half | --float32] [--no-ema]``: a Lightning checkpoint to a small inference file.

The weights keep the precision they are stored in (an exported float16 file stays float16) unless
``--half`` or ``--float32`` says otherwise. ``OUT`` is checked before anything is read: a folder or
an unwritable place is refused in one line (exit status 2).
"""

from __future__ import annotations

import sys

from diffmatch.cli.common import OneLineArgumentParser, check_out_file, one_line_errors, remove_empty_folders


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Export; returns the exit status (0 written, 1 a write failed, 2 bad input, 130 interrupted)."""
    parser = OneLineArgumentParser(prog="python -m diffmatch.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Lightning .ckpt (or an exported file)")
    parser.add_argument("out", help="destination .pt file")
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
    args = parser.parse_args(argv)
    created = check_out_file(args.out, flag=None)  # before the checkpoint is read
    from diffmatch.weights import export_weights  # torch: after the arguments are known to be good

    try:
        path = export_weights(args.checkpoint, args.out, half=args.half, ema=args.ema)
    except BaseException:
        remove_empty_folders(created)
        raise
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
