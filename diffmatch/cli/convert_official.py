"""``python -m diffmatch.convert_official CKPT OUT.pt`` (``diffmatch convert-official``): convert a released
DiffMatch checkpoint (KU-CVLAB/DiffMatch) into diffmatch exported weights (:mod:`diffmatch.models.official`).
"""

from __future__ import annotations

from diffmatch.cli.common import (
    OneLineArgumentParser,
    check_out_file,
    one_line_errors,
    program,
    remove_empty_folders,
)
from diffmatch.errors import InputError, MissingWeightsError
from diffmatch.models.official import convert_stage1, convert_upsampler

__all__ = ["main"]



@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """``python -m diffmatch.convert_official CKPT OUT.pt [--stage upsampler --stage1 OUT1.pt]``.

    Returns the exit status: 0 written, 1 a write failed, 2 bad input (``OUT`` is checked first), 130 interrupted.
    """
    parser = OneLineArgumentParser(
        prog=program("python -m diffmatch.convert_official"),
        description="Convert an official DiffMatch checkpoint (KU-CVLAB/DiffMatch) into diffmatch exported weights.",
    )
    parser.add_argument("checkpoint", help="official ema_*.pt / model*.pt file (raw or EMA-wrapped state dict)")
    parser.add_argument("out", help="exported weights to write (.pt)")
    parser.add_argument("--stage", choices=("stage1", "upsampler"), default="stage1")
    parser.add_argument("--stage1", help="with --stage upsampler: the converted stage-1 file")
    parser.add_argument(
        "--vgg16", default="imagenet",
        help="VGG-16 weights for stage 1: 'imagenet' (torchvision's vgg16-397923af.pth in the torch hub cache) or a .pth path",
    )
    args = parser.parse_args(argv)
    if args.stage == "upsampler" and not args.stage1:
        raise InputError("--stage upsampler needs --stage1 OUT1.pt (the converted stage-1 file)")
    created = check_out_file(args.out, flag=None)
    from diffmatch.models.weights import save_weights

    try:
        if args.stage == "upsampler":
            model = convert_upsampler(args.checkpoint, args.stage1)
        else:
            model = convert_stage1(args.checkpoint, args.vgg16)
        out = save_weights(model, args.out)
    except MissingWeightsError as err:
        remove_empty_folders(created)
        raise InputError(err.text("--vgg16")) from None
    except BaseException:
        remove_empty_folders(created)
        raise
    kind = "stage 1 + upsampler" if args.stage == "upsampler" else "stage 1"
    print(f"wrote {out} ({kind}, official settings)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
