"""Condition-feature extractors, chosen by name.

======================  ======================================================  ====================
name                    extractor                                               module
======================  ======================================================  ====================
``vgg16``               frozen VGG-16 pyramid (the paper's)                     :mod:`.vgg`
``dift``                Stable Diffusion U-Net up-block features (DIFT)         :mod:`.dift`
``dino``                DINOv2 last-layer patch tokens                          :mod:`.dino`
``fused``               SD + DINOv2, L2-normalised, weighted and concatenated   :mod:`.fused`
``efficientnet_lite0``  frozen EfficientNet-Lite0 (ImageNet), strides 8 and 16  :mod:`.efficientnet`
``xfeat``               frozen XFeat matching descriptors (64-d, stride 8)      :mod:`.xfeat`
======================  ======================================================  ====================
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from diffmatch.features.base import FeatureExtractor, Features

__all__ = ["FEATURES", "FeatureExtractor", "Features", "build_features", "offline_kwargs"]

# name -> (module, class); imported lazily so that VGG users never import diffusers or transformers.
FEATURES: dict[str, tuple[str, str]] = {
    "vgg16": ("diffmatch.features.vgg", "VGG16Pyramid"),
    "dift": ("diffmatch.features.dift", "DIFTExtractor"),
    "dino": ("diffmatch.features.dino", "DINOv2Extractor"),
    "fused": ("diffmatch.features.fused", "FusedExtractor"),
    "efficientnet_lite0": ("diffmatch.features.efficientnet", "EfficientNetLite0Features"),
    "xfeat": ("diffmatch.features.xfeat", "XFeatFeatures"),
}


def build_features(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a feature extractor by name (see the table above); ``kwargs`` go to its constructor."""
    if name not in FEATURES:
        raise ValueError(f"unknown features {name!r}, expected one of {sorted(FEATURES)}")
    module, cls = FEATURES[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


def offline_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``weights: random`` for a backbone whose weights a checkpoint will restore.

    Use it to build an extractor that a checkpoint fills next: the backbone's pretrained weights (and
    the package or download that supplies them) are not needed, as the checkpoint holds them.
    Extractors whose weights stay outside checkpoints (``stores_weights = False``: DIFT, DINOv2), and
    extractors without a ``weights`` argument, keep ``kwargs`` as they are.
    """
    if name not in FEATURES:
        return dict(kwargs)
    module, cls = FEATURES[name]
    extractor = getattr(importlib.import_module(module), cls)
    if not extractor.stores_weights or "weights" not in inspect.signature(extractor).parameters:
        return dict(kwargs)
    return {**kwargs, "weights": "random"}
