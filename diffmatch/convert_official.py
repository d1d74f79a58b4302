"""``python -m diffmatch.convert_official``: converting the official checkpoints; the command lives in :mod:`diffmatch.cli.convert_official` (also ``diffmatch convert-official``)."""

from diffmatch.cli.convert_official import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
