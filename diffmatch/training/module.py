"""Lightning wrapper: loss, optimiser, EMA, metrics and validation pictures around :class:`DiffMatch`.

With ``upsampler`` settings it trains stage 2 (:class:`~diffmatch.models.diffmatch.DiffMatch` with an upsampler): stage 1
is frozen and only the upsampler's denoiser learns (and is averaged by the EMA).

Inference never imports this module. Flows follow the project convention: target grid,
``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from diffmatch.errors import InputError
from diffmatch.io import atomic_open, atomic_write_bytes
from diffmatch.models.config import (
    DiffMatchConfig,
    UpsamplerConfig,
    config_from_dict,
    upsampler_config_from_dict,
)
from diffmatch.models.diffmatch import DiffMatch
from diffmatch.models.weights import load_model_weights

__all__ = ["DiffMatchModule", "AtomicCheckpointIO", "LastCheckpointAtEnd", "endpoint_error_stats"]


def endpoint_error_stats(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Batch-mean AEPE and PCK-1/3/5 (per image over its mask, then averaged), for logging.

    Args:
        pred: ``(B, 2, H, W)`` predicted flow in pixels.
        gt: ``(B, 2, H, W)`` ground-truth flow in pixels.
        mask: ``(B, H, W)`` bool where the ground truth is valid.
    """
    epe = (pred - gt).norm(dim=1)
    valid = torch.ones_like(epe, dtype=torch.bool) if mask is None else mask.bool()
    count = valid.flatten(1).sum(1).clamp_min(1)
    per_image = lambda x: ((x * valid).flatten(1).sum(1) / count).mean()  # noqa: E731
    out = {"aepe": per_image(epe)}
    for px in (1, 3, 5):
        out[f"pck{px}"] = per_image((epe <= px).float())
    return out


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it, so an interrupted save loses nothing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_open(path, "wb") as handle:
            torch.save(checkpoint, handle)


