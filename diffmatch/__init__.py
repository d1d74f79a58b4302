"""diffmatch: diffusion models for dense image correspondence.

Flow convention everywhere: flow lives on the target grid, ``target(x) ≈ source(x + flow(x))``, in
pixels, channel 0 = x; tensors ``(B, 2, H, W)``, arrays on disk ``(H, W, 2)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["DiffMatch", "DiffMatchConfig", "DiffMatcher", "MatchResult", "VariationalRefiner", "__version__"]

_LAZY = {
    "DiffMatch": "diffmatch.models.diffmatch",
    "DiffMatchConfig": "diffmatch.models.config",
    "DiffMatcher": "diffmatch.matcher",
    "MatchResult": "diffmatch.result",
    "VariationalRefiner": "diffmatch.refinement",
}

if TYPE_CHECKING:  # pragma: no cover
    from diffmatch.matcher import DiffMatcher
    from diffmatch.models.config import DiffMatchConfig
    from diffmatch.models.diffmatch import DiffMatch
    from diffmatch.refinement import VariationalRefiner
    from diffmatch.result import MatchResult


def __getattr__(name: str) -> Any:
    # Lazy so that `import diffmatch.io` does not pay for torch/diffusers model imports.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffmatch' has no attribute {name!r}")
