"""The PyTorch solver of the variational refinement runs OpenCV's iteration: same grayscale, same
flow after one run, on every flow of a batch independently."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from diffmatch.geometry import warp
from diffmatch.inputs import to_gray_uint8
from diffmatch.refinement import to_gray255, variational_step


def test_grayscale_is_opencvs_to_the_last_level():
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    gray = to_gray255(images)
    assert gray.shape == (2, 1, 40, 56)
    for i in range(2):
        assert np.array_equal(gray[i, 0].numpy(), to_gray_uint8(images[i]).astype(np.float32))


def _pair(photo: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grayscale source and target (the source warped by a smooth flow), and that flow."""
    source = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    ys, xs = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    truth = torch.stack((1.5 + torch.sin(ys / 20), -0.8 + 0.5 * torch.cos(xs / 25)))[None]
    target, _ = warp(source, truth, padding_mode="border")
    return to_gray255(source), to_gray255(target), truth


def test_one_run_matches_opencvs_variational_refinement(photo):
    source, target, truth = _pair(photo)
    g = torch.Generator().manual_seed(0)
    start = truth + torch.nn.functional.interpolate(torch.rand(1, 2, 8, 8, generator=g) * 2 - 1, size=(128, 128))
    expected = start[0].permute(1, 2, 0).numpy().copy()
    cv2.VariationalRefinement_create().calc(
        target[0, 0].numpy().astype(np.uint8), source[0, 0].numpy().astype(np.uint8), expected
    )
    expected = torch.from_numpy(expected).permute(2, 0, 1)[None]
    refined = variational_step(target, source, start)
    assert (expected - start).norm(dim=1).mean() > 0.2  # one run moves the flow
    difference = (refined - expected).norm(dim=1)
    assert difference.mean() < 1e-4 and difference.max() < 1e-2  # measured 4e-6 and 1e-3
    assert (refined - truth).norm(dim=1).mean() < (start - truth).norm(dim=1).mean()


def test_flows_of_a_batch_are_refined_independently(photo):
    source, target, truth = _pair(photo)
    starts = torch.cat((truth + 0.7, truth - 0.4))
    both = variational_step(target.expand(2, -1, -1, -1), source.expand(2, -1, -1, -1), starts, 2, 3)
    for i in range(2):
        alone = variational_step(target, source, starts[i : i + 1], 2, 3)
        torch.testing.assert_close(both[i : i + 1], alone, atol=1e-5, rtol=0)
