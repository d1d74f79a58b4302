"""Inference precision: ``32`` (float32), ``bf16`` (bfloat16) or ``16`` (float16, CUDA only).

At ``bf16`` and ``16`` the model's networks (the feature extractor and the U-Net) hold their weights
in that dtype, cast once, and run natively in it: :meth:`DiffMatch.extract` and
:class:`~diffmatch.models.denoiser.FlowDenoiser` cast their inputs to the network's dtype and the results
back to float32. The matching stays float32 whatever the precision: the cost maps, the global cost,
its soft-argmax (``F_init``), the local cost, the DDIM update and every flow. The global cost's
cosine similarities crowd near 1, where bfloat16 keeps about 2⁻⁸ ≈ 0.004 of resolution, and the
soft-argmax divides them by a temperature of 0.005, so a bfloat16 cost would move ``F_init`` by
whole cells.

Why not ``torch.autocast``: autocast casts at every operation, and a model at inference runs with
frozen weights, so every convolution and linear layer casts its input and its (frozen, uncached)
weight, and every GroupNorm casts back to float32 (autocast's float32 list) for the next
convolution to cast down again. Measured on the bundled default (3 hypotheses, a 512×345 pair, the
CPU profiler): under bfloat16 autocast a match ran 413 copy kernels against float32's 146, beside
the same 733 operators, so a launch-bound GPU run (the small default model) pays about a third more
kernels, the likely cause of bf16 being slower than float32 on an H100 (0.131 against 0.085 s). With
the weights cast once, 207: 7 casts at the networks' boundaries and 52 copies inside this AVX2 CPU's
fallback bfloat16 convolution, which a GPU does not make. Autocast also cast the ``(c², c²)`` cost
volume down for its matmuls and up again for the softmax and the local cost's sampling. The
float32 code paths (:func:`full_precision`) hold under a caller's own autocast too (e.g.
Lightning's ``bf16-mixed``).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from diffmatch.errors import InputError

__all__ = ["PRECISIONS", "Precision", "check_precision", "precision_dtype", "full_precision", "native_bf16"]

Precision = Literal["32", "bf16", "16"]
PRECISIONS: tuple[str, ...] = ("32", "bf16", "16")
_DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}
_ALIASES = {"32-true": "32", "bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "16", "16-true": "16"}


def check_precision(precision: str, device: torch.device | str) -> Precision:
    """``precision`` if the device can run it.

    Args:
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (Lightning's spellings ``32-true``,
            ``bf16-mixed``/``bf16-true`` and ``16-mixed``/``16-true`` are accepted too).
        device: where the model runs.

    Raises:
        InputError: an unknown precision, or float16 on a device other than CUDA (one line).
    """
    name = _ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    if name == "16" and kind != "cuda":
        raise InputError(f"precision 16 (float16) needs a CUDA device, got {kind}; use bf16 or 32")
    return name  # type: ignore[return-value]


def precision_dtype(precision: Precision) -> torch.dtype:
    """The dtype of the networks' weights at ``precision``."""
    return _DTYPES[precision]


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (CUDA; a CPU with AVX512-BF16 or AMX).

    Without it PyTorch falls back to a slow reference convolution on the CPU (measured 10x slower
    than float32 on an AVX2-only CPU).
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def full_precision(like: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``like``'s device (a no-op when it is off), for float32 code."""
    if not torch.is_autocast_enabled(like.device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=like.device.type, enabled=False)
