"""ONNX export of DiffMatch stage 1, with the DDIM steps unrolled and the start noise as an input.

The exported graph is one deterministic function (DDIM with ``eta = 0``)::

    flow, init_flow = graph(source, target, noise)

Inputs (float32):
    * ``source``, ``target``: ``(1, 3, S, S)`` RGB in ``[0, 1]``, already resized to the model's
      processing size ``S`` (``config.image_size``; the bundled default: 384). The model resizes with
      antialiased bilinear interpolation (``resize: antialias``); resize the same way outside.
    * ``noise``: ``(N, 2, c, c)`` standard normal start noise ``F_T``, one ``(2, c, c)`` slice per
      hypothesis; ``c`` is the cost grid (``config.cost_size``; the bundled default: 48) and ``N``
      is free (a dynamic axis). The same noise gives the same flow.

Outputs (float32), on the target's ``c × c`` grid, in pixels of that grid (one pixel = ``S / c``
processing-size pixels), flow convention ``target(x) ≈ source(x + flow(x))``, channel 0 = x,
``align_corners=False``:
    * ``flow``: ``(N, 2, c, c)``, one flow per hypothesis (their mean is DiffMatch's flow, their
      variance its uncertainty);
    * ``init_flow``: ``(1, 2, c, c)``, ``F_init``, the soft- (or hard-) argmax of the global cost.

To bring a flow to images of other sizes, resize it as :func:`diffmatch.geometry.resize_flow` does
with ``source_scale = (Hs / c, Ws / c)`` (the README shows it in numpy). The file's metadata
(``metadata_props``) repeats these facts and holds the model's settings as JSON.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from diffmatch.assets import bundled_stage1
from diffmatch.errors import InputError
from diffmatch.io import atomic_write_bytes
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import load_model_weights, read_cascade_checkpoint

__all__ = ["MIN_OPSET", "INPUT_NAMES", "OUTPUT_NAMES", "OnnxStage1", "export_onnx", "export_checkpoint_onnx"]

MIN_OPSET = 17  # GridSample (the local cost) needs 16; 17 brings LayerNormalization
INPUT_NAMES = ("source", "target", "noise")
OUTPUT_NAMES = ("flow", "init_flow")
_NEEDS_ONNX = "ONNX export needs the onnx package: pip install onnx onnxruntime"


class OnnxStage1(nn.Module):
    """DiffMatch stage 1 as a function of ``(source, target, noise)``, for tracing.

    It runs what :meth:`DiffMatch.forward` runs (the condition, then ``num_steps`` deterministic DDIM
    steps from the given noise, clamped as the model clamps), but stops on the cost grid: the output
    size and the unit are fixed, so no resize to the input images is traced.

    Args:
        model: a stage-1 :class:`DiffMatch` with diffusion (not a cascade, not a regression model).
        num_steps: DDIM steps, unrolled in the trace.
    """

    def __init__(self, model: DiffMatch, num_steps: int) -> None:
        super().__init__()
        self.model = model
        self.num_steps = num_steps

    def forward(
        self, source: torch.Tensor, target: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flows of ``N`` hypotheses on the cost grid; shapes and units in the module docstring.

        Args:
            source: ``(1, 3, S, S)`` RGB in ``[0, 1]``.
            target: ``(1, 3, S, S)`` RGB in ``[0, 1]``.
            noise: ``(N, 2, c, c)`` start noise.

        Returns:
            ``flow`` ``(N, 2, c, c)`` and ``init_flow`` ``(1, 2, c, c)``, in cost-grid pixels.
        """
        model, c = self.model, self.model.config.cost_size
        cond = model.condition(source, target)
        n = noise.shape[0]
        init = cond.init_flow.expand(n, -1, -1, -1)
        local = None if cond.local_cost is None else cond.local_cost.expand(n, -1, -1, -1)
        out = model.diffusion.sample_from(lambda x, t: model.denoiser(x, t, init, local), noise, self.num_steps)
        if model.config.clamp_flow:
            out = out.clamp(-1.0, 1.0)
        return out * c, cond.init_flow * c


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise InputError(_NEEDS_ONNX) from None


