"""``python -m diffmatch.evaluate_confidence``: evaluation of a calibrated confidence; the command lives in :mod:`diffmatch.cli.evaluate_confidence` (also ``diffmatch evaluate-confidence``)."""

from diffmatch.cli.evaluate_confidence import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
