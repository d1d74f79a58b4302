"""Convert the released DiffMatch checkpoints (KU-CVLAB/DiffMatch) into diffmatch exported weights.

The official code saves raw U-Net state dicts (``ema_0.9999_XXXXXX.pt``, ``modelXXXXXX.pt``) of its
improved-diffusion ``UNetModel_stage1`` (stage 1) and ``UNetModel_sr`` (flow upsampler). The two have
the same tensors; this module maps them, tensor for tensor, onto :class:`~diffmatch.models.denoiser.FlowDenoiser`
(diffusers' ``UNet2DModel``) and writes an exported-weights file with the official settings
(:data:`OFFICIAL_MODEL`, :data:`OFFICIAL_UPSAMPLER`; the same as ``configs/paper.yaml`` +
``configs/official.yaml``). The result loads through the normal public path::

    python -m diffmatch.convert_official ema_stage1.pt official_stage1.pt
    python -m diffmatch.convert_official ema_sr.pt official_cascade.pt --stage upsampler --stage1 official_stage1.pt
    python infer.py --checkpoint official_cascade.pt ...

Stage 1 needs the ImageNet VGG-16 weights (torchvision's ``vgg16-397923af.pth`` in the torch hub
cache, or ``--vgg16 PATH``): exported files carry the backbone. The upsampler takes them from the
converted stage-1 file.

The mapping is strict: every official tensor is used and every U-Net tensor filled, or one error
names the unknown, missing and mis-shaped keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D

from diffmatch.errors import InputError, MissingWeightsError
from diffmatch.io import read_torch_file
from diffmatch.models.config import config_from_dict
from diffmatch.models.denoiser import FlowDenoiser
from diffmatch.models.diffmatch import DiffMatch

__all__ = ["OFFICIAL_MODEL", "OFFICIAL_UPSAMPLER", "convert_stage1", "convert_upsampler", "official_to_denoiser", "read_official_state_dict"]



# The official code's stage-1 settings (admin/local_example_*.py, evaluation.py, eval_utils.py at 045ea83).
OFFICIAL_MODEL: dict[str, Any] = {
    "features": "vgg16",
    "feature_kwargs": {"weights": "imagenet", "levels": ["pool2", "pool3"], "half_levels": ["pool3", "pool4"]},
    "image_size": 512,
    "cost_size": 64,
    "init_flow": "hard",
    "radius": 4,
    "local_cost_order": "x_major",
    "resize": "official",
    "clamp_flow": True,
    "num_train_timesteps": 5,
    "beta_schedule": "squaredcos_cap_v2",
}


# Its flow upsampler ('sr'): 64² -> 256² (VGG pool1 of the 512² input), the mean of the stage-1 samples refined.
OFFICIAL_UPSAMPLER: dict[str, Any] = {"size": 256, "radius": 4, "refine": "mean", "normalize_after_sampling": True}


_WRAPPERS = ("ema", "ema_state_dict", "state_dict", "model", "model_state_dict")


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The U-Net tensors of an official checkpoint: a raw state dict, or one wrapped under an EMA key.

    Accepted: the official ``ema_*.pt`` / ``model*.pt`` files (a plain ``{name: tensor}`` dict), a dict
    holding one under ``ema``, ``ema_state_dict``, ``state_dict``, ``model`` or ``model_state_dict``
    (EMA first), and names with a DDP ``module.`` prefix.

    Raises:
        InputError: missing or unreadable file, or no U-Net tensors in it.
    """
    path = Path(path)
    data = read_torch_file(path, "PyTorch checkpoint")
    for key in _WRAPPERS:
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    state = {k.removeprefix("module."): v for k, v in data.items() if torch.is_tensor(v)}
    if "input_blocks.0.0.weight" not in state:
        raise InputError(f"{path}: not an official DiffMatch U-Net checkpoint (no input_blocks.0.0.weight)")
    return state


def _resnet_names(ours: str, theirs: str, block: ResnetBlock2D) -> Iterator[tuple[str, str]]:
    pairs = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
             ("norm2", "out_layers.0"), ("conv2", "out_layers.3")]
    if block.conv_shortcut is not None:
        pairs.append(("conv_shortcut", "skip_connection"))
    for a, b in pairs:
        for p in ("weight", "bias"):
            yield f"{ours}.{a}.{p}", f"{theirs}.{b}.{p}"


def _module_pairs(denoiser: FlowDenoiser) -> Iterator[tuple[str, str, Any]]:
    """``(our prefix, official prefix, our module)`` for every block, in the official order."""
    unet = denoiser.unet
    yield "conv_in", "input_blocks.0.0", None
    k = 1
    for level, down in enumerate(unet.down_blocks):
        for i, resnet in enumerate(down.resnets):
            yield f"down_blocks.{level}.resnets.{i}", f"input_blocks.{k}.0", resnet
            if getattr(down, "attentions", None) is not None:
                yield f"down_blocks.{level}.attentions.{i}", f"input_blocks.{k}.1", down.attentions[i]
            k += 1
        if down.downsamplers:
            yield f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{k}.0.op", None
            k += 1
    mid = unet.mid_block
    yield "mid_block.resnets.0", "middle_block.0", mid.resnets[0]
    yield "mid_block.attentions.0", "middle_block.1", mid.attentions[0]
    yield "mid_block.resnets.1", "middle_block.2", mid.resnets[1]
    k = 0
    for level, up in enumerate(unet.up_blocks):
        attn = getattr(up, "attentions", None) is not None
        for i, resnet in enumerate(up.resnets):
            yield f"up_blocks.{level}.resnets.{i}", f"output_blocks.{k}.0", resnet
            if attn:
                yield f"up_blocks.{level}.attentions.{i}", f"output_blocks.{k}.1", up.attentions[i]
            if up.upsamplers and i == len(up.resnets) - 1:
                yield f"up_blocks.{level}.upsamplers.0.conv", f"output_blocks.{k}.{2 if attn else 1}.conv", None
            k += 1
    yield "time_embedding.linear_1", "time_embed.0", None
    yield "time_embedding.linear_2", "time_embed.2", None
    yield "conv_norm_out", "out.0", None
    yield "conv_out", "out.2", None


