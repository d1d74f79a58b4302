"""How many threads diffmatch's parts use, so that together they do not oversubscribe the CPUs.

Three thread pools meet in a match: PyTorch's intra-op threads (the model), OpenCV's (resizing,
the variational refinement) and the refinement's own pool, which refines hypotheses side by side.
Left to their defaults, each takes every CPU: on 2 cores the refinement ran 2 flows at once with 2
OpenCV threads each, while PyTorch's idle threads kept spinning, and on a machine shared with other
jobs PyTorch's threads wait for each other at every operation. Under load the commands then ran
3–9× slower than with ``OMP_NUM_THREADS=1``.

The rule here: one budget of threads, :func:`thread_budget`: ``OMP_NUM_THREADS`` exactly when that is
set; otherwise the CPUs this process may run on (its affinity), and no more than the CPUs other
processes leave idle right now (measured over 0.1 s from ``/proc/stat``; a load average would count
a command's own previous run for a minute).

The thread count also decides the last bits of the model's output (PyTorch's parallel reductions
sum in another order: about 4e-4 px at 2 threads against 1), and the refinement, two-pass matching
and the layer search can turn those into different matches on hard pairs (a wide-baseline scene of
the benchmark: 24.1 px at 2 threads, 20.4 px at 1). A run is exactly reproducible at a fixed count,
so a measurement pins it with ``OMP_NUM_THREADS`` (which the load then does not lower) and the
evaluation commands record the count they ran with. PyTorch gets the whole budget
(:func:`configure_threads`, called by the command lines; library users keep their own setting), and
the refinement splits it: ``k`` flows side by side, each with ``budget // k`` OpenCV threads
(:func:`opencv_threads`), so at most ``budget`` threads run at any time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

__all__ = ["available_cpus", "busy_cpus", "configure_threads", "opencv_threads", "thread_budget"]


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _cpu_times() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies of all CPUs so far (``/proc/stat``), or ``None`` where there is none."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def busy_cpus(interval: float = 0.1) -> float:
    """How many CPUs other processes keep busy, measured over ``interval`` seconds while this one sleeps.

    Returns 0 where it cannot be measured (no ``/proc/stat``).
    """
    first = _cpu_times()
    if first is None:
        return 0.0
    time.sleep(interval)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return 0.0
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def thread_budget(measure_load: bool = True) -> int:
    """Threads diffmatch may keep busy at once.

    Args:
        measure_load: also leave the CPUs that other processes keep busy now (:func:`busy_cpus`,
            rounded) to them.

    Returns:
        ``OMP_NUM_THREADS`` when it is set (an explicit count is kept, so that a measurement
        reproduces whatever else runs); else ``min(available CPUs, available CPUs - busy ones)``, at
        least 1.
    """
    requested = _env_threads()
    if requested is not None:
        return requested
    cpus = available_cpus()
    budget = cpus
    if measure_load:
        budget = min(budget, cpus - round(busy_cpus()))
    return max(1, budget)


def configure_threads(budget: int | None = None) -> int:
    """Give PyTorch (intra-op) ``budget`` threads, :func:`thread_budget` by default; returns the budget.

    The command lines call it once at start; OpenCV's threads are set per refinement
    (:func:`opencv_threads`) and a single-threaded OpenCV is asked for elsewhere.
    """
    import cv2
    import torch

    budget = thread_budget() if budget is None else max(1, int(budget))
    torch.set_num_threads(budget)
    cv2.setNumThreads(1)  # resizing and decoding are small next to the model; the refinement sets its own
    return budget


@contextlib.contextmanager
def opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's thread count set to ``count`` inside the block (it is process-wide), restored after."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(max(1, int(count)))
    try:
        yield
    finally:
        cv2.setNumThreads(previous)
