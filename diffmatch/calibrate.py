"""``python -m diffmatch.calibrate``: fitting a confidence calibration; the command lives in :mod:`diffmatch.cli.calibrate` (also ``diffmatch calibrate``)."""

from diffmatch.cli.calibrate import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
