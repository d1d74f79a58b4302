"""``python train.py fit --config configs/<name>.yaml``: LightningCLI over DiffMatch and the data module.

Everything the trainer takes works as usual: ``--trainer.devices 4 --trainer.strategy ddp``,
``--trainer.num_nodes 2`` (SLURM is detected by Lightning), ``--ckpt_path last`` to resume, and
loggers chosen in config (CSV by default; ``configs/loggers/wandb.yaml`` or ``tensorboard.yaml``).
"""

from __future__ import annotations

import netrc
import os

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from diffmatch.data import PairDataModule
from diffmatch.training import AtomicCheckpointIO, DiffMatchModule

__all__ = ["main"]


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


class DiffMatchCLI(LightningCLI):
    """LightningCLI whose trainer writes checkpoints atomically unless the config sets its own plugins."""

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        if not trainer_config.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        if trainer_config.get("logger") in (None, True):
            # CSV by default (Lightning would pick TensorBoard whenever it is installed).
            kwargs.setdefault("logger", CSVLogger(save_dir=trainer_config.get("default_root_dir") or "."))
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the training CLI; ``args`` defaults to ``sys.argv[1:]``."""
    _wandb_offline_without_key()
    return DiffMatchCLI(
        DiffMatchModule,
        PairDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
