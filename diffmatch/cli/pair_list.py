"""``infer.py --pairs FILE --devices N``: a pair list split over N processes with Lightning.

``Trainer.predict`` with the DDP strategy (gloo on CPU, NCCL on GPUs) runs N processes. Each loads
the model once (on its own GPU with ``--accelerator gpu``) and writes its pairs' folders exactly as
one process does (:func:`diffmatch.cli.infer.match_pair`): the same names, the same files, each
folder whole or absent. Process ``r`` takes the pairs ``r, r + N, r + 2N, ...`` of those still to
do (:func:`share`). A pair's result does not depend on the split: every pair is sampled with a
generator of its own, seeded with ``--seed``.

Every process runs the whole command. The first starts the others by running the same command line
again (Lightning's subprocess launcher: ``python infer.py ...``, so ``--devices N`` needs the command,
not ``main(argv)`` called from Python); under SLURM, ``srun`` starts all of them
(``scripts/slurm_match.sbatch``). Each process therefore reads the list and finds the pairs still to
do on its own; they agree because no pair is written before all of them have met at the start of
``predict``. The first process reports: the notes before the run, and after it the summary with the
counts summed over the processes.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset

from diffmatch.cli.common import EXIT_INTERRUPTED, describe_os_error, print_error
from diffmatch.cli.pair_progress import PairTotals
from diffmatch.errors import InputError
from diffmatch.threads import thread_budget

__all__ = ["PairList", "PairListProcesses", "PairWriter", "check_accelerator", "share"]


def check_accelerator(accelerator: str, devices: int) -> str:
    """The accelerator the ``--devices`` processes run on: ``"cpu"`` or ``"gpu"``.

    Args:
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"`` (GPUs where CUDA is available, else CPU).
        devices: processes, one GPU each on ``"gpu"``.

    Raises:
        InputError: ``"gpu"`` without a CUDA GPU, or more ``devices`` than GPUs.
    """
    if accelerator not in ("cpu", "gpu", "auto"):
        raise InputError(f"--accelerator must be cpu, gpu or auto, got {accelerator!r}")
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            raise InputError("--accelerator gpu: no CUDA GPU is available here; use --accelerator cpu")
        if devices > gpus:
            raise InputError(f"--devices {devices} with --accelerator gpu: this machine has {gpus} CUDA GPU(s)")
    return accelerator


def share(todo: list[int], rank: int, processes: int) -> list[int]:
    """The pairs process ``rank`` of ``processes`` matches: ``todo[rank], todo[rank + processes], ...``.

    Interleaved, so that a list sorted by image size is shared evenly; a process may get none.

    Example:
        >>> share([0, 1, 2, 5, 7], rank=1, processes=2)
        [1, 5]
    """
    return list(todo)[rank::processes]


class PairList(Dataset):
    """Indices into a pair list. The images are read where the pair is matched, so that an
    unreadable one fails that pair alone (an error in a data loader would stop the process)."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> int:
        return self.indices[item]


class PairWriter(LightningModule):
    """Matches and writes the pairs ``predict`` gives this process, and counts them.

    The matcher is not a submodule: it was built on this process's device before ``predict``, and
    Lightning has nothing to move, wrap or cast.

    Args:
        write_pair: matches pair ``index`` and writes its folder; returns whether it was written (a
            failure is reported by it, in one line) and raises ``OSError`` when the disk is full or
            read-only.
        todo: indices of the pairs to match, all processes together.
    """

    def __init__(self, write_pair: Callable[[int], bool], todo: list[int]) -> None:
        super().__init__()
        self.write_pair = write_pair
        self.todo = list(todo)
        self.written = self.failed = self.not_tried = 0
        self.stopped = False
        self.started: float | None = None
        # Fewer pairs than processes leaves some processes without any: they wait for the others.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_dataloader(self) -> DataLoader:
        # Lightning's own sampler for prediction refuses fewer pairs than processes.
        mine = share(self.todo, self.global_rank, self.trainer.world_size)
        return DataLoader(PairList(mine), batch_size=None)  # one pair per step, as it is

    def on_predict_start(self) -> None:
        self.started = time.perf_counter()  # all processes have met and loaded the model

    def predict_step(self, index: int, batch_idx: int) -> bool:
        """Match and write pair ``index``; returns whether it was written (``predict`` keeps no results)."""
        if self.stopped:
            self.not_tried += 1
            return False
        try:
            written = self.write_pair(int(index))
        except OSError as err:  # a full or read-only disk: no later pair could be written either
            print_error(f"{describe_os_error(err)} (pair {index}); this process stops, its other pairs are not tried")
            self.stopped = True
            self.not_tried += 1
            return False
        self.written += written
        self.failed += not written
        return written


