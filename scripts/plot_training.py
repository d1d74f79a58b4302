"""Plot a run's training curve from Lightning's CSV log.

    python scripts/plot_training.py outputs/demo/lightning_logs/version_0/metrics.csv checkpoints/diffmatch_demo_curve.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffmatch.viz import save_figure  # noqa: E402


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from a Lightning ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    series = read_metrics(args.metrics)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps, losses = zip(*series["train/loss"])
    left.plot(steps, losses, lw=0.6, alpha=0.5, label="train/loss")
    window = 10
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
    left.plot(steps, smooth, lw=1.5, label=f"mean of last {window}")
    left.set(xlabel="step", ylabel="masked MSE (normalised flow)", yscale="log", title="training loss")
    left.legend()
    for key in ("val/aepe", "val/aepe_init"):
        if key in series:
            right.plot(*zip(*series[key]), marker="o", label=key)
    right.set(xlabel="step", ylabel="AEPE [px]", title="validation (synthetic benchmark, medium)")
    right.legend()
    fig.tight_layout()
    save_figure(args.out, fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
