"""The paper's data configs: roots are required, with one clear line, and they build when given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from diffmatch.data.datamodule import DataConfig, build_dataset
from diffmatch.data.moving_objects import MovingObjectsConfig
from diffmatch.errors import InputError
from diffmatch.io import save_image

ROOT = Path(__file__).resolve().parents[2]
HEADER = "fname,aff/tps/homo," + ",".join(f"t{i}" for i in range(1, 19))


def _texture(shape: tuple[int, int], seed: int) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (shape[0] // 8, shape[1] // 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def dped_root(tmp_path: Path) -> Path:
    """A miniature DPED-CityScape-ADE folder: one original and both CSVs (an affine and a homography row)."""
    root = tmp_path / "training_datasets"
    (root / "original_images").mkdir(parents=True)
    save_image(root / "original_images" / "1.jpg", _texture((400, 560), 0))
    rows = [
        "original_images/1.jpg,0,1.1,0.1,0.05,-0.1,0.9,0.0" + ",0" * 12,
        "original_images/1.jpg,2,1.05,0.02,-20,0.01,0.98,5,0.00002,0.00001,1" + ",0" * 9,
    ]
    for split in ("train", "test"):
        (root / f"homo_aff_tps_{split}_DPED_CityScape_ADE.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return root


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "images" / "train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    save_image(root / "images" / "train2014" / "a.jpg", _texture((200, 240), 1))
    polygon = [40, 30, 180, 40, 200, 150, 90, 190, 30, 120]
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 200, "width": 240}],
        "annotations": [{"id": 5, "image_id": 1, "iscrowd": 0, "area": 20000, "segmentation": [polygon]}],
    }
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
    return root


def _data_section(*configs: str) -> dict:
    """The ``data`` section of stacked configs (later files update earlier splits)."""
    data: dict = {}
    for name in configs:
        section = yaml.safe_load((ROOT / "configs" / name).read_text()).get("data", {})
        for key, value in section.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def test_missing_roots_are_one_line_naming_datasets_downloads_and_layout():
    with pytest.raises(InputError) as err:
        DataConfig("csv", csv="x.csv")
    message = str(err.value)
    assert "\n" not in message
    for needed in (
        "data.train.root",
        "DPED-CityScape-ADE",
        "original_images/",
        "CityScape_extra/",
        "ADE20K_2016_07_26/",
        "cityscapes-dataset.com",
        "homo_aff_tps_",
        "data/README.md",
    ):
        assert needed in message
    with pytest.raises(
        InputError, match=r"objects.root .*COCO 2014 .*instances_train2014.json .*cocodataset.org"
    ):
        DataConfig("synthetic", objects=MovingObjectsConfig())
    with pytest.raises(InputError, match="HPatches"):
        DataConfig("hpatches")
    DataConfig("synthetic")  # the bundled photos stand in for the demo and CPU configs


def test_paper_data_sections_require_roots():
    for configs in (("paper.yaml",), ("paper.yaml", "paper_eth3d.yaml")):
        data = _data_section(*configs)
        for split in ("train", "val"):
            kwargs = _with_objects(data[split]) if "objects" in data[split] else data[split]
            with pytest.raises(InputError, match="not set"):
                DataConfig(**kwargs)


def _with_objects(split: dict, root: str | None = None) -> dict:
    return {**split, "objects": MovingObjectsConfig(**{**split["objects"], "root": root})}


def test_paper_configs_build_with_roots(dped_root: Path, coco_root: Path):
    data = _data_section("paper.yaml")
    train = build_dataset(DataConfig(**{**data["train"], "root": str(dped_root)}))
    val = build_dataset(DataConfig(**{**data["val"], "root": str(dped_root)}))
    assert len(train) == 2 and len(val) == 2
    item = train[1]
    assert item["source"].shape == (3, 520, 520) and item["flow"].shape == (2, 520, 520)
    eth3d = _data_section("paper.yaml", "paper_eth3d.yaml")["train"]
    config = DataConfig(**{**_with_objects(eth3d, str(coco_root)), "root": str(dped_root)})
    assert config.objects.number == 1 and config.objects.probability == 0.9
    item = build_dataset(config)[0]
    assert item["object_mask"].shape == (520, 520)


def test_train_cli_fails_before_building_the_model():
    from diffmatch.cli.train import main

    with pytest.raises(Exception) as err:
        main(["--config", str(ROOT / "configs" / "paper.yaml")], run=False)
    cause = err.value
    while cause is not None and not isinstance(cause, InputError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None and "DPED-CityScape-ADE" in str(cause)


@pytest.mark.slow
def test_train_py_prints_one_line_and_exits_nonzero(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "paper.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "data.train.root" in lines[0] and "DPED-CityScape-ADE" in lines[0]