def check_exportable(model: DiffMatch, num_steps: int, opset: int) -> None:
    """Raise :class:`InputError` (one line) unless ``model`` can be exported with these settings."""
    if not isinstance(model, DiffMatch):
        raise InputError(f"expected a DiffMatch model, got {type(model).__name__}")
    if model.upsampler is not None:
        raise InputError("cascade models (stage 2, the flow upsampler) cannot be exported to ONNX yet; stage 1 only")
    cfg = model.config
    if not cfg.diffusion:
        raise InputError("regression models (diffusion: false) have no sampling to export; ONNX export needs diffusion")
    if not model.features.stores_weights:
        raise InputError(
            f"features {cfg.features!r} load a pretrained model from outside the checkpoint; "
            "ONNX export supports backbones stored in the checkpoint (vgg16, xfeat, efficientnet_lite0)"
        )
    limit = cfg.num_train_timesteps
    if not isinstance(num_steps, int) or not 1 <= num_steps <= limit:
        raise InputError(f"steps must be an integer in [1, {limit}] for this model, got {num_steps!r}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise InputError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")


def export_onnx(model: DiffMatch, out: str | os.PathLike, num_steps: int | None = None, opset: int = MIN_OPSET) -> Path:
    """Export ``model`` (on the CPU, in float32) to an ONNX file, written atomically.

    Args:
        model: a stage-1 :class:`DiffMatch` (its processing size fixes the input size; see
            :meth:`DiffMatch.with_image_size` for another).
        out: destination ``.onnx`` file.
        num_steps: DDIM steps to unroll (``None``: :meth:`DiffMatch.default_steps`).
        opset: ONNX opset, at least :data:`MIN_OPSET`.

    Returns:
        The written path.

    Raises:
        InputError: ``onnx`` is not installed, or the model or settings cannot be exported (one line).
    """
    _require_onnx()
    import onnx

    num_steps = model.default_steps() if num_steps is None else num_steps
    check_exportable(model, num_steps, opset)
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()  # the caller's model stays where it is
    cfg = model.config
    s, c = cfg.image_size, cfg.cost_size
    generator = torch.Generator().manual_seed(0)
    example = (torch.rand(1, 3, s, s, generator=generator), torch.rand(1, 3, s, s, generator=generator),
               torch.randn(2, 2, c, c, generator=generator))
    buffer = io.BytesIO()
    training = model.training
    # The trace warns at every Python-level shape check; the shapes are fixed here by design.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.eval()
        try:
            torch.onnx.export(
                OnnxStage1(model, num_steps),
                example,
                buffer,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed; the hypotheses stay a dynamic axis
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={"noise": {0: "hypotheses"}, "flow": {0: "hypotheses"}},
            )
        finally:
            model.train(training)
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {
        "diffmatch.format": "diffmatch-stage1-onnx",
        "diffmatch.config": json.dumps(cfg.to_dict()),
        "image_size": str(s),
        "cost_size": str(c),
        "num_steps": str(num_steps),
        "inputs": f"source, target: (1, 3, {s}, {s}) float32 RGB in [0, 1], resized to {s}x{s} "
        f"({cfg.resize} bilinear); noise: (N, 2, {c}, {c}) float32 standard normal, one slice per hypothesis",
        "outputs": f"flow: (N, 2, {c}, {c}); init_flow: (1, 2, {c}, {c}); pixels of the {c}x{c} grid, "
        "target(x) ~ source(x + flow(x)), channel 0 = x, align_corners=False",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    out = Path(out)
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def export_checkpoint_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    num_steps: int | None = None,
    image_size: int | None = None,
    opset: int = MIN_OPSET,
    ema: bool = True,
) -> Path:
    """Export a ``.ckpt`` or exported weights file's stage-1 model to ONNX (see :func:`export_onnx`).

    Args:
        checkpoint: Lightning ``.ckpt`` or exported weights.
        out: destination ``.onnx`` file.
        num_steps: DDIM steps (``None``: the checkpoint's ``sampling_steps``, else ``T``).
        image_size: processing size of the graph (``None``: the checkpoint's own), see
            :meth:`DiffMatch.with_image_size`.
        opset: ONNX opset, at least :data:`MIN_OPSET`.
        ema: from a Lightning checkpoint with an EMA, export the average (else the trained weights).

    Raises:
        InputError: a bad file or setting, a cascade checkpoint, or ``onnx`` missing (one line).
    """
    _require_onnx()
    config, upsampler, _ = read_cascade_checkpoint(checkpoint, ema=ema)
    if upsampler is not None:
        raise InputError(
            f"{checkpoint}: cascade checkpoints (stage 2) cannot be exported to ONNX yet; export its stage 1 "
            f"(the bundled default's is {bundled_stage1()})"
        )
    model = DiffMatch(config, pretrained_features=False)
    load_model_weights(model, checkpoint, ema=ema)
    if image_size is not None:
        try:
            model = model.with_image_size(image_size)
        except ValueError as err:
            raise InputError(str(err)) from None
    return export_onnx(model, out, num_steps, opset)
