"""Train DiffMatch: ``python train.py fit --config configs/cpu_small.yaml`` (see README)."""

from __future__ import annotations

import sys

from diffmatch.cli.train import run

if __name__ == "__main__":
    sys.exit(run())
