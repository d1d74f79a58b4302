"""Tiny, randomly initialised Stable Diffusion and DINOv2 checkpoints written in the real layouts.

They let the zero-shot extractors be exercised end to end through their public loading path
(``from_pretrained`` on a local directory) without any download. ``make_tiny_sd`` writes the
SD 1.5/2.1 folder layout (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``); ``make_tiny_dino``
writes a ``Dinov2Model`` directory. Both are deterministic (fixed seeds) and take well under a second.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

__all__ = ["make_tiny_sd", "make_tiny_dino", "textured_image"]


def _write_tiny_tokenizer(folder: Path) -> None:
    # The files SD ships (vocab.json + merges.txt), with a BPE vocabulary reduced to lower-case letters:
    # enough for prompts such as "a photo of a cat".
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))


def make_tiny_sd(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Stable Diffusion checkpoint (SD 1.5/2.1 layout) to ``path``.

    U-Net: block_out_channels ``(32, 32, 64)`` (two down/up-samplings, cross-attention in the first
    two levels as in SD), cross-attention dim 32. VAE: two blocks (latent stride 2), 4 latent
    channels. So up-blocks 0, 1, 2 have strides 4, 2, 2 and 64, 32, 32 channels, and image sides are
    padded to multiples of 8.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=16,
        # Random-VAE latents have std ~0.25, not SD's ~5.5: scale them to unit std as SD's 0.18215 does.
        scaling_factor=4.0,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    text_encoder.save_pretrained(path / "text_encoder")
    _write_tiny_tokenizer(path / "tokenizer")
    scheduler.save_pretrained(path / "scheduler")
    return path


def make_tiny_dino(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``Dinov2Model`` (patch size 14, 2 layers, 32 channels) to ``path``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from transformers import Dinov2Config, Dinov2Model

    path = Path(path)
    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        patch_size=14,
        image_size=56,
    )
    Dinov2Model(config).save_pretrained(path)
    return path


def textured_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A ``(1, 3, H, W)`` image in ``[0, 1]`` with distinct local texture everywhere (smoothed noise)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, height // 4 + 1, width // 4 + 1, generator=generator)
    image = torch.nn.functional.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    return image.clamp(0, 1)
