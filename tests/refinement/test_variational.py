"""VariationalRefiner: sub-pixel motions are recovered from a rough flow, in every layout it accepts,
by both solvers (OpenCV's and PyTorch's), which agree."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from diffmatch.refinement import VariationalRefiner


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def _shifted_pair(photo: np.ndarray, dx: float, dy: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``target(x) = source(x + (dx, dy))`` rendered bilinearly; returns source, target, mask of the inner pixels."""
    h, w = photo.shape[:2]
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    target = cv2.warpAffine(photo, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[8:-8, 8:-8] = True
    return _to_tensor(photo), _to_tensor(target), mask


def _epe(flow: torch.Tensor, truth: tuple[float, float], mask: torch.Tensor) -> float:
    gt = torch.tensor(truth, dtype=flow.dtype).view(2, 1, 1)
    return (flow - gt).norm(dim=0)[mask].mean().item()


def _cell_noise(size: int, seed: int = 0) -> torch.Tensor:
    """``(1, 2, size, size)`` errors of up to 1 px that vary from one 8-px cell to the next, like an
    upsampled coarse flow's (mean magnitude about 0.5 px)."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.rand(1, 2, size // 8, size // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(cells, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("backend", ["opencv", "torch"])
@pytest.mark.parametrize("shift", [(0.0, 0.0), (1.4, -0.7), (20.0, 0.0)])
def test_cell_scale_errors_of_a_rough_flow_are_removed(photo, shift, backend):
    source, target, mask = _shifted_pair(photo, *shift)
    rough = torch.tensor(shift).view(1, 2, 1, 1) + _cell_noise(128)
    refined = VariationalRefiner(backend=backend)(source, target, rough)
    assert _epe(rough[0], shift, mask) > 0.45
    assert _epe(refined[0], shift, mask) < 0.1


def test_identical_images_keep_a_zero_flow(photo):
    source = _to_tensor(photo)
    assert VariationalRefiner()(source, source, torch.zeros(1, 2, 128, 128)).abs().max() < 1e-3


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_source_of_another_size_is_refined_in_its_own_pixels(photo, backend):
    # The source is the photo at twice the size: target pixel x shows source point 2 (x + d) + 0.5.
    shift = (1.2, 0.6)
    source, target, mask = _shifted_pair(photo, *shift)
    big = torch.nn.functional.interpolate(source, scale_factor=2, mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    truth = torch.stack((2 * (xs + shift[0]) + 0.5 - xs, 2 * (ys + shift[1]) + 0.5 - ys))
    rough = truth[None] + 2 * _cell_noise(128)  # up to 2 source px = 1 target px
    refined = VariationalRefiner(backend=backend)(big, target, rough)
    assert (rough[0] - truth).norm(dim=0)[mask].mean() > 0.9
    assert (refined[0] - truth).norm(dim=0)[mask].mean() < 0.25


def test_large_images_are_refined_coarse_to_fine():
    from skimage import data

    assert VariationalRefiner().levels((800, 800)) == [(200, 200), (400, 400), (800, 800)]
    assert VariationalRefiner().levels((700, 500)) == [(175, 125), (350, 250), (700, 500)]
    assert VariationalRefiner().levels((240, 240)) == [(240, 240)]  # the synthetic benchmark's pairs: one scale
    assert VariationalRefiner(coarsest_side=100).levels((300, 420)) == [(75, 105), (150, 210), (300, 420)]
    photo = cv2.resize(data.astronaut(), (800, 800), interpolation=cv2.INTER_CUBIC)
    source, target, mask = _shifted_pair(photo, 3.0, -1.0)
    g = torch.Generator().manual_seed(0)  # errors of up to 2 px varying over 16-px cells
    noise = torch.nn.functional.interpolate(torch.rand(1, 2, 50, 50, generator=g) * 4 - 2, size=(800, 800),
                                            mode="bilinear", align_corners=False)
    rough = torch.tensor([3.0, -1.0]).view(1, 2, 1, 1) + noise
    pyramid = _epe(VariationalRefiner()(source, target, rough)[0], (3.0, -1.0), mask)  # measured 0.022
    single = _epe(VariationalRefiner(coarsest_side=10_000)(source, target, rough)[0], (3.0, -1.0), mask)  # 0.066
    assert pyramid < 0.04 and pyramid < 0.6 * single


def test_the_default_pyramid_removes_errors_of_several_pixels():
    """Errors of up to 6 px over 32-px cells (a coarse flow off at depth edges): the default's coarse
    levels (384 x 512: 128 to 512 px) remove them; one scale (coarsest_side 384, the old default) does not."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)[64:448]
    source, target, mask = _shifted_pair(photo, 5.0, 2.0)
    g = torch.Generator().manual_seed(1)
    cells = torch.rand(1, 2, 12, 16, generator=g) * 12 - 6
    rough = torch.tensor([5.0, 2.0]).view(1, 2, 1, 1) + torch.nn.functional.interpolate(
        cells, size=(384, 512), mode="bilinear", align_corners=False
    )
    assert _epe(rough[0], (5.0, 2.0), mask) > 2.5
    assert _epe(VariationalRefiner()(source, target, rough)[0], (5.0, 2.0), mask) < 0.1  # measured 0.064
    assert _epe(VariationalRefiner(coarsest_side=384)(source, target, rough)[0], (5.0, 2.0), mask) > 1.0  # 1.33


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_hypotheses_and_batch_items_are_refined_independently(photo, backend):
    source, target, _ = _shifted_pair(photo, 1.0, 0.0)
    rough = torch.stack([torch.zeros(2, 128, 128), torch.full((2, 128, 128), 0.5)])  # (N=2, 2, H, W)
    refiner = VariationalRefiner(rounds=2, backend=backend)
    both = refiner(source.repeat(2, 1, 1, 1), target.repeat(2, 1, 1, 1), rough[None].repeat(2, 1, 1, 1, 1))
    assert both.shape == (2, 2, 2, 128, 128)
    for j in range(2):
        alone = refiner(source, target, rough[j][None])
        torch.testing.assert_close(both[0, j], alone[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(both[1, j], alone[0], atol=1e-4, rtol=0)
    half = refiner(source, target, rough[:1].double())
    assert half.dtype == torch.float64


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="rounds"):
        VariationalRefiner(rounds=0)
    with pytest.raises(ValueError, match="alpha"):
        VariationalRefiner(alpha=-1.0)
    with pytest.raises(ValueError, match="backend must be one of auto, opencv, torch"):
        VariationalRefiner(backend="cuda")
    image = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="target grid"):
        VariationalRefiner()(image, image, torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="batch sizes"):
        VariationalRefiner()(image, image, torch.zeros(2, 2, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        VariationalRefiner()(image[:, :1], image, torch.zeros(1, 2, 32, 32))


def test_the_two_solvers_agree_through_levels_and_a_resized_source(photo):
    # Two levels (coarsest_side 64 on 128 px), a source at another size, two hypotheses per pair:
    # every step the OpenCV path takes, the PyTorch path takes on its own tensors.
    source, target, _ = _shifted_pair(photo, 2.0, -1.0)
    big = torch.nn.functional.interpolate(source, size=(160, 150), mode="bilinear", align_corners=False)
    rough = torch.stack([torch.tensor([2.5, -1.2]).view(2, 1, 1) + _cell_noise(128, seed) [0] for seed in (1, 2)])
    settings = {"rounds": 2, "coarsest_side": 64}
    assert VariationalRefiner(**settings).levels((128, 128)) == [(64, 64), (128, 128)]
    by_opencv = VariationalRefiner(backend="opencv", **settings)(big, target, rough[None])
    by_torch = VariationalRefiner(backend="torch", **settings)(big, target, rough[None])
    moved = (by_opencv - rough[None]).norm(dim=2).mean()
    difference = (by_torch - by_opencv).norm(dim=2)
    assert moved > 0.3  # the refinement did change the flows
    assert difference.mean() < 1e-4 and difference.max() < 0.01  # measured 5e-6 and 4e-4


def test_auto_is_opencv_on_the_cpu(photo):
    source, target, _ = _shifted_pair(photo, 1.0, 0.5)
    rough = torch.tensor([1.0, 0.5]).view(1, 2, 1, 1) + _cell_noise(128)
    auto = VariationalRefiner(rounds=1)(source, target, rough)
    assert torch.equal(auto, VariationalRefiner(rounds=1, backend="opencv")(source, target, rough))
