"""The typed result every matcher returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffmatch.errors import MissingCalibrationError
from diffmatch.geometry.flow import resize_flow

__all__ = ["MatchResult", "SparseMatches", "samples_statistics"]


def samples_statistics(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean flow and per-pixel variance of ``N`` flow hypotheses.

    Args:
        samples: ``(B, N, 2, H, W)`` flows in pixels.

    Returns:
        ``(flow, uncertainty)``: the ``(B, 2, H, W)`` mean, and the ``(B, 1, H, W)`` variance in px²,
        summed over x and y (the trace of the per-pixel covariance; population variance, so zero
        for ``N = 1``).
    """
    if samples.ndim != 5 or samples.shape[2] != 2:
        raise ValueError(f"samples must be (B, N, 2, H, W), got {tuple(samples.shape)}")
    flow = samples.mean(dim=1)
    # Written out: on the CPU, Tensor.var over the hypotheses' dimension is about 10x slower at 512².
    variance = (samples - flow.unsqueeze(1)).square().sum(dim=2).mean(dim=1).unsqueeze(1)
    return flow, variance


@dataclass
class SparseMatches:
    """Sparse matches of one image pair, as a sparse matcher (SIFT, LightGlue) found them.

    Attributes:
        target_xy: ``(K, 2)`` float pixel coordinates ``(x, y)`` in the target.
        source_xy: ``(K, 2)`` their matches in the source: ``target(target_xy) ≈ source(source_xy)``.
        confidence: ``(K,)`` the matcher's score of each match, higher is better (a ranking, not
            necessarily a probability).
    """

    target_xy: np.ndarray
    source_xy: np.ndarray
    confidence: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.target_xy)
        if self.target_xy.shape != (k, 2) or self.source_xy.shape != (k, 2) or self.confidence.shape != (k,):
            raise ValueError(
                "sparse matches must be target_xy (K, 2), source_xy (K, 2), confidence (K,), got "
                f"{self.target_xy.shape}, {self.source_xy.shape}, {self.confidence.shape}"
            )