class LastCheckpointAtEnd(Callback):
    """Writes each ``ModelCheckpoint(save_last=True)``'s last checkpoint when training ends between its saves.

    Lightning writes ``last.ckpt`` only when the callback saves (every ``every_n_train_steps``), so
    a run whose ``max_steps`` is not a multiple of that lost its final steps. Training that stops
    by an exception (Ctrl-C) is not saved here.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        written = set()
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.save_last or callback.dirpath is None:
                continue
            if getattr(callback, "_last_global_step_saved", -1) == trainer.global_step:
                continue  # it saved at this very step
            path = callback.last_model_path or os.path.join(
                callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
            )
            if path not in written:
                trainer.save_checkpoint(path)  # through the trainer's (atomic) checkpoint IO
                written.add(path)
            callback.last_model_path = path


def warmup_ema_avg_fn(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """An EMA update for :class:`~torch.optim.swa_utils.AveragedModel` whose decay warms up.

    After ``n`` updates the average moves towards the current weights with decay
    ``min(decay, (1 + n) / (10 + n))`` (the warm-up of diffusers' ``EMAModel``), so early weights,
    including those a fine-tuning run started from, fade out quickly.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        n = int(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            for avg, cur in zip(averaged, current):
                avg.lerp_(cur, weight)

    return update


class DiffMatchModule(L.LightningModule):
    """Trains a DiffMatch model.

    Args:
        model: model settings (see :class:`DiffMatchConfig`); a dict is accepted too.
        lr: AdamW learning rate (paper: 1e-4 for stage 1).
        weight_decay: AdamW weight decay.
        lr_decay_steps: decay the learning rate to zero over this many optimiser steps along a
            half cosine, stepped every step (``None``: constant, the paper's setting). Counted from
            the start of this run, so a fine-tuning run started with ``init_from`` decays over its own steps.
        lr_decay_seconds: decay along the same half cosine over this many seconds of wall-clock
            training instead, measured from the first training step of this run (or of a resumed
            run). For time-boxed runs whose step rate is not known ahead (a GPU lease, a SLURM slot
            fed by CPU data loaders): pair it with ``--trainer.max_time`` of the same length so that
            the run ends where the rate reaches zero. Exclusive with ``lr_decay_steps``.
        ema_decay: keep an exponential moving average of the denoiser with this decay (``None``: off).
            Validation and exported weights then use the average.
        ema_warmup: ramp the average's decay up as ``min(ema_decay, (1 + n) / (10 + n))`` after
            ``n`` updates, so that it forgets its starting weights within a few hundred steps. Use it
            for short fine-tuning runs (``init_from``): with a fixed 0.999 the average of a 1600-step
            run still holds 20 % of the weights it started from.
        val_samples: hypotheses per pair at validation.
        val_steps: DDIM steps at validation.
        init_from: start from the weights of a Lightning checkpoint or an exported weights file
            (e.g. stage 1 for fine-tuning); the optimiser state is not restored (use ``--ckpt_path``
            to resume a run). With ``upsampler`` set, a stage-1 file also initialises the stage-2
            denoiser (paper Sec. 4.4); a cascade file restores both stages.
        max_val_panels: validation batches drawn as a picture panel each epoch.
        upsampler: stage-2 settings (see :class:`UpsamplerConfig`): train the flow upsampler of a
            frozen stage 1; ``None`` trains stage 1.
    """

    def __init__(
        self,
        model: DiffMatchConfig | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_decay_steps: int | None = None,
        lr_decay_seconds: float | None = None,
        ema_decay: float | None = None,
        ema_warmup: bool = False,
        val_samples: int = 1,
        val_steps: int = 5,
        init_from: str | None = None,
        max_val_panels: int = 1,
        upsampler: UpsamplerConfig | None = None,
    ) -> None:
        super().__init__()
        config = config_from_dict(model if model is not None else DiffMatchConfig())
        stage2 = None if upsampler is None else upsampler_config_from_dict(upsampler)
        if lr_decay_steps is not None and lr_decay_seconds is not None:
            raise InputError("give lr_decay_steps or lr_decay_seconds, not both")
        if lr_decay_steps is not None and lr_decay_steps < 1:
            raise InputError(f"lr_decay_steps must be >= 1 or None, got {lr_decay_steps}")
        if lr_decay_seconds is not None and not lr_decay_seconds > 0:
            raise InputError(f"lr_decay_seconds must be > 0 or None, got {lr_decay_seconds}")
        self.save_hyperparameters(ignore=["model", "upsampler"])
        self._decay_started: float | None = None  # monotonic time of this run's first step
        self.hparams["model"] = config.to_dict()  # plain data, so checkpoints load with weights_only
        self.hparams["upsampler"] = None if stage2 is None else stage2.to_dict()
        # Backbone weights that init_from restores need not (and may not be able to) be loaded first.
        self.model = DiffMatch(config, stage2, pretrained_features=not init_from)
        if init_from:
            load_model_weights(self.model, init_from)
        if stage2 is not None:
            self.model.denoiser.requires_grad_(False)  # stage 1 stays as trained
        self.ema = None
        if ema_decay is not None:
            if not 0.0 < ema_decay < 1.0:
                raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
            average = warmup_ema_avg_fn(ema_decay) if ema_warmup else get_ema_multi_avg_fn(ema_decay)
            self.ema = AveragedModel(self.model.trained_denoiser, multi_avg_fn=average, use_buffers=True)
            self.ema.requires_grad_(False)  # updated by averaging, never by gradients (DDP must not wait on it)

    # ----------------------------------------------------------------------------------- training
    def configure_callbacks(self) -> list[Callback]:
        """:class:`LastCheckpointAtEnd`, so that a run's final steps are never lost."""
        return [LastCheckpointAtEnd()]

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        steps = self.hparams.get("lr_decay_steps")
        seconds = self.hparams.get("lr_decay_seconds")
        if steps is None and seconds is None:
            return optimizer
        if steps is not None:
            share = lambda step: min(step, steps) / steps  # noqa: E731
        else:
            share = lambda step: self._elapsed_share(seconds)  # noqa: E731
        cosine = lambda step: 0.5 * (1.0 + math.cos(math.pi * share(step)))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _elapsed_share(self, seconds: float) -> float:
        """The share of ``seconds`` that has passed since this run's first step (0 before it), at most 1."""
        if self._decay_started is None:
            return 0.0
        return min((time.monotonic() - self._decay_started) / seconds, 1.0)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._decay_started is None:
            self._decay_started = time.monotonic()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model.loss(batch["source"], batch["target"], batch["flow"], batch.get("mask"))
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch["source"].shape[0])
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model.trained_denoiser)

    def inference_model(self) -> DiffMatch:
        """The model used for validation and export: with the EMA denoiser when EMA is on."""
        if self.ema is None:
            return self.model
        return self.model.with_trained_denoiser(self.ema.module)

    # --------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        model = self.inference_model()
        gen = torch.Generator(device=self.device).manual_seed(batch_idx)
        result = model(batch["source"], batch["target"], self.hparams.val_samples, self.hparams.val_steps, generator=gen)
        mask = batch.get("mask")
        stats = endpoint_error_stats(result.flow, batch["flow"], mask)
        init_stats = endpoint_error_stats(result.init_flow, batch["flow"], mask)
        b = batch["source"].shape[0]
        for key, value in stats.items():
            self.log(f"val/{key}", value, batch_size=b, sync_dist=True, prog_bar=key == "aepe")
        # A cascade's init_flow is the stage-1 mean flow (bilinearly upsampled); stage 1's is F_init.
        init_key = "val/aepe_init" if self.model.upsampler is None else "val/aepe_stage1"
        self.log(init_key, init_stats["aepe"], batch_size=b, sync_dist=True)
        if batch_idx < self.hparams.max_val_panels:
            log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
            if self.trainer.is_global_zero:
                self._log_panel(batch, result, batch_idx, log_dir)

    def _log_panel(self, batch: dict[str, torch.Tensor], result: Any, batch_idx: int, log_dir: str | None) -> None:
        from diffmatch.viz import figure_to_png, panel_figure

        to_img = lambda t: (t[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()  # noqa: E731
        flow = result.flow[0].permute(1, 2, 0).float().cpu().numpy()
        gt_radius = float(batch["flow"][0].norm(dim=0).max().clamp_min(1.0))
        fig = panel_figure(
            to_img(batch["source"]),
            to_img(batch["target"]),
            flow,
            result.uncertainty[0, 0].float().cpu().numpy(),
            gt_radius,
        )
        png = figure_to_png(fig)
        key = f"val/panel_{batch_idx}"
        logger = self.logger
        if logger is not None and hasattr(logger, "log_image"):  # wandb
            import io

            from PIL import Image

            logger.log_image(key=key, images=[Image.open(io.BytesIO(png))], step=self.global_step)
        elif logger is not None and hasattr(getattr(logger, "experiment", None), "add_image"):  # tensorboard
            import cv2

            image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            logger.experiment.add_image(key, image.copy(), self.global_step, dataformats="HWC")
        if log_dir:
            atomic_write_bytes(Path(log_dir) / "panels" / f"step{self.global_step:07d}_{batch_idx}.png", png)
