"""Real-pair loaders (generic list, HPatches, ETH3D) on fixtures built here, and the DataModule."""

from __future__ import annotations

import os
import pickle

import cv2
import lightning as L
import numpy as np
import pytest
import torch

from diffmatch.data import (
    ETH3D,
    DataConfig,
    GenericPairs,
    HPatches,
    PairDataModule,
    PhotometricConfig,
    SyntheticBenchmark,
    SyntheticPairs,
    build_dataset,
)
from diffmatch.data.datamodule import _EpochSampler
from diffmatch.errors import InputError
from diffmatch.geometry import warp
from diffmatch.io import save_image, write_flow


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(h // 5, 2), max(w // 5, 2), 3), dtype=np.uint8)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------------------------------------- generic
@pytest.fixture
def generic_list(tmp_path):
    big = _texture(60, 80)
    source, target = big[:40, :60], big[5:45, 3:63]  # target(x) = source(x + (3, 5))
    save_image(tmp_path / "s.png", source)
    save_image(tmp_path / "t.png", target)
    flow = np.broadcast_to(np.float32([3.0, 5.0]), (40, 60, 2)).copy()
    write_flow(tmp_path / "f.flo", flow)
    write_flow(tmp_path / "f.png", flow, valid=np.arange(60)[None, :].repeat(40, 0) % 2 == 0)
    mask = np.zeros((40, 60), np.uint8)
    mask[:20] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    (tmp_path / "sub").mkdir()
    lines = [
        "# source target flow [mask]",
        "source,target,flow,mask",
        "s.png t.png f.flo",
        "s.png, t.png, f.png   # KITTI flow with its own validity",
        "s.png\tt.png\tf.flo\tm.png",
        "",
    ]
    (tmp_path / "pairs.txt").write_text("\n".join(lines))
    return tmp_path / "pairs.txt"


def test_generic_pairs_reads_formats_and_masks(generic_list) -> None:
    ds = GenericPairs(generic_list)
    assert len(ds) == 3
    plain, kitti, masked = ds[0], ds[1], ds[2]
    assert plain["source"].shape == (3, 40, 60) and plain["flow"].shape == (2, 40, 60)
    torch.testing.assert_close(plain["flow"][:, 0, 0], torch.tensor([3.0, 5.0]))
    # Valid = lands in the source frame: the last 3 columns and 5 rows point outside.
    expected = torch.zeros(40, 60, dtype=torch.bool)
    expected[:35, :57] = True
    assert torch.equal(plain["mask"], expected)
    assert torch.equal(kitti["mask"], expected & (torch.arange(60) % 2 == 0)[None])
    assert torch.equal(masked["mask"], expected & (torch.arange(40) < 20)[:, None])
    warped, _ = warp(plain["source"][None], plain["flow"][None])
    assert (warped[0] - plain["target"]).abs()[:, plain["mask"]].max() < 1e-5
    assert plain["name"].endswith("_t")


def test_generic_pairs_errors(generic_list, tmp_path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("s.png t.png\n")
    with pytest.raises(InputError, match="bad.txt:1"):
        GenericPairs(bad)
    bad.write_text("s.png t.png nope.flo\n")
    with pytest.raises(InputError, match="nope.flo"):
        GenericPairs(bad)
    save_image(tmp_path / "small.png", _texture(10, 10))
    bad.write_text("s.png small.png f.flo\n")
    with pytest.raises(InputError, match="flow is"):
        GenericPairs(bad)[0]


# ---------------------------------------------------------------------------------------------- HPatches
@pytest.fixture
def hpatches_root(tmp_path):
    root = tmp_path / "hpatches-sequences-release"
    h1 = np.array([[1.05, 0.04, -4.0], [-0.03, 0.97, 3.0], [2e-4, -1e-4, 1.0]])
    for seq in ("v_fixture", "i_fixture"):
        (root / seq).mkdir(parents=True)
        image = _texture(60, 80, seed=1)
        cv2.imwrite(str(root / seq / "1.ppm"), image)
        for k in (2, 3):
            h = h1 if k == 2 else np.eye(3)
            # cv2 warpPerspective uses pixel-centre coordinates: dst(H x) = src(x).
            warped = cv2.warpPerspective(image, h, (70, 50), flags=cv2.INTER_LINEAR)
            cv2.imwrite(str(root / seq / f"{k}.ppm"), warped)
            np.savetxt(root / seq / f"H_1_{k}", h)
    return root


def test_hpatches_original_size(hpatches_root) -> None:
    ds = HPatches(hpatches_root, size=None, pairs=(2, 3))
    assert [item for item in ds.items] == [(hpatches_root / "v_fixture", 2), (hpatches_root / "v_fixture", 3)]
    item = ds[0]
    assert item["name"] == "v_fixture/1_2"
    assert item["source"].shape == (3, 60, 80) and item["target"].shape == (3, 50, 70)
    assert item["flow"].shape == (2, 50, 70)
    # A target pixel and its source match, computed independently with the matrix.
    x = np.array([20.0, 30.0, 1.0])
    src = np.linalg.solve(np.loadtxt(hpatches_root / "v_fixture" / "H_1_2"), x)
    torch.testing.assert_close(
        item["flow"][:, 30, 20], torch.tensor(src[:2] / src[2] - x[:2]).float(), atol=1e-4, rtol=0
    )
    warped, _ = warp(item["source"][None], item["flow"][None])
    err = (warped[0] - item["target"]).abs().amax(0)[item["mask"]]
    assert err.mean() < 0.01
    assert torch.equal(ds[1]["flow"], torch.zeros(2, 50, 70))  # identity homography


def test_hpatches_resized_homography_stays_consistent(hpatches_root) -> None:
    full = HPatches(hpatches_root, size=None)[0]
    small = HPatches(hpatches_root, size=(30, 40))[0]
    assert small["source"].shape == (3, 30, 40) and small["flow"].shape == (2, 30, 40)
    # Target pixel (x, y) at 40x30 is (x + 0.5) * 70/40 - 0.5 at full size; its match scales by 80/40.
    x, y = 12, 20
    xf, yf = (x + 0.5) * 70 / 40 - 0.5, (y + 0.5) * 50 / 30 - 0.5
    h = np.loadtxt(hpatches_root / "v_fixture" / "H_1_2")
    s = np.linalg.solve(h, [xf, yf, 1.0])
    sx, sy = (s[0] / s[2] + 0.5) * 40 / 80 - 0.5, (s[1] / s[2] + 0.5) * 30 / 60 - 0.5
    torch.testing.assert_close(
        small["flow"][:, y, x], torch.tensor([sx - x, sy - y]).float(), atol=1e-4, rtol=0
    )
    assert full["mask"].float().mean() > 0.5
    assert len(HPatches(hpatches_root, subset="all")) == 4
    with pytest.raises(InputError, match="subset"):
        HPatches(hpatches_root, subset="v")


# ---------------------------------------------------------------------------------------------- ETH3D
@pytest.fixture
def eth3d_root(tmp_path):
    root = tmp_path / "ETH3D"
    images = root / "multiview_testing" / "lakeside" / "images"
    images.mkdir(parents=True)
    save_image(images / "a.png", _texture(40, 50, seed=2))
    save_image(images / "b.png", _texture(30, 45, seed=3))
    pairs = [
        {
            "source_image": "multiview_testing/lakeside/images/a.png",
            "target_image": "multiview_testing/lakeside/images/b.png",
            "Xs": np.array([10.0, 20.5, 49.0]),
            "Ys": np.array([5.0, 7.25, 39.0]),
            "Xt": np.array([12.2, 3.0, 100.0]),  # the last target point is outside the image
            "Yt": np.array([4.9, 8.0, 10.0]),
        }
    ]
    info = root / "info_ETH3D_files"
    info.mkdir()
    for rate in (3, 5):
        with open(info / f"lakeside_every_5_rate_of_{rate}", "wb") as handle:
            pickle.dump(pairs, handle)
    return root


def test_eth3d_sparse_ground_truth(eth3d_root) -> None:
    ds = ETH3D(eth3d_root, rates=(3, 5), scenes=("lakeside",))
    assert len(ds) == 2
    item = ds[1]
    assert item["rate"] == 5 and item["scene"] == "lakeside" and item["name"] == "lakeside/rate_5/0000"
    assert item["flow"].shape == (2, 30, 45) and item["mask"].sum() == 2
    assert item["mask"][5, 12] and item["mask"][8, 3]
    torch.testing.assert_close(item["flow"][:, 5, 12], torch.tensor([10.0 - 12.2, 5.0 - 4.9]))
    torch.testing.assert_close(item["flow"][:, 8, 3], torch.tensor([17.5, -0.75]))
    assert item["flow"][:, ~item["mask"]].abs().max() == 0


def test_eth3d_refuses_unsafe_or_missing_lists(eth3d_root) -> None:
    with pytest.raises(InputError, match="rate_of_7"):
        ETH3D(eth3d_root, rates=(7,), scenes=("lakeside",))
    with open(eth3d_root / "info_ETH3D_files" / "lakeside_every_5_rate_of_9", "wb") as handle:
        pickle.dump([{"source_image": os.getcwd}], handle)  # a callable: must not be unpickled
    with pytest.raises(InputError, match="refusing"):
        ETH3D(eth3d_root, rates=(9,), scenes=("lakeside",))


# ---------------------------------------------------------------------------------------------- DataModule
def test_datamodule_default_builds_and_yields_a_batch() -> None:
    dm = PairDataModule(
        train=DataConfig("synthetic", size=(32, 48), length=6),
        val=DataConfig("benchmark", size=(32, 48), length=3, level="hard"),
        batch_size=2,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["source"].shape == (2, 3, 32, 48) and batch["flow"].shape == (2, 2, 32, 48)
    assert batch["mask"].shape == (2, 32, 48) and batch["mask"].dtype == torch.bool
    val = next(iter(dm.val_dataloader()))
    assert val["target"].shape == (2, 3, 32, 48) and val["name"][0].startswith("hard/")


def test_datamodule_defaults_use_bundled_photos() -> None:
    dm = PairDataModule()
    dm.setup()
    assert isinstance(dm.train_set, SyntheticPairs) and isinstance(dm.val_set, SyntheticBenchmark)
    assert dm.val_set[0]["source"].shape == (3, 256, 256)


def test_trainer_sees_new_pairs_each_epoch() -> None:
    seen: list[torch.Tensor] = []

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            seen.append(batch["flow"].clone())
            return (self.weight - batch["flow"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = PairDataModule(train=DataConfig("synthetic", size=(16, 16), length=1), batch_size=1)
    trainer = L.Trainer(
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(Probe(), datamodule=dm)
    assert len(seen) == 2 and dm.train_set.epoch == 1
    assert not torch.equal(seen[0], seen[1])


def test_datamodule_real_val_uses_batch_size_one(generic_list) -> None:
    dm = PairDataModule(val=DataConfig("generic", root=str(generic_list), size=None), batch_size=4)
    assert dm.val_dataloader().batch_size == 1
    with pytest.raises(InputError, match="size must be None"):
        build_dataset(DataConfig("generic", root=str(generic_list)))
    corrupted = build_dataset(
        DataConfig("generic", root=str(generic_list), size=None, corruptions=["fog", "contrast"], severity=2)
    )
    assert len(corrupted) == 6 and corrupted[1]["corruption"] == "contrast"


def test_photometric_ranges_reach_synthetic_and_scene_pairs_only() -> None:
    noisy = build_dataset(DataConfig("synthetic", size=(16, 16), length=2, photometric=PhotometricConfig(noise_probability=1.0)))
    assert noisy.photometric.noise_probability == 1.0
    assert build_dataset(DataConfig("synthetic", size=(16, 16), length=2)).photometric == PhotometricConfig()
    with pytest.raises(InputError, match="photometric ranges apply to synthetic and scene pairs only, not to .benchmark."):
        build_dataset(DataConfig("benchmark", size=(16, 16), length=2, photometric=PhotometricConfig()))


def test_supervise_out_of_frame_reaches_synthetic_pairs_only() -> None:
    assert build_dataset(DataConfig("synthetic", size=(16, 16), length=2, supervise_out_of_frame=True)).supervise_out_of_frame
    assert not build_dataset(DataConfig("synthetic", size=(16, 16), length=2)).supervise_out_of_frame
    with pytest.raises(InputError, match="supervise_out_of_frame applies to synthetic pairs only, not to 'benchmark'"):
        build_dataset(DataConfig("benchmark", size=(16, 16), length=2, supervise_out_of_frame=True))


def test_sampler_forwards_epoch_and_splits_ranks() -> None:
    config = DataConfig("synthetic", size=(16, 16), length=10)
    dataset = build_dataset(config)
    ranks = [list(_EpochSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) + len(ranks[1]) == 10
    sampler = _EpochSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(4)
    assert dataset.epoch == 4



def _record_training(dm: PairDataModule, root, max_steps: int, ckpt_path=None) -> list[float]:
    """Fit a one-parameter probe, checkpointing every 3 steps; return a fingerprint of each batch."""
    seen: list[float] = []

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            seen.append(round(float(batch["flow"].abs().sum()), 3))
            return (self.weight - batch["flow"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root, filename="{step}", every_n_train_steps=3, save_top_k=-1
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        callbacks=[checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(Probe(), datamodule=dm, ckpt_path=ckpt_path)
    return seen


def test_mid_epoch_resume_continues_the_epoch_instead_of_replaying_it(tmp_path) -> None:
    # An interrupted job resumed from its last periodic checkpoint sees the pairs an uninterrupted
    # job would have seen next, not the epoch's first pairs again.
    def datamodule() -> PairDataModule:
        return PairDataModule(train=DataConfig("synthetic", size=(16, 16), length=20), batch_size=2)

    straight = _record_training(datamodule(), tmp_path / "straight", max_steps=7)
    resumed = _record_training(
        datamodule(), tmp_path / "resumed", max_steps=7, ckpt_path=tmp_path / "straight" / "step=3.ckpt"
    )
    assert len(set(straight)) == 7
    assert resumed == straight[3:]
