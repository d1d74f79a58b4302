"""DIFT: Stable Diffusion U-Net up-block features (Tang et al., "Emergent Correspondence from Image Diffusion").

The image is VAE-encoded, noised to timestep ``t`` with the model's scheduler, and passed once through
the U-Net with a text prompt (empty by default). The output of up-block ``up_ft_index`` is the
feature map; the pass stops right after the last needed block. Features of ``ensemble_size`` noise
draws are averaged.

DIFT's published settings (SD 2.1, images resized to 768 x 768):

============  ======  ===============  ===================================
preset        ``t``   ``up_ft_index``  use
============  ======  ===============  ===================================
semantic      261     1  (stride 16)   semantic keypoints (SPair-71k)
geometric     0       2  (stride 8)    geometric matching (HPatches)
============  ======  ===============  ===================================

With SD 1.5/2.1, ``up_ft_index`` 0, 1, 2, 3 give maps at strides 32, 16, 8, 8 with 1280, 1280, 640,
320 channels. The outputs of up-blocks 0, 1, 2 are the decoder layers 2, 5, 8 of SD-DINO.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch

from diffmatch.features.base import FeatureExtractor, Features
from diffmatch.features.hub import as_size, crop_to_image, load_pretrained, pad_to_multiple, resize_image

__all__ = ["DIFT_PRESETS", "DIFTExtractor", "SD_SUBFOLDERS"]

DIFT_PRESETS: MappingProxyType[str, MappingProxyType[str, int]] = MappingProxyType(
    {
        "semantic": MappingProxyType({"t": 261, "up_ft_index": 1}),
        "geometric": MappingProxyType({"t": 0, "up_ft_index": 2}),
    }
)
SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class _StopUNet(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the last needed hook to skip the rest of the U-Net."""


def _load_sd(source: str, local_files_only: bool, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    common = {"local_files_only": local_files_only}
    return {
        "unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **common),
        "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **common),
        "text_encoder": CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **common),
        "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
        # add_noise only needs alphas_cumprod, which DDPM/DDIM/PNDM configs of SD share.
        "scheduler": DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common),
    }


