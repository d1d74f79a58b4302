"""``python -m diffmatch.evaluate``: benchmark evaluation of dense matchers; the command lives in :mod:`diffmatch.cli.evaluate` (also ``diffmatch evaluate``)."""

from diffmatch.cli.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
