"""``python train.py fit --config configs/<name>.yaml``: LightningCLI over DiffMatch and the data module.

Everything the trainer takes works as usual: ``--trainer.devices 4 --trainer.strategy ddp``,
``--trainer.num_nodes 2`` (SLURM is detected by Lightning), ``--ckpt_path last`` to resume, and
loggers chosen in config (CSV by default; ``configs/loggers/wandb.yaml`` or ``tensorboard.yaml``).
"""

from __future__ import annotations

import netrc
import os
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from diffmatch.data import PairDataModule
from diffmatch.training import AtomicCheckpointIO, DiffMatchModule

__all__ = ["DiffMatchCLI", "StepProgressBar", "main"]


def _wandb_offline_without_key() -> None:
    """Run wandb offline when no API key is configured, instead of failing or prompting."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    os.environ["WANDB_MODE"] = "offline"


class StepProgressBar(TQDMProgressBar):
    """The default progress bar, counting towards ``max_steps`` in step-based runs.

    Our configs stop after ``max_steps`` with ``max_epochs`` unset (-1), inside the first epoch of a
    100 000-pair synthetic set; Lightning's bars would show ``Epoch 0/-2`` or a 25 000-batch epoch.
    This one shows ``Epoch 0`` and a bar that ends where the run ends.
    """

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        trainer = self.trainer
        if trainer.max_steps > 0:
            total = min(total, (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches)
        return total


class DiffMatchCLI(LightningCLI):
    """LightningCLI whose trainer writes checkpoints atomically unless the config sets its own plugins,
    and shows a :class:`StepProgressBar` unless the config sets its own progress bar."""

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        if not trainer_config.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        if trainer_config.get("logger") in (None, True):
            # CSV by default (Lightning would pick TensorBoard whenever it is installed).
            kwargs.setdefault("logger", CSVLogger(save_dir=trainer_config.get("default_root_dir") or "."))
        return super().instantiate_trainer(**kwargs)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in (*given, *callbacks)
        ):
            callbacks = [*callbacks, StepProgressBar()]
        return super()._instantiate_trainer(config, callbacks)


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the training CLI; ``args`` defaults to ``sys.argv[1:]``.

    Args:
        args: command-line arguments (with the subcommand, e.g. ``fit``, when ``run`` is true).
        run: run the subcommand; ``False`` only builds the model, data module and trainer from
            ``args`` (given without a subcommand).
    """
    _wandb_offline_without_key()
    return DiffMatchCLI(
        DiffMatchModule,
        PairDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
