"""Flow geometry and geometry from matches.

* :mod:`~diffmatch.geometry.flow`: grids, warping, resizing flows, unit changes between pixels and the
  model's normalised grids, forward–backward consistency (re-exported here);
* :mod:`~diffmatch.geometry.relative_pose`: relative pose candidates from normalised matches (an
  essential matrix's, the dominant plane's) and the support that chooses between them;
* :mod:`~diffmatch.geometry.estimation`: matches drawn from a dense result, and the homography,
  fundamental matrix and relative pose estimated from them.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, px, channel 0 = x; ``(B, 2, H, W)``.
"""

from diffmatch.geometry.flow import (
    check_flow,
    coords_grid,
    flow_magnitude,
    flow_to_normalized,
    forward_backward_consistency,
    from_grid,
    homography_to_flow,
    normalized_to_flow,
    pixel_to_normalized,
    resize_flow,
    to_grid,
    warp,
)

__all__ = [
    "check_flow",
    "coords_grid",
    "flow_magnitude",
    "flow_to_normalized",
    "forward_backward_consistency",
    "from_grid",
    "homography_to_flow",
    "normalized_to_flow",
    "pixel_to_normalized",
    "resize_flow",
    "to_grid",
    "warp",
]
