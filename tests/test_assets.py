"""``diffmatch.assets``: the shipped files are found inside the package, the fetched photos where they belong."""

from __future__ import annotations

from pathlib import Path

import pytest

import diffmatch
from diffmatch import assets
from diffmatch.data import DataConfig, bundled_photos, list_images
from diffmatch.data.datamodule import build_dataset
from diffmatch.errors import InputError
from diffmatch.matcher import BUNDLED_CHECKPOINT

PACKAGE = Path(diffmatch.__file__).resolve().parent


def test_shipped_files_are_inside_the_package():
    checkpoint = assets.bundled_checkpoint()
    assert checkpoint == assets.BUNDLED_CHECKPOINT == BUNDLED_CHECKPOINT
    assert checkpoint.name == "diffmatch_xfeat_stage2.pt"  # the default is the cascade
    assert assets.bundled_stage1() == assets.BUNDLED_STAGE1 == checkpoint.with_name("diffmatch_xfeat.pt")
    for model in (checkpoint, assets.BUNDLED_STAGE1):
        assert model.is_file() and model.stat().st_size > 10_000_000
    source, target = assets.sample_pair()
    assert source.is_file() and target.is_file()
    for split, count in (("train", 12), ("val", 5)):
        folder = assets.photo_folder(split)
        assert folder == bundled_photos(split) and len(list_images(folder)) == count
    for path in (checkpoint, source, assets.photo_folder("val")):
        assert path.is_relative_to(PACKAGE / "assets"), path


def test_unknown_photo_folder_is_refused():
    with pytest.raises(InputError, match=r"photo folder must be one of \('train', 'val', 'extra'\), got 'test'"):
        assets.photo_folder("test")


def test_fetched_photos_follow_diffmatch_home_then_the_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFMATCH_HOME", str(tmp_path / "home"))
    assert assets.fetched_photos() == tmp_path / "home" / "photos" / "extra"
    assert assets.photo_folder("extra") == assets.resolve_photo_root("photos:extra") == assets.fetched_photos()
    monkeypatch.delenv("DIFFMATCH_HOME")
    root = assets.checkout_root()
    if root is not None:  # these tests normally run from a checkout
        assert root == PACKAGE.parent and assets.fetched_photos() == root / "data" / "photos" / "extra"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert assets.data_home() == tmp_path / "cache" / "diffmatch"


def test_config_roots_name_the_photo_folders(tmp_path):
    assert assets.resolve_photo_root("photos:val") == bundled_photos("val")
    assert assets.resolve_photo_root(str(tmp_path)) == tmp_path
    dataset = build_dataset(DataConfig(dataset="synthetic", root=["photos:train", "photos:val"], size=(32, 32), length=2))
    assert len(dataset.images) == 17


def test_missing_fetched_photos_say_which_command_fetches_them_and_where(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFMATCH_HOME", str(tmp_path / "home"))
    extra = tmp_path / "home" / "photos" / "extra"
    with pytest.raises(InputError) as err:
        build_dataset(DataConfig(dataset="synthetic", root=["photos:train", "photos:extra"], size=(32, 32)))
    message = str(err.value)
    assert "\n" not in message and "`diffmatch fetch-photos` downloads them into" in message and str(extra) in message
    from diffmatch.confidence.fitting import calibration_pairs

    with pytest.raises(InputError, match="`diffmatch fetch-photos` downloads them into"):
        calibration_pairs(assets.fetched_photos(), 4)