def official_to_denoiser(official: dict[str, torch.Tensor], denoiser: FlowDenoiser) -> dict[str, torch.Tensor]:
    """Map an official U-Net state dict onto ``denoiser.state_dict()`` keys, tensor for tensor.

    The official attention's fused ``qkv`` 1-D conv holds, per head, that head's q, k and v rows
    (ADM's legacy ``QKVAttention`` order); they are split into ``to_q``, ``to_k`` and ``to_v`` with
    the head count of ``denoiser.config.num_heads``. Tensors keep their dtype; loading casts them.

    Raises:
        ValueError: one message naming the official keys left unused, the keys the denoiser needs
            that the file lacks, and the tensors whose shapes differ.
    """
    heads = denoiser.config.num_heads
    own = denoiser.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []

    def take(ours: str, theirs: str, fn: Any = None) -> None:
        if theirs not in official:
            missing.append(theirs)
            return
        used.add(theirs)
        value = official[theirs]
        out["unet." + ours] = fn(value) if fn else value

    for ours, theirs, module in _module_pairs(denoiser):
        if isinstance(module, ResnetBlock2D):
            for a, b in _resnet_names(ours, theirs, module):
                take(a, b)
        elif isinstance(module, Attention):
            for p in ("weight", "bias"):
                take(f"{ours}.group_norm.{p}", f"{theirs}.norm.{p}")
                take(f"{ours}.to_out.0.{p}", f"{theirs}.proj_out.{p}", lambda v: v.reshape(v.shape[0], -1).squeeze(-1))
                qkv = f"{theirs}.qkv.{p}"
                if qkv not in official:
                    missing.append(qkv)
                    continue
                used.add(qkv)
                value = official[qkv]
                n = heads or module.heads
                width = value.shape[0] // (3 * n)
                parts = value.reshape(n, 3, width, *value.shape[1:])
                for j, name in enumerate(("to_q", "to_k", "to_v")):
                    part = parts[:, j].reshape(n * width, *value.shape[1:])
                    out[f"unet.{ours}.{name}.{p}"] = part.reshape(part.shape[0], -1).squeeze(-1) if p == "bias" else part.reshape(part.shape[0], -1)
        else:
            for p in ("weight", "bias"):
                take(f"{ours}.{p}", f"{theirs}.{p}")
    unknown = sorted(set(official) - used)
    unfilled = sorted(set(own) - set(out))
    wrong = sorted(
        f"{k} {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in set(own) & set(out) if out[k].shape != own[k].shape
    )
    if unknown or missing or unfilled or wrong:
        parts = [
            f"{what} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (
                ("unknown official keys", unknown),
                ("missing official keys", sorted(missing)),
                ("denoiser tensors not filled", unfilled),
                ("wrong shape", wrong),
            )
            if keys
        ]
        raise ValueError("official state dict does not fit the denoiser: " + "; ".join(parts))
    return out


def _load_denoiser(denoiser: FlowDenoiser, official: dict[str, torch.Tensor], what: str) -> None:
    try:
        state = official_to_denoiser(official, denoiser)
    except ValueError as err:
        raise InputError(f"{what}: {err}") from None
    denoiser.load_state_dict(state, strict=True)


def convert_stage1(checkpoint: str | Path, vgg16: str = "imagenet") -> DiffMatch:
    """The official stage-1 checkpoint as a :class:`DiffMatch` with :data:`OFFICIAL_MODEL` settings.

    Args:
        checkpoint: official ``ema_*.pt`` (or wrapped) stage-1 file.
        vgg16: VGG-16 weights: ``imagenet`` (torch hub cache) or a ``.pth`` path.

    Raises:
        InputError: unreadable file, keys that do not fit, or the VGG-16 weights not available (a
            :class:`~diffmatch.features.MissingWeightsError`).
    """
    official = read_official_state_dict(checkpoint)
    settings = {**OFFICIAL_MODEL, "feature_kwargs": {**OFFICIAL_MODEL["feature_kwargs"], "weights": vgg16}}
    try:
        model = DiffMatch(config_from_dict(settings))
    except MissingWeightsError:  # the ImageNet VGG-16 file: what to download and where (and weights=FILE)
        raise
    except ValueError as err:  # an unreadable --vgg16 file
        raise InputError(str(err)) from None
    _load_denoiser(model.denoiser, official, str(checkpoint))
    return model.eval()


def convert_upsampler(checkpoint: str | Path, stage1: str | Path) -> DiffMatch:
    """The official flow-upsampler checkpoint on top of a converted stage-1 file, as one cascade model.

    Args:
        checkpoint: official ``ema_*.pt`` (or wrapped) upsampler ('sr') file.
        stage1: the stage-1 file written by this module (or any diffmatch stage-1 file of the same U-Net).

    Raises:
        InputError: unreadable files, a stage-1 file that is a cascade already, or keys that do not fit.
    """
    from diffmatch.models.weights import load_checkpoint

    official = read_official_state_dict(checkpoint)
    first = load_checkpoint(stage1)
    if first.upsampler is not None:
        raise InputError(f"{stage1}: already holds an upsampler; pass the stage-1 file")
    model = DiffMatch(first.config, OFFICIAL_UPSAMPLER, features=first.features, denoiser=first.denoiser)
    _load_denoiser(model.upsampler.denoiser, official, str(checkpoint))
    return model.eval()
