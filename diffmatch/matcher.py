"""``DiffMatcher``: checkpoint-based matching of any two images, with uncertainty.

Flow convention: flow lives on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels of the
original images, channel 0 = x.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from diffmatch.cost_volume import argmax_flow, soft_argmax_flow
from diffmatch.diffusion import Generators
from diffmatch.geometry import warp
from diffmatch.inputs import ImageInput, resolve_device, to_image_batch
from diffmatch.io import InputError
from diffmatch.model import DiffMatch
from diffmatch.result import MatchResult
from diffmatch.weights import load_checkpoint

__all__ = ["DiffMatcher", "BUNDLED_CHECKPOINT"]

BUNDLED_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "diffmatch_demo.pt"


class DiffMatcher:
    """Dense matching with a trained DiffMatch model.

    Example:
        >>> m = DiffMatcher.from_checkpoint()                       # the bundled demo model
        >>> r = m.match("a.jpg", "b.jpg", num_samples=3)            # doctest: +SKIP
        >>> r.flow.shape, r.uncertainty.shape                       # doctest: +SKIP
        (torch.Size([1, 2, Ht, Wt]), torch.Size([1, 1, Ht, Wt]))

    Args:
        model: a :class:`DiffMatch` model.
        device: where to run it.
    """

    def __init__(self, model: DiffMatch, device: str | torch.device = "auto") -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device: str | torch.device = "auto") -> DiffMatcher:
        """Load a Lightning ``.ckpt`` or an exported weights file (``None``: the bundled checkpoint).

        Raises:
            InputError: missing or corrupt file, or weights that do not fit the stored settings.
        """
        path = BUNDLED_CHECKPOINT if path is None else Path(path)
        resolved = resolve_device(device)
        return cls(load_checkpoint(path, device="cpu"), resolved)

    @property
    def stride(self) -> int:
        """Input pixels per cell of the model's cost grid: the smallest image side it accepts."""
        config = self.model.config
        return -(-config.image_size // config.cost_size)

    # ---------------------------------------------------------------------------------- matching
    def _pair(self, source: ImageInput | list[ImageInput], target: ImageInput | list[ImageInput]) -> tuple[torch.Tensor, torch.Tensor]:
        src = to_image_batch(source, "source").to(self.device)
        tgt = to_image_batch(target, "target").to(self.device)
        if src.shape[0] != tgt.shape[0]:
            raise InputError(f"source and target batch sizes differ: {src.shape[0]} vs {tgt.shape[0]}")
        for name, image in (("source", src), ("target", tgt)):
            h, w = image.shape[-2:]
            if min(h, w) < self.stride:  # one cost cell would span the whole image: a meaningless flow
                raise InputError(
                    f"{name} image is {w}x{h} px, smaller than the model's stride of {self.stride} px on a side"
                )
        return src, tgt

    @torch.no_grad()
    def match(
        self,
        source: ImageInput | list[ImageInput],
        target: ImageInput | list[ImageInput],
        num_samples: int = 3,
        num_steps: int = 5,
        generator: Generators = None,
        eta: float = 0.0,
    ) -> MatchResult:
        """Match ``target`` to ``source``.

        Args:
            source: path, PIL image, ``(H, W, C)`` array, ``(C, H, W)``/``(B, C, H, W)`` tensor, or a list.
            target: same kinds; its size sets the output size. Sizes of source and target may differ.
            num_samples: hypotheses ``N``; their mean is the flow and their variance the uncertainty.
            num_steps: DDIM steps (1 to the model's ``T``).
            generator: a ``torch.Generator`` (or one per pair) for reproducible sampling.
            eta: DDIM eta (0: deterministic given the initial noise).

        Returns:
            :class:`MatchResult`: ``flow`` ``(B, 2, Ht, Wt)`` px, ``uncertainty`` ``(B, 1, Ht, Wt)`` px²,
            ``samples`` ``(B, N, 2, Ht, Wt)``.

        Raises:
            InputError: unreadable inputs, an image with a side below :attr:`stride`, or impossible
                options (a ``ValueError``).
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise InputError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        limit = self.model.config.num_train_timesteps
        if not isinstance(num_steps, int) or not 1 <= num_steps <= limit:
            raise InputError(f"num_steps must be an integer in [1, {limit}], got {num_steps!r}")
        src, tgt = self._pair(source, target)
        return self.model(src, tgt, num_samples=num_samples, num_steps=num_steps, eta=eta, generator=generator)

    @torch.no_grad()
    def match_raw(
        self,
        source: ImageInput | list[ImageInput],
        target: ImageInput | list[ImageInput],
        mode: Literal["hard", "soft"] = "hard",
    ) -> MatchResult:
        """The paper's "raw correlation" baseline: argmax (or soft-argmax) of the model's own cost, no learning."""
        if mode not in ("hard", "soft"):
            raise InputError(f"mode must be 'hard' or 'soft', got {mode!r}")
        src, tgt = self._pair(source, target)
        model = self.model
        c = model.config.cost_size
        feats = model.extract(src, tgt)
        corr = model.correlation(model._cost_maps(feats[0]), model._cost_maps(feats[1]))
        if mode == "hard":
            flow = argmax_flow(corr, (c, c), (c, c))
        else:
            flow = soft_argmax_flow(corr, (c, c), (c, c), model.config.temperature)
        flow = model.from_cost_grid(flow / c, tuple(tgt.shape[-2:]), tuple(src.shape[-2:]))
        return MatchResult.from_samples(flow.unsqueeze(1))

    # ---------------------------------------------------------------------------------- helpers
    @staticmethod
    def warp(source: ImageInput, flow: torch.Tensor) -> torch.Tensor:
        """Warp the source onto the target grid with ``flow`` ``(B, 2, Ht, Wt)``; returns ``(B, 3, Ht, Wt)``."""
        src = to_image_batch(source, "source").to(flow.device)
        return warp(src, flow)[0]

    @staticmethod
    def sample_matches(
        result: MatchResult,
        num: int = 5000,
        generator: torch.Generator | None = None,
        max_uncertainty: float | None = None,
        index: int = 0,
        source_size: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw sparse matches, favouring confident pixels (like RoMa's ``sample``).

        Pixels are drawn without replacement with probability ``∝ 1 / (1 + uncertainty)``, among
        those whose match lies inside the source frame (and below ``max_uncertainty`` px², if set).

        Args:
            result: a :class:`MatchResult`.
            num: number of matches at most.
            generator: RNG for the draw.
            max_uncertainty: drop pixels with a larger variance.
            index: which pair of the batch.
            source_size: ``(Hs, Ws)``; when given, matches falling outside the source are dropped.

        Returns:
            ``(target_xy, source_xy, confidence)``: ``(K, 2)`` pixel coordinates in each image and
            ``(K,)`` confidence ``1 / (1 + variance)`` in ``(0, 1]``.
        """
        flow = result.flow[index].float().cpu()
        var = result.uncertainty[index, 0].float().cpu()
        h, w = flow.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        src_x, src_y = xs + flow[0], ys + flow[1]
        ok = (src_x >= -0.5) & (src_y >= -0.5) & torch.isfinite(src_x) & torch.isfinite(src_y)
        if source_size is not None:
            ok &= (src_x <= source_size[1] - 0.5) & (src_y <= source_size[0] - 0.5)
        if max_uncertainty is not None:
            ok &= var <= max_uncertainty
        confidence = 1.0 / (1.0 + var)
        weights = (confidence * ok).flatten()
        count = int(min(num, int(ok.sum())))
        if count == 0:
            empty = np.zeros((0, 2), np.float32)
            return empty, empty, np.zeros(0, np.float32)
        picked = torch.multinomial(weights, count, replacement=False, generator=generator)
        tgt = torch.stack((xs.flatten()[picked], ys.flatten()[picked]), 1)
        src = torch.stack((src_x.flatten()[picked], src_y.flatten()[picked]), 1)
        return tgt.numpy(), src.numpy(), confidence.flatten()[picked].numpy()
