"""The photo checks of ``diffmatch fetch-photos`` (:mod:`diffmatch.data.fetch_photos`; no download: images are made here)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def fetch():
    from diffmatch.data import fetch_photos

    return fetch_photos


def _photo(seed: int, size=(640, 480)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # smooth content: a difference hash sees structure
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def test_small_and_flat_images_are_rejected_photos_are_taken(fetch):
    assert fetch.reject_reason(_photo(0)) is None
    assert "too small" in fetch.reject_reason(_photo(0, (400, 300)))
    flat = Image.new("RGB", (640, 480), (200, 30, 30))
    assert "not a photograph" in fetch.reject_reason(flat)
    assert fetch.is_raster_path("a/b.JPG") and not fetch.is_raster_path("a/b.svg")


def test_a_resized_recompressed_copy_is_a_duplicate_another_photo_is_not(fetch, tmp_path):
    original = _photo(1)
    copy_path = tmp_path / "copy.jpg"
    fetch.downsize(original, 320).save(copy_path, quality=70)
    seen = {fetch.dhash(original): "original"}
    assert fetch.find_duplicate(fetch.dhash(Image.open(copy_path)), seen) == "original"
    assert fetch.find_duplicate(fetch.dhash(_photo(2)), seen) is None


def test_downsize_never_enlarges_and_keeps_the_aspect(fetch):
    assert fetch.downsize(_photo(0, (2048, 1024)), 1024).size == (1024, 512)
    assert fetch.downsize(_photo(0, (640, 480)), 1024).size == (640, 480)
