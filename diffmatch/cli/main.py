"""``diffmatch``: one command, a subcommand per job (also ``python -m diffmatch.cli``).

    diffmatch match --source A.png --target B.png --out DIR     # dense flow, uncertainty, confidence
    diffmatch train fit --config configs/cpu_small.yaml          # Lightning training
    diffmatch evaluate --dataset synthetic --methods checkpoint,dis
    diffmatch evaluate-confidence --checkpoint CKPT_CAL --out DIR
    diffmatch calibrate CKPT --out CKPT_CAL
    diffmatch export CKPT OUT.pt [--onnx]
    diffmatch convert-official ema_stage1.pt OUT.pt
    diffmatch fetch-photos                                       # the extra photos (training, calibration)

Each subcommand is the same program as its older entry point (``python infer.py``, ``python
train.py``, ``python -m diffmatch.evaluate`` ...), with the same arguments, exit statuses (0 ok,
1 failed, 2 bad input, 130 interrupted; :mod:`diffmatch.cli.common`) and ``--help``. The modules
are imported only when their subcommand runs, so ``diffmatch --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from diffmatch.cli.common import EXIT_USAGE, running_as

__all__ = ["SUBCOMMANDS", "main"]

# subcommand: (module with main(argv) -> int, what it does)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "match": ("diffmatch.cli.infer", "dense flow, uncertainty and confidence for your own image pairs"),
    "train": ("diffmatch.cli.train", "train a model with Lightning (fit, validate; configs/*.yaml)"),
    "evaluate": ("diffmatch.cli.evaluate", "benchmark matchers: AEPE, PCK, relative pose, against peers"),
    "evaluate-confidence": ("diffmatch.cli.evaluate_confidence", "reliability, ECE and homographies of a calibrated model"),
    "calibrate": ("diffmatch.cli.calibrate", "fit the confidence calibration of a checkpoint"),
    "export": ("diffmatch.cli.export", "export a small inference file (or an ONNX graph) from a checkpoint"),
    "convert-official": ("diffmatch.cli.convert_official", "convert the released official DiffMatch checkpoints"),
    "fetch-photos": ("diffmatch.cli.fetch_photos", "download the extra photos that training and calibration read"),
}


def usage() -> str:
    """The ``diffmatch --help`` text."""
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: diffmatch SUBCOMMAND [ARGS ...]",
        "",
        "DiffMatch: dense image correspondence with diffusion models, with uncertainty and a calibrated confidence.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {what}" for name, (_, what) in SUBCOMMANDS.items()),
        "",
        "`diffmatch SUBCOMMAND --help` describes each one's arguments.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``diffmatch SUBCOMMAND ARGS``; returns the subcommand's exit status (2: unknown subcommand)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), file=sys.stderr)  # a usage error: the help text on stderr, status 2
        return EXIT_USAGE
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"diffmatch {version('diffmatch')}")
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}; one of {', '.join(SUBCOMMANDS)} (see diffmatch --help)", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(SUBCOMMANDS[name][0])
    entry = module.run if name == "train" else module.main  # train's main builds the LightningCLI
    # sys.argv stays the whole command line: Lightning starts DDP processes (training, match --devices)
    # by running it again.
    with running_as(f"diffmatch {name}"):
        return entry(rest)


if __name__ == "__main__":
    raise SystemExit(main())
