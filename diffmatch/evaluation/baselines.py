"""The matcher interface of the evaluation, and classical dense optical flow baselines from OpenCV.

Every method maps an image pair to a :class:`~diffmatch.result.MatchResult` whose flow follows the
project convention: on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels of the source,
channel 0 = x.

OpenCV's ``calcOpticalFlow*(prev, next)`` returns a flow on the ``prev`` grid with
``prev(x) ≈ next(x + flow(x))``; our flow is therefore OpenCV's with ``prev = target`` and
``next = source``. Both run on grayscale uint8 images of equal size: a source of another size is
resized to the target's size first and the flow is mapped back to source pixels (pixel-centre
convention, ``x -> (x + 0.5) * s - 0.5``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from diffmatch.inputs import to_gray_uint8
from diffmatch.result import MatchResult

__all__ = ["Method", "OpenCVFlow", "DISFlow", "FarnebackFlow", "OPENCV_METHODS"]


@runtime_checkable
class Method(Protocol):
    """A dense matcher under evaluation.

    Attributes:
        name: the name it is reported under.
    """

    name: str

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        """Match a pair.

        Args:
            source: ``(B, 3, Hs, Ws)`` float image in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` float image in ``[0, 1]``.

        Returns:
            A result whose ``flow`` is ``(B, 2, Ht, Wt)`` in source pixels.
        """
        ...


def _check_pair(source: torch.Tensor, target: torch.Tensor) -> None:
    for label, image in (("source", source), ("target", target)):
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"{label} must be (B, 3, H, W), got {tuple(image.shape)}")
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"source and target batch sizes differ: {source.shape[0]} vs {target.shape[0]}")


class OpenCVFlow(ABC):
    """Base of the OpenCV baselines: grayscale conversion, direction, size handling, batching."""

    name = "opencv"

    @abstractmethod
    def flow(self, prev: np.ndarray, next_: np.ndarray) -> np.ndarray:
        """OpenCV flow ``(H, W, 2)`` with ``prev(x) ≈ next(x + flow(x))`` for two gray uint8 images."""

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> MatchResult:
        """Match a pair; see :class:`Method`. One sample, so the uncertainty is zero."""
        _check_pair(source, target)
        hs, ws = source.shape[-2:]
        ht, wt = target.shape[-2:]
        flows = []
        for src, tgt in zip(source, target):
            gray_src, gray_tgt = to_gray_uint8(src), to_gray_uint8(tgt)
            if (hs, ws) != (ht, wt):
                gray_src = cv2.resize(gray_src, (wt, ht), interpolation=cv2.INTER_AREA)
            flow = self.flow(gray_tgt, gray_src).astype(np.float32)
            if (hs, ws) != (ht, wt):
                # Target x matches resized-source point p' = x + flow; in source pixels p = (p' + 0.5) / s - 0.5.
                xs, ys = np.meshgrid(np.arange(wt, dtype=np.float32), np.arange(ht, dtype=np.float32))
                flow[..., 0] = (xs + flow[..., 0] + 0.5) * (ws / wt) - 0.5 - xs
                flow[..., 1] = (ys + flow[..., 1] + 0.5) * (hs / ht) - 0.5 - ys
            flows.append(torch.from_numpy(flow).permute(2, 0, 1))
        samples = torch.stack(flows).unsqueeze(1).to(target.device)
        return MatchResult.from_samples(samples)


@dataclass
class DISFlow(OpenCVFlow):
    """OpenCV's Dense Inverse Search optical flow (Kroeger et al., ECCV 2016).

    Args:
        preset: ``cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST``, ``_FAST`` or ``_MEDIUM`` (default).
    """

    preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    name: str = "dis"

    def flow(self, prev: np.ndarray, next_: np.ndarray) -> np.ndarray:
        """DIS flow with ``prev(x) ≈ next(x + flow(x))``."""
        return cv2.DISOpticalFlow_create(self.preset).calc(prev, next_, None)


@dataclass
class FarnebackFlow(OpenCVFlow):
    """OpenCV's Farnebäck polynomial-expansion optical flow, with OpenCV's sample parameters.

    Args:
        pyr_scale: image scale between pyramid levels.
        levels: number of pyramid levels.
        winsize: averaging window (px).
        iterations: iterations per level.
        poly_n: pixel neighbourhood of the polynomial expansion.
        poly_sigma: Gaussian sigma of the expansion.
    """

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    name: str = "farneback"

    def flow(self, prev: np.ndarray, next_: np.ndarray) -> np.ndarray:
        """Farnebäck flow with ``prev(x) ≈ next(x + flow(x))``."""
        return cv2.calcOpticalFlowFarneback(
            prev,
            next_,
            None,
            self.pyr_scale,
            self.levels,
            self.winsize,
            self.iterations,
            self.poly_n,
            self.poly_sigma,
            0,
        )


OPENCV_METHODS: dict[str, type[OpenCVFlow]] = {"dis": DISFlow, "farneback": FarnebackFlow}
