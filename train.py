"""Train DiffMatch: ``python train.py fit --config configs/cpu_small.yaml`` (see README)."""

from __future__ import annotations

import sys

from diffmatch.cli.train import main
from diffmatch.io import InputError


def _input_error(err: BaseException | None) -> InputError | None:
    """The :class:`InputError` behind ``err`` (jsonargparse wraps errors raised while building configs)."""
    while err is not None and not isinstance(err, InputError):
        err = err.__cause__ or err.__context__
    return err


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # a missing dataset root or a bad file: one line, not a traceback
        cause = _input_error(err)
        if cause is None:
            raise
        sys.exit(f"error: {cause}")
