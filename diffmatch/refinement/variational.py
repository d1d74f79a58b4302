"""The sub-pixel refinement :class:`~diffmatch.DiffMatcher` runs on every hypothesis.

DiffMatch predicts its flow on a coarse grid (48² cells of 8 px at 384² for the default model) and
upsamples it, so its precision is a fraction of a cell: about half a pixel per component at 384²,
more in pixels when the images are larger. :class:`VariationalRefiner` adds image-resolution
precision: it starts from the flow and minimises a variational energy on the full-resolution
grayscale images (colour and gradient constancy with a robust penalty, plus a smoothness term), the
energy of Brox et al. (ECCV 2004) as implemented by OpenCV's ``VariationalRefinement``, the last stage
of DIS (Kroeger et al., ECCV 2016). Its data terms are linearised around the current flow, so it
only moves matches by a few pixels at each scale; it runs coarse to fine from copies of about 128 px
(``coarsest_side``), which lets it correct errors of several pixels, but wrong matches far from the
truth stay as they are: the result depends on the coarse flow being roughly right, which is
DiffMatch's job.

Two solvers run the same iteration (``backend``): OpenCV's, on the CPU, in a thread pool within
PyTorch's thread count (``torch.get_num_threads()``: that many flows side by side, or fewer flows with
several OpenCV threads each, :mod:`diffmatch.threads`), and PyTorch's
(:func:`~diffmatch.refinement.solver.variational_step`), on the flow's own device, every flow of a
batch at once. ``"auto"`` takes PyTorch's where the flow is on an accelerator and OpenCV's on the
CPU, where it is several times faster; their flows agree to about 1e-5 px.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x; tensors are
``(B, 2, H, W)``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from diffmatch.geometry import check_flow, resize_flow
from diffmatch.inputs import to_gray_uint8
from diffmatch.refinement.solver import to_gray255, variational_step
from diffmatch.result import MatchResult
from diffmatch.threads import opencv_threads

BACKENDS = ("auto", "opencv", "torch")

# The PyTorch solver keeps about 30 float32 buffers per pixel of every flow it refines at once; flows
# are refined in chunks of at most this many pixels in all (about 2 GB of buffers).
_CHUNK_PIXELS = 1 << 24

__all__ = ["VariationalRefiner"]


@dataclass(frozen=True)
class VariationalRefiner:
    """Refine dense flows with OpenCV's variational refinement, started from the given flow.

    Args:
        rounds: how many times the refinement is run, each from the previous result (each round
            relinearises the data terms around the current flow, so a few rounds recover motions
            of a few pixels that one round only starts to correct).
        fixed_point_iterations: outer fixed-point iterations per round (OpenCV's default 5).
        sor_iterations: inner successive over-relaxation iterations (OpenCV's default 5).
        alpha: weight of the smoothness term (OpenCV's default 20).
        delta: weight of the colour-constancy term (OpenCV's default 5).
        gamma: weight of the gradient-constancy term (OpenCV's default 10).
        coarsest_side: the refinement runs coarse to fine: it starts on copies of the images halved
            as often as their longer side stays at least this many pixels, and each level starts
            from the one before. One scale recovers only a few pixels; the coarser levels let it fix
            the model's larger errors, which its coarse 48² flow grid makes at depth edges and on
            occluded layers, and its bias of about a pixel. The default, 128 (384 until issue #27),
            was chosen by measurement. On rendered 3D scenes of training photos at 384 × 512 it
            gives AEPE stereo 2.79 → 1.22 px, medium 12.9 → 11.1, wide 24.7 → 22.9 against 384. 64
            went further on those scenes (0.98 / 10.4 / 22.1) and on the sanity pairs, but on the
            held-out synthetic benchmark its extra 120-px level cost the 240² pairs 14 % at the easy
            level and 9 % at medium, where 128 refines them at one scale as before; 32 lost on
            ImageNet-C pairs.
        backend: the solver: ``"opencv"`` (on the CPU; flows on another device are copied there and
            back), ``"torch"`` (on the flow's device, batched) or ``"auto"`` (the default: PyTorch's
            for flows on an accelerator, OpenCV's for flows on the CPU, where it is faster). Both run
            the same iteration and agree to about 1e-5 px (:mod:`diffmatch.refinement.solver`).
    """

    rounds: int = 5
    fixed_point_iterations: int = 5
    sor_iterations: int = 5
    alpha: float = 20.0
    delta: float = 5.0
    gamma: float = 10.0
    coarsest_side: int = 128
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("rounds", "fixed_point_iterations", "sor_iterations", "coarsest_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("alpha", "delta", "gamma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def levels(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """The ``(H, W)`` sizes an image of ``size`` is refined at, coarsest first, ``size`` last."""
        sizes = [tuple(size)]
        while max(sizes[-1]) // 2 >= self.coarsest_side:
            sizes.append((max(1, sizes[-1][0] // 2), max(1, sizes[-1][1] // 2)))
        return sizes[::-1]

    def _refine_pyramid(self, pyramid: list[tuple[np.ndarray, np.ndarray]], flow: torch.Tensor) -> np.ndarray:
        """``flow`` ``(2, H, W)`` refined through the levels of ``pyramid`` (``(source, target)`` grays)."""
        size = pyramid[-1][1].shape
        current = flow[None]
        for gray_src, gray_tgt in pyramid:
            level = gray_tgt.shape
            field = current if level == size else resize_flow(current, level)
            refined = self._refine_one(gray_src, gray_tgt, np.ascontiguousarray(field[0].permute(1, 2, 0).numpy()))
            current = torch.from_numpy(refined).permute(2, 0, 1)[None]
            if level != size:
                current = resize_flow(current, size)
        return current[0].permute(1, 2, 0).numpy()

    def _refine_one(self, source: np.ndarray, target: np.ndarray, flow: np.ndarray) -> np.ndarray:
        refiner = cv2.VariationalRefinement_create()
        refiner.setFixedPointIterations(self.fixed_point_iterations)
        refiner.setSorIterations(self.sor_iterations)
        refiner.setAlpha(self.alpha)
        refiner.setDelta(self.delta)
        refiner.setGamma(self.gamma)
        # OpenCV's flow is on the first image's grid with I0(x) ≈ I1(x + flow(x)): I0 = target.
        for _ in range(self.rounds):
            refiner.calc(target, source, flow)  # in place
        return flow

    @torch.no_grad()
    def __call__(self, source: torch.Tensor, target: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Refine ``flow`` for the pair.

        Args:
            source: ``(B, 3, Hs, Ws)`` RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` RGB in ``[0, 1]``; sizes may differ from the source's (the
                source is resized to the target's size for the refinement, and the flow mapped there
                and back).
            flow: ``(B, 2, Ht, Wt)`` or ``(B, N, 2, Ht, Wt)`` (``N`` hypotheses, each refined), target
                grid, ``target(x) ≈ source(x + flow(x))``, source pixels, channel 0 = x.

        Returns:
            The refined flow, same shape, dtype and device as ``flow``.
        """
        if source.ndim != 4 or target.ndim != 4 or source.shape[1] != 3 or target.shape[1] != 3:
            raise ValueError(f"source and target must be (B, 3, H, W), got {tuple(source.shape)} and {tuple(target.shape)}")
        hypotheses = flow.ndim == 5
        flows = flow if hypotheses else flow.unsqueeze(1)
        b, n = flows.shape[:2]
        if source.shape[0] != b or target.shape[0] != b:
            raise ValueError(f"batch sizes differ: source {source.shape[0]}, target {target.shape[0]}, flow {b}")
        check_flow(flows.flatten(0, 1))
        (hs, ws), (ht, wt) = source.shape[-2:], target.shape[-2:]
        if tuple(flows.shape[-2:]) != (ht, wt):
            raise ValueError(f"flow must be on the target grid {(ht, wt)}, got {tuple(flows.shape[-2:])}")
        use_torch = self.backend == "torch" or (self.backend == "auto" and flow.device.type != "cpu")
        resized = (hs, ws) != (ht, wt)
        work = flows.detach().float().flatten(0, 1)
        work = work.to(source.device) if use_torch else work.cpu()
        if resized:  # into the pixels of the source resized to the target's size
            work = resize_flow(work, (ht, wt), source_scale=(ht / hs, wt / ws))
        out = self._refine_torch(source, target, work, n) if use_torch else self._refine_opencv(source, target, work, n)
        if resized:
            out = resize_flow(out, (ht, wt), source_scale=(hs / ht, ws / wt))
        out = out.view(b, n, 2, ht, wt).to(device=flow.device, dtype=flow.dtype)
        return out if hypotheses else out[:, 0]

    def _refine_opencv(self, source: torch.Tensor, target: torch.Tensor, work: torch.Tensor, n: int) -> torch.Tensor:
        """The ``(B·N, 2, Ht, Wt)`` CPU flows ``work`` (``N`` per pair) refined by OpenCV."""
        ht, wt = target.shape[-2:]
        pyramids = []
        for i in range(source.shape[0]):
            gray_src, gray_tgt = to_gray_uint8(source[i].cpu()), to_gray_uint8(target[i].cpu())
            if gray_src.shape != (ht, wt):
                gray_src = cv2.resize(gray_src, (wt, ht), interpolation=cv2.INTER_AREA)
            pyramids.append([
                (gray_src, gray_tgt) if (h, w) == (ht, wt) else tuple(
                    cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA) for g in (gray_src, gray_tgt)
                )
                for h, w in self.levels((ht, wt))
            ])

        def refine(k: int) -> np.ndarray:
            return self._refine_pyramid(pyramids[k // n], work[k])

        # OpenCV releases the GIL: the flows are refined side by side, within PyTorch's thread budget
        # (diffmatch.threads): k flows at once with budget // k OpenCV threads each, never more in all.
        budget = max(1, torch.get_num_threads())
        workers = max(1, min(len(work), budget))
        with opencv_threads(budget // workers), ThreadPoolExecutor(max_workers=workers) as pool:
            refined = list(pool.map(refine, range(len(work))))
        return torch.from_numpy(np.stack(refined)).permute(0, 3, 1, 2)

    def _refine_torch(self, source: torch.Tensor, target: torch.Tensor, work: torch.Tensor, n: int) -> torch.Tensor:
        """The ``(B·N, 2, Ht, Wt)`` flows ``work`` (``N`` per pair) refined by the PyTorch solver, on
        their device, in chunks of flows (``_CHUNK_PIXELS``)."""
        size = tuple(target.shape[-2:])
        with torch.autocast(device_type=work.device.type, enabled=False):
            gray_tgt = to_gray255(target.to(work.device))
            gray_src = _resize_gray(to_gray255(source.to(work.device)), size)
            pyramid = [
                (_resize_gray(gray_src, level), _resize_gray(gray_tgt, level)) for level in self.levels(size)
            ]
            chunk = max(1, _CHUNK_PIXELS // (size[0] * size[1]))
            out = []
            for start in range(0, len(work), chunk):
                pairs = torch.arange(start, min(start + chunk, len(work)), device=work.device) // n
                current = work[start:start + chunk]
                for level_src, level_tgt in pyramid:
                    level = tuple(level_tgt.shape[-2:])
                    field = current if level == size else resize_flow(current, level)
                    for _ in range(self.rounds):
                        field = variational_step(
                            level_tgt[pairs], level_src[pairs], field, self.fixed_point_iterations,
                            self.sor_iterations, self.alpha, self.delta, self.gamma,
                        )
                    current = field if level == size else resize_flow(field, size)
                out.append(current)
        return torch.cat(out)

    def refine_result(self, source: torch.Tensor, target: torch.Tensor, result: MatchResult) -> MatchResult:
        """``result`` with every hypothesis refined; the flow and uncertainty are their new mean and
        variance, and ``init_flow`` is kept (see :meth:`__call__` for the shapes)."""
        return MatchResult.from_samples(self(source, target, result.samples), init_flow=result.init_flow)


def _resize_gray(gray: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 1, H, W)`` grayscale resized to ``size`` as OpenCV's ``INTER_AREA`` resizes an 8-bit image
    (rounded to whole values): each output pixel averages the input area it covers where both sides
    shrink, and interpolates linearly between the two nearest pixels otherwise."""
    if tuple(gray.shape[-2:]) == tuple(size):
        return gray
    (h, w), (out_h, out_w) = gray.shape[-2:], size
    shrinks = out_h <= h and out_w <= w
    rows = _area_weights(h, out_h, shrinks, gray)
    cols = _area_weights(w, out_w, shrinks, gray)
    return torch.floor(rows @ gray.double() @ cols.T + 0.5).to(gray.dtype)


def _area_weights(size: int, out: int, shrinks: bool, like: torch.Tensor) -> torch.Tensor:
    """The ``(out, size)`` matrix of one axis of OpenCV's ``INTER_AREA`` resize."""
    scale = size / out
    weights = torch.zeros(out, size, dtype=torch.float64, device=like.device)
    for i in range(out):
        if shrinks:  # the box [i·scale, (i + 1)·scale) of input pixels, each by the length it covers
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(lo), min(size, int(np.ceil(hi)))):
                weights[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
        else:  # the input pixel the output pixel starts in, and its right neighbour by the overhang
            j = int(np.floor(i * scale))
            frac = (i + 1) - (j + 1) / scale
            frac = 0.0 if frac <= 0 else frac - np.floor(frac)
            frac = round(frac * 2048) / 2048  # OpenCV's 11-bit fixed-point weights
            weights[i, min(j, size - 1)] += 1 - frac
            weights[i, min(j + 1, size - 1)] += frac
    return weights
