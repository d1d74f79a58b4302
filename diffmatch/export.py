"""``python -m diffmatch.export``: exporting weights (and ONNX); the command lives in :mod:`diffmatch.cli.export` (also ``diffmatch export``)."""

from diffmatch.cli.export import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
