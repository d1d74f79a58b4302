"""Reading the pickled index files of public benchmarks (ETH3D's pair lists, LoFTR's scene info) safely."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

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


def load_array_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path``, allowing only containers, numpy arrays and numpy scalars.

    Raises:
        OSError: the file cannot be read.
        pickle.UnpicklingError (or another exception of the pickle machinery): a disallowed global
            or a corrupt file.
    """
    return _ArrayUnpickler(io.BytesIO(Path(path).read_bytes())).load()