class PairListProcesses:
    """The ``--devices`` processes of a ``--pairs`` run: a Lightning ``Trainer`` with the DDP strategy.

    Building it starts nothing; :meth:`predict` does. Lightning's own log lines (devices found,
    process group set up) are left out, so stdout keeps ``infer.py``'s lines: one per pair, then the summary.

    Args:
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"`` (:func:`check_accelerator`).
        devices: how many processes (on ``"gpu"``, one GPU each).
        from_command_line: the arguments are this process's command line, which Lightning runs again
            to start the other processes.

    Raises:
        InputError: no such accelerator here, or the other processes could not be started (see
            ``from_command_line``).
    """

    def __init__(self, accelerator: str, devices: int, from_command_line: bool) -> None:
        accelerator = check_accelerator(accelerator, devices)
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.devices = devices
        self.trainer = Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy="ddp",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,  # each process says "wrote ..." per pair instead
            enable_model_summary=False,
            use_distributed_sampler=False,  # PairWriter shares the pairs out itself
            inference_mode=False,  # torch.no_grad, as DiffMatcher.match uses in one process
        )
        if not (from_command_line or self.started_elsewhere):
            raise InputError(
                "--devices N starts its other processes by running this command line again; run "
                "`python infer.py ... --devices N` as a command, not main(argv) from Python"
            )

    @property
    def started_elsewhere(self) -> bool:
        """This process was started by the first one or by the cluster (``srun``), not by the user."""
        return self.trainer.strategy.cluster_environment.creates_processes_externally

    @property
    def device(self) -> torch.device:
        """This process's device: the CPU, or its own GPU."""
        return self.trainer.strategy.root_device

    @property
    def is_first(self) -> bool:
        """This is the process that reports (global rank 0); known before the processes meet."""
        return self.trainer.node_rank == 0 and self.trainer.local_rank == 0

    def thread_share(self) -> int:
        """This process's threads (:mod:`diffmatch.threads`): the machine's budget shared by its processes.

        The first process divides the budget by ``devices`` and passes its share on to the
        processes it starts in ``OMP_NUM_THREADS`` (Lightning would set its own otherwise). A
        process started elsewhere takes what its environment and CPU affinity give it (under SLURM:
        ``--cpus-per-task``).
        """
        if self.started_elsewhere:
            return thread_budget(measure_load=False)
        share = max(1, thread_budget() // self.devices)
        os.environ["OMP_NUM_THREADS"] = str(share)
        return share

    def predict(self, todo: list[int], write_pair: Callable[[int], bool]) -> PairTotals | None:
        """Match the pairs ``todo`` over the processes.

        Args:
            todo: indices of the pairs still to do (the same list in every process).
            write_pair: matches and writes one pair (see :class:`PairWriter`).

        Returns:
            In the first process the totals over all processes (the time from when every process
            had loaded the model to when the last finished); ``None`` in the others.
        """
        if not todo:  # nothing to start the processes for
            return PairTotals() if self.is_first else None
        writer = PairWriter(write_pair, todo)
        begun = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Lightning's own use of an API torch deprecates: nothing a user of infer.py can act on.
                warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
                self.trainer.predict(writer, return_predictions=False)
        except SystemExit as exit_:
            # Ctrl-C reaches every process; Lightning stops them and exits with status 1. The first
            # process says it in one line (status 130), the others leave quietly with the same status.
            if isinstance(exit_.__context__, KeyboardInterrupt):
                if self.is_first:
                    raise KeyboardInterrupt from None
                raise SystemExit(EXIT_INTERRUPTED) from None
            raise
        counts = torch.tensor([writer.written, writer.failed, writer.not_tried], device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")  # also waits for the last process
        seconds = time.perf_counter() - (writer.started or begun)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if not self.trainer.is_global_zero:
            return None
        written, failed, not_tried = (int(c) for c in counts.tolist())
        return PairTotals(written, failed, not_tried, seconds)
