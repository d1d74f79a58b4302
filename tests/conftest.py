from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Tests share two cores with whatever else runs; one intra-op thread keeps timings sane.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def photo() -> np.ndarray:
    """A real photo (scikit-image's bundled astronaut), 128x128 RGB uint8."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
