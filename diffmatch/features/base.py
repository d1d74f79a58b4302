"""The interface every condition-feature extractor implements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffmatch.io import read_torch_file

__all__ = ["Features", "FeatureExtractor", "l2_normalize", "read_weight_file"]


def l2_normalize(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise ``(B, C, H, W)`` features along channels."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(eps)


def read_weight_file(path: Path, name: str) -> dict:
    """The state dict in a backbone's weight file (``torch.load``, ``weights_only``, on the CPU).

    Args:
        path: the file.
        name: the backbone's name, for the messages (e.g. ``"XFeat"``).

    Raises:
        InputError: a missing or unreadable file, or one that holds no dict (:func:`diffmatch.io.read_torch_file`).
    """
    return read_torch_file(path, f"{name} state dict")


@dataclass
class Features:
    """Feature maps of one batch of images.

    Attributes:
        coarse: list of ``(B, C_i, h_i, w_i)`` maps used for the global and local costs of stage 1.
            They may have different sizes; the matcher resizes each to the cost resolution and
            L2-normalises it.
        fine: optional ``(B, C, h, w)`` high-resolution map for the flow-upsampling stage
            (VGG: pool1 of the processed image). ``None`` when the extractor has none.
    """

    coarse: list[torch.Tensor]
    fine: torch.Tensor | None = None


class FeatureExtractor(nn.Module):
    """Maps RGB images to feature maps for matching.

    Subclasses implement :meth:`forward`. Inputs are ``(B, 3, H, W)`` float RGB in ``[0, 1]``, already
    resized by the caller to the processing resolution; extractors do their own normalisation
    (ImageNet mean/std, VAE scaling, patch padding, ...).

    Attributes:
        frozen: whether the extractor's parameters are excluded from training.
        stores_weights: whether the extractor's weights belong in DiffMatch checkpoints. ``False`` for
            extractors rebuilt from a pretrained folder (Stable Diffusion, DINOv2): their gigabytes
            stay in that folder and checkpoints keep only the path.
    """

    frozen: bool = True
    stores_weights: bool = True

    def forward(self, image: torch.Tensor) -> Features:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement forward(image) -> Features")

    @staticmethod
    def check_image(image: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``image`` is a ``(B, 3, H, W)`` floating tensor."""
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a (B, 3, H, W) tensor, got {shape}")
        if not image.is_floating_point():
            raise ValueError(f"image must be float RGB in [0, 1], got {image.dtype}")
