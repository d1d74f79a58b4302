"""Shared builders for tests: tiny models and exactly known image pairs."""

from __future__ import annotations

import numpy as np
import torch

from diffmatch.models.config import DiffMatchConfig
from diffmatch.models.denoiser import DenoiserConfig


def tiny_config(**overrides) -> DiffMatchConfig:
    """A DiffMatch small enough to train in seconds on one CPU core."""
    base = dict(
        features="vgg16",
        feature_kwargs={"weights": "random", "seed": 0, "levels": ["pool2", "pool3"], "half_levels": ["pool3"]},
        image_size=64,
        cost_size=16,
        radius=2,
        temperature=0.02,
        denoiser=DenoiserConfig(
            base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), attention_head_dim=16, norm_groups=8
        ),
    )
    base.update(overrides)
    return DiffMatchConfig(**base)


def shifted_pair(photo: np.ndarray, dx: int, dy: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source, target and flow for an integer shift: target(x) = source(x + (dx, dy)).

    Both are crops of ``photo`` so that no pixel is invented; the flow is constant.
    """
    image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255.0
    y0, x0 = 20, 20
    target = image[:, y0 : y0 + size, x0 : x0 + size]
    source = image[:, y0 + dy : y0 + dy + size, x0 + dx : x0 + dx + size]
    flow = torch.zeros(2, size, size)
    flow[0], flow[1] = -dx, -dy  # source pixel x shows image point x + (x0+dx); target x + d matches
    return source[None].contiguous(), target[None].contiguous(), flow[None]


def smooth_photo_folder(folder, shapes: dict[str, tuple[int, int]], cell: int, seed: int = 0):
    """Write smooth random RGB photos (random colours every ``cell`` px, bicubic in between) to ``folder``.

    Smooth textures keep bilinear interpolation well conditioned, so warps of them compare exactly.
    """
    import cv2

    from diffmatch.io import save_image

    rng = np.random.default_rng(seed)
    for name, (h, w) in shapes.items():
        coarse = rng.integers(0, 256, (h // cell, w // cell, 3), dtype=np.uint8)
        save_image(folder / name, cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC))
    return folder


def synthetic_cues(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cues in the order of CUES whose errors grow with variance, init distance, fb error and their local means."""
    rng = np.random.default_rng(seed)
    variance = rng.gamma(1.0, 4.0, n)
    init_distance = rng.gamma(1.0, 3.0, n)
    cost_peak = rng.uniform(0.2, 1.0, n)
    fb_error = rng.gamma(1.0, 2.0, n)
    local_variance = rng.gamma(1.0, 4.0, n)  # independent draws: each cue's own effect is what tests probe
    local_fb_error = rng.gamma(1.0, 2.0, n)
    errors = (
        0.2 * np.sqrt(variance) + 0.2 * np.sqrt(local_variance) + 0.5 * init_distance + 0.15 * fb_error
        + 0.15 * local_fb_error + rng.gamma(1.0, 1.0, n) * (1.5 - cost_peak)
    )
    return np.stack((variance, init_distance, cost_peak, fb_error, local_variance, local_fb_error), 1), errors


def synthetic_search_cues(n: int, seed: int = 0, distinctness_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Made-up pixels the layer search took, cues in the order of SEARCH_FIT_CUES: the error grows with
    the census cost (and, with ``distinctness_weight``, falls with the distinctness)."""
    rng = np.random.default_rng(seed)
    cues = np.stack(
        [rng.gamma(1.0, 4.0, n), rng.gamma(1.0, 3.0, n), rng.uniform(0, 0.5, n), rng.uniform(0, 0.3, n), rng.uniform(0, 0.4, n)], 1
    )
    errors = 20 * cues[:, 2] + distinctness_weight * (0.4 - cues[:, 4]) + rng.gamma(1.0, 1.0, n)
    return cues, errors
