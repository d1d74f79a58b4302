"""SPair-71k / PF-Pascal loaders and PCK@α, on fixtures written in the datasets' layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from zeroshot_fixtures import make_tiny_dino, textured_image

from diffmatch.errors import InputError
from diffmatch.evaluation.semantic import PFPascalDataset, SPairDataset, evaluate_pck, pck
from diffmatch.features.dino import DINOv2Extractor
from diffmatch.models.zeroshot import ZeroShotMatcher

H, W = 56, 70  # multiples of DINOv2's patch size, so cell centres are exact


def _save_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (textured_image(H, W, seed=seed)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path, quality=95)


def _spair(root: Path, layout: bool) -> Path:
    pairs = {
        "000001-a-b:cat": {"src": "a", "trg": "b", "category": "cat", "kps": [[6.5, 6.5], [34.5, 20.5]]},
        "000002-a-a:cat": {"src": "a", "trg": "a", "category": "cat", "kps": [[20.5, 34.5]]},
        "000003-c-c:dog": {"src": "c", "trg": "c", "category": "dog", "kps": [[48.5, 6.5], [62.5, 48.5]]},
    }
    for name, p in pairs.items():
        for im in (p["src"], p["trg"]):
            _save_image(root / "JPEGImages" / p["category"] / f"{im}.jpg", seed=ord(im))
        ann = {
            "src_imname": f"{p['src']}.jpg",
            "trg_imname": f"{p['trg']}.jpg",
            "src_kps": p["kps"],
            "trg_kps": p["kps"],
            "src_bndbox": [0, 0, 40, 30],
            "trg_bndbox": [10, 5, 60, 45],
            "category": p["category"],
            "src_imsize": [W, H, 3],
            "trg_imsize": [W, H, 3],
        }
        (root / "PairAnnotation" / "test").mkdir(parents=True, exist_ok=True)
        (root / "PairAnnotation" / "test" / f"{name}.json").write_text(json.dumps(ann))
    if layout:
        (root / "Layout" / "large").mkdir(parents=True)
        (root / "Layout" / "large" / "test.txt").write_text("000001-a-b:cat\n000003-c-c:dog\n")
    return root


def _pfpascal(root: Path) -> Path:
    for im, seed in (("2009_000001", 1), ("2009_000002", 2)):
        _save_image(root / "JPEGImages" / f"{im}.jpg", seed=seed)
        kps = np.array([[6.5, 6.5], [np.nan, np.nan], [34.5, 20.5]])
        if im == "2009_000002":
            kps = np.array([[8.0, 9.0], [20.0, 20.0], [np.nan, np.nan]])
        (root / "Annotations" / "cat").mkdir(parents=True, exist_ok=True)
        savemat(root / "Annotations" / "cat" / f"{im}.mat", {"kps": kps, "bbox": np.array([[2, 3, 52, 43]])})
    (root / "test_pairs_pf_pascal.csv").write_text(
        "source_image,target_image,class,flip\n"
        "PF-dataset-PASCAL/JPEGImages/2009_000001.jpg,PF-dataset-PASCAL/JPEGImages/2009_000002.jpg,8,0\n"
        "PF-dataset-PASCAL/JPEGImages/2009_000001.jpg,PF-dataset-PASCAL/JPEGImages/2009_000001.jpg,8,0\n"
    )
    return root


class _OffsetMatcher:
    """Returns the ground truth moved by a fixed offset (looked up by source keypoints)."""

    def __init__(self, dataset, offset: tuple[float, float]):
        self.truth = {(str(p.source), str(p.target)): p.target_kps for p in dataset}
        self.offset = torch.tensor(offset)

    def transfer_keypoints(self, source, target, keypoints):
        truth = torch.from_numpy(self.truth[(str(source), str(target))])
        return (truth + self.offset).unsqueeze(0)


def test_pck_threshold():
    pred = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert pck(pred, torch.zeros(3, 2), 100.0, 0.05).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="alpha"):
        pck(pred, torch.zeros(3, 2), 100.0, 0.0)


def test_spair_loader_reads_the_layout(tmp_path):
    dataset = SPairDataset(_spair(tmp_path / "SPair-71k", layout=True), split="test")
    assert len(dataset) == 2  # the Layout list selects pairs
    pair = dataset[0]
    assert pair.source.name == "a.jpg" and pair.target.parent.name == "cat" and pair.category == "cat"
    assert pair.source_kps.shape == (2, 2) and pair.target_bbox.tolist() == [10, 5, 60, 45]
    assert len(SPairDataset(_spair(tmp_path / "no-layout", layout=False), "test")) == 3
    assert len(SPairDataset(tmp_path / "no-layout", "test", categories=["dog"])) == 1


def test_pfpascal_loader_drops_missing_keypoints(tmp_path):
    dataset = PFPascalDataset(_pfpascal(tmp_path / "PF-dataset-PASCAL"), split="test")
    assert len(dataset) == 2
    pair = dataset[0]
    assert pair.category == "cat" and pair.source.name == "2009_000001.jpg" and pair.source.is_file()
    np.testing.assert_allclose(pair.source_kps, [[6.5, 6.5]])  # row 2 absent in source, row 3 in target
    np.testing.assert_allclose(pair.target_kps, [[8.0, 9.0]])
    assert pair.source_bbox.tolist() == [2, 3, 52, 43]


def test_loaders_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        SPairDataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="split"):
        SPairDataset(tmp_path, split="train")
    root = _pfpascal(tmp_path / "pf")
    (root / "test_pairs_pf_pascal.csv").write_text("source_image,target_image,class\na.jpg,b.jpg,21\n")
    with pytest.raises(InputError, match="class"):
        PFPascalDataset(root)


def test_evaluate_pck_counts_bbox_and_image_thresholds(tmp_path):
    dataset = SPairDataset(_spair(tmp_path / "SPair-71k", layout=False), split="test")
    # Offset of 6 px: target bbox side is 50 (3.5 / 7.5 px at 0.05 / 0.15), image side 70 (3.5 / 10.5 px).
    scores = evaluate_pck(_OffsetMatcher(dataset, (6.0, 0.0)), dataset, alphas=(0.05, 0.15))
    assert scores["num_pairs"] == 3 and scores["num_keypoints"] == 5
    assert scores["pck_bbox@0.05"] == 0.0 and scores["pck_bbox@0.15"] == 1.0
    assert scores["pck_img@0.05"] == 0.0 and scores["pck_img@0.15"] == 1.0
    assert scores["per_category"]["dog"]["num_keypoints"] == 2
    perfect = evaluate_pck(_OffsetMatcher(dataset, (0.0, 0.0)), dataset, limit=1)
    assert perfect["num_pairs"] == 1 and perfect["pck_bbox@0.05"] == 1.0


def test_evaluate_pck_with_zero_shot_matcher(tmp_path):
    dataset = PFPascalDataset(_pfpascal(tmp_path / "PF-dataset-PASCAL"), split="test")
    matcher = ZeroShotMatcher(DINOv2Extractor(make_tiny_dino(tmp_path / "dino")))
    scores = evaluate_pck(matcher, [dataset[1]], alphas=(0.1,))  # identical images, keypoints at cell centres
    assert scores["pck_img@0.1"] == 1.0 and scores["num_keypoints"] == 2
