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
from typing import Any

from diffmatch.features.base import FeatureExtractor, Features

__all__ = ["FEATURES", "FeatureExtractor", "Features", "build_features"]

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
