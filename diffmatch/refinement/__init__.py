"""What is done to the model's flow after the network: sub-pixel refinement and the layer search.

* :mod:`~diffmatch.refinement.variational`: :class:`VariationalRefiner`, what :class:`~diffmatch.DiffMatcher`
  runs on every hypothesis: levels, rounds, and the choice of solver (OpenCV's on the CPU, PyTorch's on
  the model's device);
* :mod:`~diffmatch.refinement.solver`: the variational energy minimised in PyTorch, batched over flows;
* :mod:`~diffmatch.refinement.layer_search`: :func:`search_layers`, the planes of the model's global
  cost and of the result's confident matches offered to each pixel (wide baselines whose layers move
  apart; the matcher runs it by default);
* :mod:`~diffmatch.refinement.census`: the census cost the search ranks flows by.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x; tensors are
``(B, 2, H, W)``.
"""

from diffmatch.refinement.layer_search import LayerSearchConfig, search_layers
from diffmatch.refinement.solver import to_gray255, variational_step
from diffmatch.refinement.variational import VariationalRefiner

__all__ = ["LayerSearchConfig", "VariationalRefiner", "search_layers", "to_gray255", "variational_step"]
