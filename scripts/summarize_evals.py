"""Print a Markdown table from the ``summary.json`` of several ``python -m diffmatch.evaluate`` runs.

    python scripts/summarize_evals.py full=outputs/ablations/eval/full/clean \\
        no-local-cost=outputs/ablations/eval/no_local_cost/clean

One row per run and method: AEPE (px) over all pairs and per difficulty level, PCK-5 (%, pooled over
pixels) and AUSE-EPE (methods with an uncertainty only), plus the number of pairs. This is how the
ablation tables in the README were made (``scripts/ablations.sh`` prints them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LEVELS = ("all", "easy", "medium", "hard")


def _cell(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def table(runs: list[tuple[str, Path]]) -> str:
    """The Markdown table of ``(label, folder)`` runs, in the given order.

    The method column is left out when every run scored a single method.
    """
    summaries = [(label, json.loads((folder / "summary.json").read_text())) for label, folder in runs]
    by_method = any(len(summary["results"]) > 1 for _, summary in summaries)
    head = "| run | method |" if by_method else "| run |"
    lines = [
        head + " AEPE all | easy | medium | hard | PCK-5 % | AUSE-EPE | pairs |",
        "|---|" + ("---|" if by_method else "") + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, summary in summaries:
        for method, groups in summary["results"].items():
            aepe = [_cell(groups.get(level, {}).get("aepe")) for level in LEVELS]
            overall = groups["all"]
            name = f"| {label} | {method} |" if by_method else f"| {label} |"
            lines.append(
                f"{name} {' | '.join(aepe)} | {_cell(overall.get('pck5'), 100, 1)} "
                f"| {_cell(overall.get('ause_epe'), digits=3)} | {overall['num_pairs']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="label=folder holding an evaluation's summary.json")
    args = parser.parse_args()
    runs = []
    for spec in args.runs:
        label, sep, folder = spec.partition("=")
        if not sep or not (Path(folder) / "summary.json").is_file():
            parser.error(f"{spec!r}: expected label=folder with a summary.json in it")
        runs.append((label, Path(folder)))
    print(table(runs))


if __name__ == "__main__":
    main()
