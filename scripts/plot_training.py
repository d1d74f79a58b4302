"""Plot a run's training curve from Lightning's CSV log(s).

    python scripts/plot_training.py outputs/demo/lightning_logs/version_0/metrics.csv checkpoints/diffmatch_xfeat_curve.png

A resumed run logs to a new ``version_N`` folder: pass every part in order, the curves are joined by
step (a later file wins where steps repeat). ``--merged PATH`` also writes the joined CSV.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffmatch.io import atomic_open  # noqa: E402
from diffmatch.viz import save_figure  # noqa: E402


def read_rows(paths: list[Path]) -> list[dict[str, str]]:
    """The rows of Lightning ``metrics.csv`` files of one run, in order; rows of a later file replace
    earlier rows from its first step on (a resume restarts logging at the checkpoint's step)."""
    rows: list[dict[str, str]] = []
    for path in paths:
        with open(path, newline="") as handle:
            part = list(csv.DictReader(handle))
        if part:
            first = int(part[0]["step"])
            rows = [row for row in rows if int(row["step"]) < first] + part
    return rows


def read_metrics(rows: list[dict[str, str]]) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from Lightning CSV rows."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("epoch", "step") and value not in ("", None):
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", type=Path, nargs="+", help="metrics.csv of the run (every resumed part, in order)")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--merged", type=Path, help="also write the joined CSV here")
    args = parser.parse_args()
    rows = read_rows(args.metrics)
    if args.merged:
        with atomic_open(args.merged, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    series = read_metrics(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps, losses = zip(*series["train/loss"])
    left.plot(steps, losses, lw=0.6, alpha=0.5, label="train/loss")
    window = 10
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
    left.plot(steps, smooth, lw=1.5, label=f"mean of last {window}")
    left.set(xlabel="step", ylabel="masked loss, MSE or EPE (normalised flow)", yscale="log", title="training loss")
    left.legend()
    for key in ("val/aepe", "val/aepe_init", "val/aepe_stage1"):
        if key in series:
            right.plot(*zip(*series[key]), marker="o", label=key)
    right.set(xlabel="step", ylabel="AEPE [px]", title="validation (synthetic benchmark, medium)")
    right.legend()
    fig.tight_layout()
    save_figure(args.out, fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
