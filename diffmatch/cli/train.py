"""``python train.py fit --config configs/<name>.yaml``: LightningCLI over DiffMatch and the data module.

Everything the trainer takes works as usual: ``--trainer.devices 4 --trainer.strategy ddp``,
``--trainer.num_nodes 2`` (SLURM is detected by Lightning), ``--ckpt_path last`` to resume, and
loggers chosen in config (CSV by default; ``configs/loggers/wandb.yaml`` or ``tensorboard.yaml``).

:func:`run` is ``train.py``'s entry point: a config that needs a missing backbone wheel, dataset root
or file, a setting the trainer refuses (``--trainer.max_steps -5``) or a truncated ``--ckpt_path``
stops with one line and exit status 2, before any training; Ctrl-C outside Lightning's own handling
exits with status 130.
"""

from __future__ import annotations

import netrc
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from diffmatch.cli.common import EXIT_INTERRUPTED, OneLineErrors, one_line_errors, program
from diffmatch.data import PairDataModule
from diffmatch.errors import InputError
from diffmatch.training import AtomicCheckpointIO, DiffMatchModule

__all__ = ["DiffMatchCLI", "TrainArgumentParser", "StepProgressBar", "check_resume_checkpoint", "main", "run"]

# ``--ckpt_path`` values Lightning resolves itself rather than reading as a file.
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


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


def check_resume_checkpoint(path: str | os.PathLike | None) -> None:
    """Refuse a ``--ckpt_path`` that cannot be resumed from, before the model is set up and trained.

    ``None`` and the names Lightning resolves itself (``last``, ``best``, ``hpc``, ``registry``, URLs)
    pass. A file must exist and be a complete PyTorch zip archive (what ``torch.save`` and Lightning
    write); a truncated copy lacks the archive's directory at its end.

    Raises:
        InputError: one line naming the file and what is wrong with it.
    """
    if path is None or str(path) in _SPECIAL_CKPT_PATHS or "://" in str(path):
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--ckpt_path {path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise InputError(f"--ckpt_path {path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise InputError(f"--ckpt_path {path}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise InputError(f"--ckpt_path {path}: truncated or damaged checkpoint (not a complete PyTorch file)")


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
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # e.g. --trainer.max_steps -5
            raise InputError(f"trainer settings: {err}") from None

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check ``--ckpt_path`` before LightningCLI reads its settings from the file."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_resume_checkpoint(self.config[subcommand].get("ckpt_path"))


class TrainArgumentParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser, whose errors are one line on stderr (no 70-line usage block), status 2."""

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
    with warnings.catch_warnings():
        # `diffmatch train ARGS` passes ARGS while sys.argv keeps the whole command line (which
        # Lightning's DDP launcher runs again); LightningCLI warns about having both.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return DiffMatchCLI(
            DiffMatchModule,
            PairDataModule,
            parser_class=TrainArgumentParser,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": program(Path(sys.argv[0]).name)},
            args=args,
            run=run,
        )


def _input_error(err: BaseException | None) -> InputError | None:
    """The :class:`InputError` behind ``err`` (jsonargparse wraps errors raised while building configs)."""
    seen = []
    while err is not None and not isinstance(err, InputError) and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return err if isinstance(err, InputError) else None


@one_line_errors
def run(args: list[str] | None = None) -> int:
    """``train.py``: run the training CLI and return its exit status.

    A missing backbone wheel, dataset root or file, a setting the trainer refuses, or a
    ``--ckpt_path`` that cannot be resumed from is one line on stderr and status 2 (not a traceback);
    Ctrl-C is status 130 (during fit after Lightning's own one-line graceful shutdown; checkpoints
    are written atomically, so none is half-written). Other exceptions are bugs and keep their traceback.
    """
    try:
        main(args)
    except SystemExit as exit_:
        # Ctrl-C during fit: Lightning shuts down gracefully, says so in one line and exits 1 from
        # inside its `except KeyboardInterrupt`; keep its line and give the shell's status for Ctrl-C.
        if isinstance(exit_.__context__, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        raise
    except MisconfigurationException as err:  # Lightning's word for a bad setting, also raised in fit
        raise InputError(str(err).strip()) from None
    except Exception as err:
        cause = _input_error(err)
        if cause is None:
            raise
        raise cause from None
    return 0
