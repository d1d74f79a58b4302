"""ImageNet-C corruptions: all 15 types x 5 severities run, change the image, and are seeded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from diffmatch.data import CORRUPTIONS, SEVERITIES, Corrupted, corrupt
from diffmatch.errors import InputError


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return cv2.resize(skimage.data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)


def test_fifteen_names() -> None:
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15 and SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_and_severity_changes_the_image_deterministically(image, name: str) -> None:
    state = np.random.get_state()
    for severity in SEVERITIES:
        out = corrupt(image, name, severity, seed=11)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.abs(out.astype(np.int16) - image).mean() > 1.0, (
            f"{name} severity {severity} left the image as is"
        )
        assert np.array_equal(out, corrupt(image, name, severity, seed=11))
    # numpy's global RNG is left exactly as it was.
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2:] == after[2:]


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "frost", "glass_blur"])
def test_random_corruptions_depend_on_seed(image, name: str) -> None:
    outs = [corrupt(image, name, 3, seed=s) for s in range(3)]
    assert not (np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], outs[2]))


def test_bad_arguments(image) -> None:
    with pytest.raises(InputError, match="rain"):
        corrupt(image, "rain", 1)
    with pytest.raises(InputError, match="severity"):
        corrupt(image, "fog", 6)
    with pytest.raises(InputError, match="32x32"):
        corrupt(image[:16, :16], "fog", 1)
    with pytest.raises(InputError, match="uint8"):
        corrupt(image.astype(np.float32), "fog", 1)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, image: np.ndarray) -> None:
        self.image = torch.from_numpy(image).permute(2, 0, 1).float() / 255

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        return {
            "source": self.image,
            "target": self.image.flip(-1),
            "flow": torch.zeros(2, 64, 64),
            "index": index,
        }


def test_corrupted_dataset_covers_the_product(image) -> None:
    base = _Pairs(image)
    ds = Corrupted(base, corruptions=None, severity=[1, 2, 3, 4, 5], seed=3)
    assert len(ds) == 2 * 15 * 5
    combos = {(ds[i]["corruption"], ds[i]["severity"]) for i in range(0, 75 * 2, 7)}
    assert len(combos) > 10
    item = ds[75 + 5 * 2 + 3]  # base item 1, corruption #2, severity 4
    assert (item["index"], item["corruption"], item["severity"]) == (1, CORRUPTIONS[2], 4)
    assert item["source"].shape == (3, 64, 64) and item["source"].dtype == torch.float32
    assert not torch.allclose(item["source"], base[1]["source"], atol=0.01)
    assert torch.equal(item["flow"], base[1]["flow"])
    assert torch.equal(item["target"], Corrupted(base, severity=[1, 2, 3, 4, 5], seed=3)[88]["target"])
    single = Corrupted(base, corruptions="fog", severity=2)
    assert len(single) == 2 and single[1]["corruption"] == "fog"
    with pytest.raises(InputError, match="snowfall"):
        Corrupted(base, corruptions=["snowfall"])
    with pytest.raises(InputError, match="severity"):
        Corrupted(base, severity=0)
