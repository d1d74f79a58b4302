"""What a ``--pairs`` run has done and has left: pair folders, complete pairs, the closing tally.

``infer.py --pairs FILE`` writes pair ``i`` of the list into ``OUT/NNNN_<source>_<target>``
(:func:`pair_folder`). The folder appears whole or not at all: its files are written into a hidden
``.NAME.XXXX.partial`` folder that is renamed into place at the end
(:func:`~diffmatch.io.atomic_folder`). A folder that holds every file a run would write is
therefore a pair an earlier run finished, and a re-run after a crash or Ctrl-C skips it
(:func:`pairs_to_do`). The same holds whether one process or ``--devices N`` wrote it.

This module imports nothing heavy (no torch), like :mod:`diffmatch.cli.common`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["PairTotals", "pair_folder", "pairs_to_do", "summary_line"]


@dataclasses.dataclass
class PairTotals:
    """How the pairs of a ``--pairs`` run went, over all its processes.

    Attributes:
        written: pairs matched and written.
        failed: pairs that could not be matched or written (each reported in one line).
        not_tried: pairs left when a process stopped on a full or read-only disk (``--devices``).
        seconds: wall time of matching and writing, the model already loaded.
    """

    written: int = 0
    failed: int = 0
    not_tried: int = 0
    seconds: float = 0.0


def pair_folder(out: Path, index: int, pair: tuple[Path, Path]) -> Path:
    """Where pair ``index`` of a ``--pairs`` list is written: ``out/NNNN_<source stem>_<target stem>``."""
    return out / f"{index:04d}_{pair[0].stem}_{pair[1].stem}"


def pairs_to_do(out: Path, pairs: list[tuple[Path, Path]], names: list[str], overwrite: bool = False) -> list[int]:
    """The indices of the pairs still to match: those whose folder lacks one of the files ``names``.

    Args:
        out: the run's ``--out``.
        pairs: the list, ``(source, target)`` each.
        names: the files this run writes per pair (``infer.output_names``); a folder holding all of
            them was written by an earlier run with these output options, though not necessarily
            with this model or seed.
        overwrite: redo every pair.

    Returns:
        Indices into ``pairs``, in order.
    """
    if overwrite:
        return list(range(len(pairs)))
    return [
        index
        for index, pair in enumerate(pairs)
        if not all((pair_folder(out, index, pair) / name).is_file() for name in names)
    ]


def summary_line(totals: PairTotals, pairs: int, processes: int, seconds: float) -> str:
    """The closing line of a ``--pairs`` run: what became of each pair, and pairs per second.

    Args:
        totals: the counts and the matching time.
        pairs: pairs in the list; those neither written, failed nor left untried were skipped as complete.
        processes: how many processes matched them.
        seconds: the whole run's wall time, loading the model and starting the processes included.

    Example:
        >>> summary_line(PairTotals(written=8, seconds=4.0), pairs=10, processes=2, seconds=9.5)
        'done: 10 pairs: 8 written, 2 skipped (already complete), 0 failed; 2.00 pairs/s on 2 processes (4.0 s matching, 9.5 s with start-up)'
    """
    rate = totals.written / totals.seconds if totals.seconds > 0 else 0.0
    skipped = pairs - totals.written - totals.failed - totals.not_tried
    counts = f"{totals.written} written, {skipped} skipped (already complete), {totals.failed} failed"
    if totals.not_tried:
        counts += f", {totals.not_tried} not tried (disk full)"
    return (
        f"done: {pairs} pair{'s' if pairs != 1 else ''}: {counts}; {rate:.2f} pairs/s on {processes} "
        f"process{'es' if processes != 1 else ''} "
        f"({totals.seconds:.1f} s matching, {seconds:.1f} s with start-up)"
    )
