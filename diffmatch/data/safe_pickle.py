"""Reading the pickled index files of public benchmarks (ETH3D's pair lists, LoFTR's scene info) safely."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from diffmatch.errors import InputError

__all__ = ["load_array_pickle"]

# The only globals such a file may reference: numpy arrays and scalars (numpy 1 and 2 spellings).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds plain containers and numpy arrays only, never arbitrary objects."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # skip numpy 2's deprecation shim
        return super().find_class(module, name)


def load_array_pickle(path: str | os.PathLike, what: str, missing_hint: str = "") -> Any:
    """Unpickle ``path``, allowing only containers, numpy arrays and numpy scalars.

    Args:
        path: the file.
        what: what the file is, for messages (``"ETH3D pair list"``).
        missing_hint: appended to the message of a missing file (where to get it).

    Raises:
        InputError: a missing file, or one that is not such a pickle (a disallowed global, a corrupt
            or truncated file), in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found{'; ' + missing_hint if missing_hint else ''}")
    try:
        return _ArrayUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as err:  # pickle raises many types on bad input
        raise InputError(f"{path}: not a readable {what} ({err})") from None
