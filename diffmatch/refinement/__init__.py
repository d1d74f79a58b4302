"""Sub-pixel refinement of a dense flow at the target's full resolution.

* :mod:`~diffmatch.refinement.variational`: :class:`VariationalRefiner`, what :class:`~diffmatch.DiffMatcher`
  runs on every hypothesis: levels, rounds, and the choice of solver (OpenCV's on the CPU, PyTorch's on
  the model's device);
* :mod:`~diffmatch.refinement.solver`: the variational energy minimised in PyTorch, batched over flows.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x; tensors are
``(B, 2, H, W)``.
"""

from diffmatch.refinement.solver import to_gray255, variational_step
from diffmatch.refinement.variational import VariationalRefiner

__all__ = ["VariationalRefiner", "to_gray255", "variational_step"]