@dataclass
class MatchResult:
    """Dense matches from the target image into the source image.

    Flow convention: on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels of the
    original images, channel 0 = x.

    Attributes:
        flow: ``(B, 2, H, W)`` mean flow over the hypotheses, at the target's size.
        uncertainty: ``(B, 1, H, W)`` per-pixel variance across hypotheses in px² (zeros for one sample).
        samples: ``(B, N, 2, H, W)`` the individual hypotheses.
        init_flow: optional ``(B, 2, H, W)`` initial flow (e.g. DiffMatch's soft-argmax ``F_init``).
        confidence: ``(B, 1, H, W)`` calibrated probability in ``[0, 1]`` that the match is within
            ``confidence_tau`` px of the truth; ``None`` when the model has no calibration
            (``python -m diffmatch.calibrate`` adds one).
        confidence_tau: the threshold ``τ`` in px that ``confidence`` refers to.
        matches: for a sparse matcher, one :class:`SparseMatches` per pair of the batch, the matches
            its dense ``flow`` was interpolated from; geometry estimators
            (:mod:`diffmatch.geometry.estimation`) then use them instead of sampling the dense flow.
        no_confidence_reason: why ``confidence`` is ``None``, when the matcher knows (e.g. a
            calibration fitted on refined flows and a ``refine=False`` result); :meth:`require_confidence` says it.
    """

    flow: torch.Tensor
    uncertainty: torch.Tensor
    samples: torch.Tensor
    init_flow: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    confidence_tau: float | None = None
    matches: list[SparseMatches] | None = None
    no_confidence_reason: str | None = None

    def require_confidence(self) -> torch.Tensor:
        """``confidence``, or a clear error saying why this result has none.

        Raises:
            ValueError: no calibrated confidence (a :class:`~diffmatch.errors.MissingCalibrationError`),
                with :attr:`no_confidence_reason` when the matcher gave one.
        """
        if self.confidence is None:
            reason = self.no_confidence_reason or (
                "the checkpoint is not calibrated (add one with `python -m diffmatch.calibrate CKPT --out CKPT_CAL`)"
            )
            raise MissingCalibrationError(f"this result has no confidence: {reason}")
        return self.confidence

    @classmethod
    def from_samples(cls, samples: torch.Tensor, init_flow: torch.Tensor | None = None) -> MatchResult:
        """Build a result from ``(B, N, 2, H, W)`` hypotheses."""
        flow, uncertainty = samples_statistics(samples)
        return cls(flow=flow, uncertainty=uncertainty, samples=samples, init_flow=init_flow)

    def select(self, index: int) -> MatchResult:
        """Pair ``index`` of the batch as a batch of one (tensors are views, not copies)."""
        if not -len(self.flow) <= index < len(self.flow):
            raise IndexError(f"index {index} out of range for a batch of {len(self.flow)}")
        start = index % len(self.flow)
        keep = slice(start, start + 1)
        return dataclasses.replace(
            self,
            flow=self.flow[keep],
            uncertainty=self.uncertainty[keep],
            samples=self.samples[keep],
            init_flow=None if self.init_flow is None else self.init_flow[keep],
            confidence=None if self.confidence is None else self.confidence[keep],
            matches=None if self.matches is None else self.matches[keep],
        )

    def numpy(self, index: int = 0) -> dict[str, np.ndarray]:
        """Item ``index`` as arrays on disk layout: ``flow`` (H, W, 2), ``uncertainty`` (H, W), ``samples`` (N, H, W, 2).

        Also ``init_flow`` (H, W, 2) and ``confidence`` (H, W) when present.
        """
        out = {
            "flow": self.flow[index].permute(1, 2, 0).float().cpu().numpy(),
            "uncertainty": self.uncertainty[index, 0].float().cpu().numpy(),
            "samples": self.samples[index].permute(0, 2, 3, 1).float().cpu().numpy(),
        }
        if self.init_flow is not None:
            out["init_flow"] = self.init_flow[index].permute(1, 2, 0).float().cpu().numpy()
        if self.confidence is not None:
            out["confidence"] = self.confidence[index, 0].float().cpu().numpy()
        return out

    def resized(
        self, target_size: tuple[int, int], source_scale: tuple[float, float], samples: bool = True
    ) -> MatchResult:
        """This result, computed on downscaled images, brought to the full-size target grid.

        Args:
            target_size: ``(H, W)`` of the full-size target.
            source_scale: ``(sy, sx)``, full-size source pixels per pixel of the source it was computed on.
            samples: bring the hypotheses to full size too; ``False`` keeps only the mean as the one
                sample (``N`` full-size flows are most of the memory of a large image).

        Returns:
            A new result with flows (mean, samples, initial) in full-size pixels
            (:func:`diffmatch.geometry.resize_flow`, ``align_corners=False``; still ``target(x) ≈
            source(x + flow(x))``), the variance scaled by ``sy * sx`` and every map bilinearly resized
            to ``target_size``; sparse ``matches`` are moved to full-size pixel coordinates (pixel
            centres kept aligned); ``self`` when nothing changes.
        """
        if tuple(self.flow.shape[-2:]) == tuple(target_size) and tuple(source_scale) == (1.0, 1.0):
            return self
        flows = lambda f: resize_flow(f, target_size, source_scale=source_scale)  # noqa: E731
        maps = lambda m: F.interpolate(m, size=target_size, mode="bilinear", align_corners=False)  # noqa: E731
        flow = flows(self.flow)
        changes = {
            "flow": flow,
            "uncertainty": maps(self.uncertainty) * (source_scale[0] * source_scale[1]),
            "samples": torch.stack([flows(self.samples[:, i]) for i in range(self.samples.shape[1])], dim=1)
            if samples
            else flow.unsqueeze(1),
        }
        if self.matches is not None:
            h, w = self.flow.shape[-2:]
            target_scale = np.array([target_size[1] / w, target_size[0] / h])
            scale = np.array([source_scale[1], source_scale[0]])
            changes["matches"] = [
                SparseMatches((m.target_xy + 0.5) * target_scale - 0.5, (m.source_xy + 0.5) * scale - 0.5, m.confidence)
                for m in self.matches
            ]
        if self.init_flow is not None:
            changes["init_flow"] = flows(self.init_flow)
        if self.confidence is not None:
            changes["confidence"] = maps(self.confidence).clamp(0.0, 1.0)
        return dataclasses.replace(self, **changes)
