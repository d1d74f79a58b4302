"""DIFT, DINOv2 and SD+DINOv2 extractors and the zero-shot matcher, on tiny random checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from zeroshot_fixtures import make_tiny_dino, make_tiny_sd, textured_image

from diffmatch.errors import InputError
from diffmatch.features import build_features
from diffmatch.features.dift import DIFT_PRESETS, DIFTExtractor
from diffmatch.features.dino import DINOv2Extractor
from diffmatch.features.fused import FusedExtractor, fit_pca
from diffmatch.models.zeroshot import ZeroShotMatcher


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return make_tiny_dino(tmp_path_factory.mktemp("tiny-dino"))


@pytest.fixture(scope="module")
def dift(sd_dir):
    return DIFTExtractor(sd_dir, t=261, up_ft_index=(0, 1, 2), ensemble_size=2)


@pytest.fixture(scope="module")
def dino(dino_dir):
    return DINOv2Extractor(dino_dir)


# ------------------------------------------------------------------------------------------- DIFT
def test_dift_shapes_strides_and_channels(dift):
    assert dift.strides == (4, 2, 2) and dift.channels == (64, 32, 32) and dift.multiple == 8
    image = torch.rand(2, 3, 30, 43)
    maps = dift(image).coarse
    for fmap, stride, channels in zip(maps, dift.strides, dift.channels):
        assert fmap.shape == (2, channels, math.ceil(30 / stride), math.ceil(43 / stride))
        assert fmap.dtype == torch.float32 and torch.isfinite(fmap).all()


def test_dift_single_block_matches_multi_block_and_stops_early(sd_dir, dift):
    single = DIFTExtractor(sd_dir, up_ft_index=0, ensemble_size=2)
    calls = []
    handle = single.unet.up_blocks[1].register_forward_pre_hook(lambda *_: calls.append(1))
    image = torch.rand(1, 3, 16, 24)
    try:
        out = single(image).coarse
    finally:
        handle.remove()
    assert calls == []  # the pass stopped after up-block 0
    assert len(out) == 1
    torch.testing.assert_close(out[0], dift(image).coarse[0])


def test_dift_seeded_and_batch_independent(dift):
    image = textured_image(16, 24)
    pair = torch.cat((image, textured_image(16, 24, seed=1)))
    first = dift(pair, seed=3).coarse[1]
    torch.testing.assert_close(first, dift(pair, seed=3).coarse[1])
    torch.testing.assert_close(first[:1], dift(image, seed=3).coarse[1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(first, dift(pair, seed=4).coarse[1])


def test_dift_ensemble_reduces_variance(sd_dir):
    image = textured_image(16, 16)

    def variance_across_seeds(ensemble_size: int) -> float:
        extractor = DIFTExtractor(sd_dir, t=500, up_ft_index=1, ensemble_size=ensemble_size)
        feats = torch.stack([extractor(image, seed=s).coarse[0] for s in range(6)])
        return feats.var(dim=0).mean().item()

    one, eight = variance_across_seeds(1), variance_across_seeds(8)
    assert eight < 0.35 * one  # ideally 1/8


def test_dift_prompt_embeddings_are_cached(dift):
    empty = dift.prompt_embeddings("")
    assert dift.prompt_embeddings("") is empty
    assert empty.shape == (1, dift.tokenizer.model_max_length, 32)
    assert not torch.allclose(dift.prompt_embeddings("a photo of a cat"), empty)


def test_dift_presets_and_bad_arguments(sd_dir):
    geometric = DIFTExtractor.from_preset("geometric", pretrained_model_name_or_path=sd_dir, ensemble_size=1)
    assert (geometric.t, geometric.up_ft_indices) == (0, (2,))
    assert dict(DIFT_PRESETS["semantic"]) == {"t": 261, "up_ft_index": 1}
    with pytest.raises(ValueError, match="preset"):
        DIFTExtractor.from_preset("artistic", pretrained_model_name_or_path=sd_dir)
    with pytest.raises(ValueError, match="t must be"):
        DIFTExtractor(sd_dir, t=1000)
    with pytest.raises(ValueError, match="up_ft_index"):
        DIFTExtractor(sd_dir, up_ft_index=3)
    with pytest.raises(ValueError, match="image"):
        geometric(torch.rand(1, 4, 8, 8))


# ------------------------------------------------------------------------------------------- DINOv2
def test_dino_shapes_and_crop(dino):
    out = dino(torch.rand(2, 3, 30, 43))
    assert out.fine is None and out.coarse[0].shape == (2, 32, 3, 4)
    resized = DINOv2Extractor(dino.model_id, image_size=56)
    assert resized(torch.rand(1, 3, 30, 43)).coarse[0].shape == (1, 32, 4, 4)


def test_dino_with_registers_drops_register_tokens(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, mlp_ratio=2, num_register_tokens=4, image_size=28
    )
    Dinov2WithRegistersModel(config).save_pretrained(tmp_path)
    extractor = DINOv2Extractor(tmp_path)
    assert extractor.num_prefix_tokens == 5
    assert extractor(torch.rand(1, 3, 28, 42)).coarse[0].shape == (1, 32, 2, 3)


# ------------------------------------------------------------------------------------------- fusion
def test_fit_pca_recovers_principal_axis():
    generator = torch.Generator().manual_seed(0)
    axis = torch.tensor([3.0, 4.0, 0.0]) / 5.0
    samples = (torch.randn(500, 1, generator=generator) * 10 * axis + 0.1 * torch.randn(500, 3, generator=generator))
    mean, basis = fit_pca(samples.T.unsqueeze(0) + 7.0, dim=2)
    assert basis.shape == (1, 3, 2) and mean.shape == (1, 3, 1)
    torch.testing.assert_close(basis[0].T @ basis[0], torch.eye(2), atol=1e-5, rtol=0)
    assert abs(float(basis[0, :, 0] @ axis)) > 0.999


@pytest.mark.parametrize("pca_mode", ["per_image", "pair"])
def test_fused_parts_have_unit_norm_times_weight(dift, dino, pca_mode):
    fused = FusedExtractor(sd=dift, dino=dino, alpha=0.3, pca_dim=16, pca_mode=pca_mode)
    assert fused.sd_dims == (16, 16, 16) and fused.channels == 48 + 32
    source, target = textured_image(28, 42), textured_image(28, 42, seed=1)
    feats_s, feats_t = fused.forward_pair(source, target)
    for fmap in (feats_s.coarse[0], feats_t.coarse[0], fused(torch.cat((source, target))).coarse[0]):
        assert fmap.shape[1:] == (80, 2, 3)
        torch.testing.assert_close(fmap[:, :48].norm(dim=1), torch.full_like(fmap[:, 0], 0.3))
        torch.testing.assert_close(fmap[:, 48:].norm(dim=1), torch.full_like(fmap[:, 0], 0.7))


def test_fused_per_image_does_not_mix_the_batch(dift, dino):
    fused = FusedExtractor(sd=dift, dino=dino, pca_dim=8, pca_mode="per_image", feature_size=(4, 5))
    batch = torch.cat((textured_image(28, 42), textured_image(28, 42, seed=1)))
    together = fused(batch).coarse[0]
    assert together.shape == (2, 24 + 32, 4, 5)
    torch.testing.assert_close(together[1:], fused(batch[1:]).coarse[0], atol=1e-5, rtol=1e-4)


def test_fused_pair_pca_is_per_pair(dift, dino):
    fused = FusedExtractor(sd=dift, dino=dino, pca_dim=8, pca_mode="pair")
    src = torch.cat((textured_image(28, 42), textured_image(28, 42, seed=1)))
    tgt = torch.cat((textured_image(28, 42, seed=2), textured_image(28, 42, seed=3)))
    both_s, both_t = fused.forward_pair(src, tgt)
    one_s, one_t = fused.forward_pair(src[1:], tgt[1:])
    torch.testing.assert_close(both_s.coarse[0][1:], one_s.coarse[0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(both_t.coarse[0][1:], one_t.coarse[0], atol=1e-4, rtol=1e-3)


def test_fused_rejects_bad_options(dift, dino):
    with pytest.raises(ValueError, match="alpha"):
        FusedExtractor(sd=dift, dino=dino, alpha=1.5)
    with pytest.raises(ValueError, match="pca_mode"):
        FusedExtractor(sd=dift, dino=dino, pca_mode="joint")


# ------------------------------------------------------------------------------------------- matcher
@pytest.mark.parametrize("name", ["dift", "dino", "fused"])
def test_zero_shot_identity_gives_zero_flow(name, sd_dir, dino_dir):
    models = {"sd_model": None if name == "dino" else str(sd_dir), "dino_model": None if name == "dift" else str(dino_dir)}
    extra = {} if name == "dino" else {"ensemble_size": 1}
    if name == "fused":
        extra.update(pca_dim=16, sd_image_size=(56, 70))  # the default is the paper's 960
    matcher = ZeroShotMatcher.from_name(name, image_size=(56, 70), **models, **extra)
    image = textured_image(50, 66)
    result = matcher.match(image, image.clone())
    assert result.flow.shape == (1, 2, 50, 66) and result.samples.shape == (1, 1, 2, 50, 66)
    assert result.uncertainty.shape == (1, 1, 50, 66) and not result.uncertainty.any()
    assert (result.flow.abs() < 1e-3).float().mean() > 0.95
    keypoints = torch.tensor([[[10.0, 12.0], [40.0, 30.0]]])
    moved = matcher.transfer_keypoints(image, image, keypoints)
    assert moved.shape == (1, 2, 2)
    assert (moved - keypoints).abs().max() < 14  # within one DINOv2 cell of the processing size


def test_zero_shot_recovers_a_translation(sd_dir):
    # target(x) = source(x + (dx, dy)): the flow is (dx, dy) and a source point p moves to p - (dx, dy).
    # Random tiny networks are only roughly translation-equivariant, so medians are compared.
    extractor = DIFTExtractor(sd_dir, t=0, up_ft_index=2, ensemble_size=1)
    matcher = ZeroShotMatcher(extractor)
    big = textured_image(64, 80, seed=5)
    dx, dy = 8, 16
    source, target = big[..., :48, :56], big[..., dy : dy + 48, dx : dx + 56]
    flow = matcher.match(source, target).flow[0]
    interior = flow[:, 8:-24, 8:-16]
    assert (interior[0] - dx).abs().median() < 1 and (interior[1] - dy).abs().median() < 1
    ys, xs = torch.meshgrid(torch.arange(24.5, 44, 2.0), torch.arange(16.5, 48, 2.0), indexing="ij")
    keypoints = torch.stack((xs, ys), dim=-1).view(1, -1, 2)  # cell centres of the stride-2 map
    moved = matcher.transfer_keypoints(source, target, keypoints)
    error = (moved - (keypoints - torch.tensor([dx, dy]))).norm(dim=-1)
    assert error.median() < 1


def test_zero_shot_flow_is_in_original_pixels(dino):
    # Same content at two sizes: the flow must map the target grid onto the 2x larger source.
    image = textured_image(56, 70)
    source = torch.nn.functional.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
    flow = ZeroShotMatcher(dino, image_size=(56, 70)).match(source, image).flow
    assert flow.shape == (1, 2, 56, 70)
    xs = torch.arange(70.0)
    expected_x = (xs + 0.5) * 2 - 0.5 - xs  # target pixel x sits at 2x + 0.5 in the source
    assert (flow[0, 0, 20:36, 14:56] - expected_x[14:56]).abs().median() < 2


def test_from_name_validates(sd_dir):
    with pytest.raises(ValueError, match="unknown zero-shot"):
        ZeroShotMatcher.from_name("raft")
    with pytest.raises(ValueError, match="not used"):
        ZeroShotMatcher.from_name("dino", sd_model=str(sd_dir))
    with pytest.raises(ValueError, match="upsample"):
        ZeroShotMatcher(DIFTExtractor(sd_dir, ensemble_size=1), upsample=0)


def test_registry_builds_the_extractors(dino_dir):
    assert isinstance(build_features("dino", pretrained_model_name_or_path=str(dino_dir)), DINOv2Extractor)


# ------------------------------------------------------------------------------------------- offline
@pytest.mark.parametrize("cls", [DIFTExtractor, DINOv2Extractor])
def test_missing_model_gives_one_clear_error_offline(cls, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError) as err:
        cls("nobody/no-such-model")
    message = str(err.value)
    assert "'nobody/no-such-model'" in message and "hf download nobody/no-such-model" in message
    assert "huggingface-cli" not in message  # no longer installed with huggingface_hub >= 1.0
    assert "\n" not in message


def test_download_command_is_the_installed_hubs():
    from importlib import metadata

    from diffmatch.features.hub import download_command

    major, minor = (int(p) for p in metadata.version("huggingface_hub").split(".")[:2])
    assert download_command() == ("hf download" if (major, minor) >= (0, 34) else "huggingface-cli download")


def test_default_model_id_fails_fast_when_the_hub_cannot_be_reached(monkeypatch, tmp_path, capsys):
    """No HF_HUB_OFFLINE, nothing cached, no network: one line naming the download, not a traceback (#29 item 9)."""
    import huggingface_hub.constants

    from diffmatch.cli.infer import main as infer_main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    image = tmp_path / "a.png"
    image.write_bytes(b"")  # never read: the matcher is built before any pair
    code = infer_main(["--matcher", "dino", "--source", str(image), "--target", str(image), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "'facebook/dinov2-base' is not in the local Hugging Face cache" in err[0]
    assert "cannot be reached" in err[0] and "hf download facebook/dinov2-base --local-dir DIR" in err[0]


def test_missing_or_incomplete_local_directory(tmp_path, sd_dir):
    with pytest.raises(InputError, match="no such Stable Diffusion model directory"):
        DIFTExtractor(str(tmp_path / "absent"))
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(InputError, match="missing"):
        DIFTExtractor(tmp_path / "partial")
    with pytest.raises(InputError, match="could not load DINOv2"):
        DINOv2Extractor(sd_dir / "unet")  # a diffusers config, not a DINOv2 one
