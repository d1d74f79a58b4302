"""Training with Lightning: :class:`~diffmatch.training.module.DiffMatchModule` (the loss, EMA,
validation AEPE and panels, atomic checkpoints) behind ``python train.py`` / ``diffmatch train``.
The data side is :class:`diffmatch.data.DiffMatchDataModule`."""

from diffmatch.training.module import AtomicCheckpointIO, DiffMatchModule, endpoint_error_stats

__all__ = ["AtomicCheckpointIO", "DiffMatchModule", "endpoint_error_stats"]
