"""DINOv2 last-layer patch tokens as a dense feature map (Oquab et al., 2023).

Images are ImageNet-normalised, padded to multiples of the patch size (14), and passed through
``transformers.Dinov2Model`` (or ``Dinov2WithRegistersModel``). The final layer-normed tokens minus
the CLS and register tokens are reshaped to a ``(B, C, H/14, W/14)`` map and cropped to the cells that
cover the image. SD-DINO feeds 840 x 840 images (a 60 x 60 map) to DINOv2-ViT-B/14.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from diffmatch.features.base import FeatureExtractor, Features
from diffmatch.features.hub import as_size, crop_to_image, load_pretrained, pad_to_multiple, resize_image

__all__ = ["DINOv2Extractor", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load_dinov2(source: str, local_files_only: bool, dtype: torch.dtype) -> Any:
    from transformers import AutoConfig, Dinov2Model, Dinov2WithRegistersModel

    config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    classes = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}
    if config.model_type not in classes:
        raise ValueError(f"expected a DINOv2 checkpoint, got model_type {config.model_type!r}")
    return classes[config.model_type].from_pretrained(source, local_files_only=local_files_only, dtype=dtype)


class DINOv2Extractor(FeatureExtractor):
    """DINOv2 patch-token features.

    Args:
        pretrained_model_name_or_path: a local directory saved by ``Dinov2Model.save_pretrained`` or a
            Hub id in the Hugging Face cache (``facebook/dinov2-base``, ``facebook/dinov2-small``,
            ``facebook/dinov2-with-registers-base``, ...).
        image_size: ``S`` or ``(H, W)`` to resize images to first (SD-DINO: 840); ``None`` keeps the
            caller's size. Sides are then padded to multiples of the patch size and the map cropped back.
        local_files_only: never use the network, even if the id is not cached.
        torch_dtype: weights' dtype, ``"float32"`` or ``"float16"`` / ``"bfloat16"`` on GPU.

    Raises:
        InputError: the model cannot be found locally (the message names the id and how to fetch it).
    """

    stores_weights = False  # rebuilt from the pretrained folder named in the config

    def __init__(
        self,
        pretrained_model_name_or_path: str = "facebook/dinov2-base",
        image_size: int | tuple[int, int] | None = None,
        local_files_only: bool = False,
        torch_dtype: str = "float32",
    ) -> None:
        super().__init__()
        dtype = getattr(torch, torch_dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"torch_dtype must name a floating torch dtype, got {torch_dtype!r}")
        self.model = load_pretrained(
            pretrained_model_name_or_path,
            lambda source, local_only: _load_dinov2(source, local_only, dtype),
            what="DINOv2",
            cli_flag="--dino-model",
            local_files_only=local_files_only,
            required=("config.json",),
        )
        self.model.eval().requires_grad_(False)
        self.model_id = str(pretrained_model_name_or_path)
        self.image_size = as_size(image_size)
        self.patch_size = int(self.model.config.patch_size)
        self.num_prefix_tokens = 1 + int(getattr(self.model.config, "num_register_tokens", 0))
        self.channels = int(self.model.config.hidden_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def stride(self) -> int:
        """Image pixels per feature cell (the patch size, before any ``image_size`` resize)."""
        return self.patch_size

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> Features:
        """Extract DINOv2 features.

        Args:
            image: ``(B, 3, H, W)`` float RGB in ``[0, 1]``.

        Returns:
            :class:`Features` with ``coarse=[(B, C, ceil(H'/14), ceil(W'/14))]`` float32 (``H', W'`` =
            ``image_size`` or the input size) and ``fine=None``. Cell ``(i, j)`` covers pixels
            ``[14j, 14(j+1))`` of the resized image; matches read from it follow the flow convention
            of :mod:`diffmatch.geometry` (``target(x) ≈ source(x + flow(x))``, align_corners=False).
        """
        self.check_image(image)
        param = next(self.model.parameters())
        x = resize_image(image.to(param.device, torch.float32), self.image_size)
        size = (x.shape[-2], x.shape[-1])
        x = pad_to_multiple((x - self.mean) / self.std, self.patch_size)
        tokens = self.model(pixel_values=x.to(param.dtype)).last_hidden_state  # (B, P + h*w, C)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = tokens[:, self.num_prefix_tokens :]
        if patches.shape[1] != h * w:
            raise ValueError(f"DINOv2 returned {patches.shape[1]} patch tokens, expected {h} x {w}")
        fmap = rearrange(patches.float(), "b (h w) c -> b c h w", h=h, w=w)
        return Features(coarse=[crop_to_image(fmap, size, self.patch_size)], fine=None)