class DIFTExtractor(FeatureExtractor):
    """Stable Diffusion (1.5 / 2.1 layout) U-Net features, averaged over noise draws.

    Args:
        pretrained_model_name_or_path: a local directory with ``unet/ vae/ text_encoder/ tokenizer/
            scheduler/`` or a Hub id found in the Hugging Face cache (``runwayml/stable-diffusion-v1-5``,
            ``stabilityai/stable-diffusion-2-1``).
        t: diffusion timestep in ``[0, num_train_timesteps)`` at which noise is added.
        up_ft_index: U-Net up-block(s) whose output is returned; several give several maps.
        ensemble_size: number of noise draws whose features are averaged.
        prompt: text prompt; its embedding is computed once and cached.
        image_size: ``S`` or ``(H, W)`` to resize images to before encoding (DIFT: 768 for SD 2.1);
            ``None`` keeps the caller's size. Either way sides are padded to the U-Net's multiple
            (64 for SD) and the maps cropped back to the cells that cover the image.
        seed: seed of the ``torch.Generator`` that draws the noise; the same draws are used for every
            image of a batch and every call, so the output of an image does not depend on the batch.
        max_batch: largest number of U-Net inputs (images x draws) per pass.
        local_files_only: never use the network, even if the id is not cached.
        torch_dtype: weights' dtype, ``"float32"`` or ``"float16"`` / ``"bfloat16"`` on GPU.

    Raises:
        InputError: the model cannot be found locally (the message names the id and how to fetch it).
    """

    stores_weights = False  # rebuilt from the pretrained folder named in the config

    def __init__(
        self,
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1",
        t: int = 261,
        up_ft_index: int | Sequence[int] = 1,
        ensemble_size: int = 8,
        prompt: str = "",
        image_size: int | tuple[int, int] | None = None,
        seed: int = 0,
        max_batch: int = 8,
        local_files_only: bool = False,
        torch_dtype: str = "float32",
    ) -> None:
        super().__init__()
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        dtype = getattr(torch, torch_dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"torch_dtype must name a floating torch dtype, got {torch_dtype!r}")
        parts = load_pretrained(
            pretrained_model_name_or_path,
            lambda source, local_only: _load_sd(source, local_only, dtype),
            what="Stable Diffusion",
            cli_flag="--sd-model",
            local_files_only=local_files_only,
            required=SD_SUBFOLDERS,
        )
        self.unet = parts["unet"].eval().requires_grad_(False)
        self.vae = parts["vae"].eval().requires_grad_(False)
        self.text_encoder = parts["text_encoder"].eval().requires_grad_(False)
        self.tokenizer = parts["tokenizer"]
        self.scheduler = parts["scheduler"]

        num_steps = self.scheduler.config.num_train_timesteps
        if not 0 <= t < num_steps:
            raise ValueError(f"t must be in [0, {num_steps}), got {t}")
        indices = (up_ft_index,) if isinstance(up_ft_index, int) else tuple(up_ft_index)
        num_up = len(self.unet.up_blocks)
        if not indices or any(not 0 <= i < num_up for i in indices) or len(set(indices)) != len(indices):
            raise ValueError(f"up_ft_index must be distinct values in [0, {num_up}), got {up_ft_index!r}")

        self.model_id = str(pretrained_model_name_or_path)
        self.t = t
        self.up_ft_indices = indices
        self.ensemble_size = ensemble_size
        self.prompt = prompt
        self.image_size = as_size(image_size)
        self.seed = seed
        self.max_batch = max_batch
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** sum(block.downsamplers is not None for block in self.unet.down_blocks)
        self.multiple = vae_factor * unet_factor
        self.strides = tuple(self._block_stride(i, vae_factor, unet_factor) for i in indices)
        self.channels = tuple(self._block_channels(i) for i in indices)
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_preset(cls, preset: str, **kwargs: Any) -> DIFTExtractor:
        """Build with DIFT's published ``t`` and ``up_ft_index`` for ``preset`` (``semantic``/``geometric``)."""
        if preset not in DIFT_PRESETS:
            raise ValueError(f"unknown DIFT preset {preset!r}, expected one of {sorted(DIFT_PRESETS)}")
        return cls(**{**DIFT_PRESETS[preset], **kwargs})

    def _block_stride(self, index: int, vae_factor: int, unet_factor: int) -> int:
        ups = sum(block.upsamplers is not None for block in self.unet.up_blocks[: index + 1])
        return vae_factor * unet_factor // 2**ups

    def _block_channels(self, index: int) -> int:
        return int(list(reversed(self.unet.config.block_out_channels))[index])

    @property
    def stride(self) -> int:
        """Image pixels per cell of the finest returned map (before any ``image_size`` resize)."""
        return min(self.strides)

    def prompt_embeddings(self, prompt: str) -> torch.Tensor:
        """``(1, L, D)`` text-encoder output for ``prompt``; computed once per prompt and cached."""
        if prompt not in self._prompt_cache:
            tokens = self.tokenizer(
                prompt,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            device = next(self.text_encoder.parameters()).device
            with torch.no_grad():
                self._prompt_cache[prompt] = self.text_encoder(tokens.input_ids.to(device))[0].detach()
        return self._prompt_cache[prompt]

    def _noise(self, latent_shape: torch.Size, seed: int, like: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((self.ensemble_size, *latent_shape[1:]), generator=generator)  # (E, C, h, w)
        return noise.to(like.device, like.dtype)

    def _unet_blocks(self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
        captured: dict[int, torch.Tensor] = {}
        last = max(self.up_ft_indices)

        def make_hook(index: int):
            def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                captured[index] = output
                if index == last:
                    raise _StopUNet

            return hook

        handles = [self.unet.up_blocks[i].register_forward_hook(make_hook(i)) for i in self.up_ft_indices]
        try:
            self.unet(latents, timesteps, encoder_hidden_states=text)
        except _StopUNet:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [captured[i] for i in self.up_ft_indices]

    @torch.no_grad()
    def forward(self, image: torch.Tensor, seed: int | None = None) -> Features:
        """Extract DIFT features.

        Args:
            image: ``(B, 3, H, W)`` float RGB in ``[0, 1]``.
            seed: overrides the constructor's seed for this call.

        Returns:
            :class:`Features` with ``coarse`` = one ``(B, C_i, ceil(H'/s_i), ceil(W'/s_i))`` map per
            ``up_ft_index`` (``H', W'`` = ``image_size`` or the input size, ``s_i`` = ``strides[i]``),
            float32, and ``fine=None``. Cell ``(i, j)`` covers pixels ``[s*j, s*(j+1))`` of the
            resized image; matches read from these maps follow the flow convention of
            :mod:`diffmatch.geometry` (``target(x) ≈ source(x + flow(x))``, align_corners=False).
        """
        self.check_image(image)
        dtype = next(self.unet.parameters()).dtype
        device = next(self.unet.parameters()).device
        x = resize_image(image.to(device, torch.float32), self.image_size)
        size = (x.shape[-2], x.shape[-1])
        x = pad_to_multiple(x * 2.0 - 1.0, self.multiple).to(dtype)
        latents = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor  # (B, 4, h, w)
        noise = self._noise(latents.shape, self.seed if seed is None else seed, latents)  # (E, 4, h, w)
        b, e = latents.shape[0], self.ensemble_size
        # Every (draw, image) pair, draw-major, processed in chunks of max_batch.
        flat_latents = latents.unsqueeze(0).expand(e, -1, -1, -1, -1).reshape(e * b, *latents.shape[1:])
        flat_noise = noise.unsqueeze(1).expand(-1, b, -1, -1, -1).reshape(e * b, *latents.shape[1:])
        text = self.prompt_embeddings(self.prompt).to(device, dtype)
        sums: list[torch.Tensor] | None = None
        for start in range(0, e * b, self.max_batch):
            chunk = slice(start, min(start + self.max_batch, e * b))
            n = chunk.stop - chunk.start
            timesteps = torch.full((n,), self.t, device=device, dtype=torch.long)
            noisy = self.scheduler.add_noise(flat_latents[chunk], flat_noise[chunk], timesteps)
            maps = self._unet_blocks(noisy, timesteps, text.expand(n, -1, -1))
            # Sum the draws of each image: chunk rows are (draw, image) with image = row % b.
            image_index = torch.arange(chunk.start, chunk.stop, device=device) % b
            per_image = [
                torch.zeros(b, *m.shape[1:], device=device, dtype=torch.float32).index_add_(0, image_index, m.float())
                for m in maps
            ]
            sums = per_image if sums is None else [s + p for s, p in zip(sums, per_image)]
        assert sums is not None
        coarse = [crop_to_image(s / e, size, stride) for s, stride in zip(sums, self.strides)]
        return Features(coarse=coarse, fine=None)
