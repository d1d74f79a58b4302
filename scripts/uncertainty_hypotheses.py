"""How does the multi-hypothesis uncertainty behave as the number of hypotheses grows?

    python scripts/uncertainty_hypotheses.py --out outputs/uncertainty                 # bundled model
    python scripts/uncertainty_hypotheses.py --checkpoint PATH --corruptions all --limit 2 --out outputs/uncertainty-c

Each pair of the held-out synthetic benchmark is matched once with ``--max-samples`` hypotheses
(DDIM from independent noise, one seeded generator for the run). For every ``N`` from 1 to that
maximum, the flow is the mean of the first ``N`` hypotheses and the uncertainty their per-pixel
variance (the trace of the covariance, px²), as ``DiffMatcher.match`` returns them. The script prints,
per ``N``:

* AEPE of the mean flow, and PCK-5;
* AUSE-EPE of the variance: the area between its sparsification curve and the oracle's (the errors
  ranked by themselves), averaged over pairs as in DenseMatching; lower is better, 0 is the oracle;
* the same AUSE for a random ranking, the reference a useless uncertainty gets.

It writes ``hypotheses.json`` and ``error_vs_variance.png`` (target, warped source, error map and
variance map at the largest ``N``, on ``--figure-pairs`` pairs of different photos spread over the
levels) into ``--out``. It refuses to overwrite files that git tracks (``docs/results/uncertainty``
holds the retired demo model's results, which the README shows) unless ``--overwrite-tracked``.
Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, pixels, channel 0 = x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffmatch.evaluation.datasets import build_subsets, parse_corruptions  # noqa: E402
from diffmatch.io import atomic_open  # noqa: E402
from diffmatch.matcher import DiffMatcher  # noqa: E402
from diffmatch.metrics import ause, end_point_error, valid_errors  # noqa: E402
from diffmatch.result import samples_statistics  # noqa: E402
from diffmatch.viz import blend_warp, save_figure  # noqa: E402


def _image(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def error_vs_variance_figure(panels: list[dict]) -> plt.Figure:
    """One row per pair: target, source warped by the estimate, EPE map and variance map."""
    fig, axes = plt.subplots(len(panels), 4, figsize=(14, 3.5 * len(panels)), squeeze=False)
    for row, panel in zip(axes, panels):
        error, variance = panel["error"], panel["variance"]
        row[0].imshow(panel["target"])
        row[0].set_title(f"target ({panel['name']})")
        row[1].imshow(blend_warp(panel["source"], panel["target"], panel["flow"]))
        row[1].set_title("source warped onto target")
        top = float(np.percentile(error, 99)) or 1.0
        im = row[2].imshow(np.where(panel["mask"], error, np.nan), cmap="magma", vmin=0, vmax=top)
        fig.colorbar(im, ax=row[2], fraction=0.046, pad=0.04, label="EPE [px]")
        row[2].set_title(f"error (AEPE {panel['aepe']:.1f} px)")
        im = row[3].imshow(np.sqrt(variance), cmap="magma", vmin=0, vmax=float(np.percentile(np.sqrt(variance), 99)) or 1.0)
        fig.colorbar(im, ax=row[3], fraction=0.046, pad=0.04, label="std [px]")
        row[3].set_title(f"uncertainty, {panel['samples']} hypotheses")
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


def _tracked(paths: list[Path]) -> list[Path]:
    """Those of ``paths`` that git tracks (none when git or a checkout is not there)."""
    found = []
    for path in paths:
        if not path.parent.is_dir():
            continue
        try:
            proc = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent,
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return []
        if proc.returncode == 0:
            found.append(path)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="DiffMatch checkpoint (default: the bundled one)")
    parser.add_argument("--max-samples", type=int, default=8, help="hypotheses drawn per pair")
    parser.add_argument("--limit", type=int, default=30, help="pairs per difficulty level")
    parser.add_argument("--corruptions", default="none", help="'none', 'all' or a comma list of ImageNet-C types")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--figure-pairs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True, help="output folder (e.g. outputs/uncertainty)")
    parser.add_argument(
        "--overwrite-tracked", action="store_true",
        help="allow replacing result files that git tracks (docs/results/uncertainty is the retired demo's)",
    )
    args = parser.parse_args()
    if args.max_samples < 2:
        parser.error("--max-samples must be >= 2 (a variance needs two hypotheses)")
    out = Path(args.out)
    tracked = _tracked([out / "hypotheses.json", out / "error_vs_variance.png"])
    if tracked and not args.overwrite_tracked:
        parser.exit(2, f"error: --out {out}: would overwrite {', '.join(map(str, tracked))}, tracked by git "
                       "(results shown in the README); choose another folder, e.g. outputs/uncertainty, "
                       "or pass --overwrite-tracked\n")

    matcher = DiffMatcher.from_checkpoint(args.checkpoint, device=args.device)
    corruptions = parse_corruptions(args.corruptions)
    subsets = build_subsets("synthetic", corruptions=corruptions, severity=args.severity, limit=args.limit, seed=args.seed)
    generator = torch.Generator(device=matcher.device).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    counts = range(1, args.max_samples + 1)
    rows: dict[int, dict[str, list[float]]] = {n: {"aepe": [], "pck5": [], "ause": [], "ause_random": []} for n in counts}
    panels: list[dict] = []
    per_level = -(-args.figure_pairs // len(subsets))  # panels per level, each of a different photo
    start, index = time.perf_counter(), 0
    for subset in subsets:
        for item in subset.dataset:
            gt, mask = item["flow"][None].float(), item["mask"]
            with torch.inference_mode():
                samples = matcher.match(
                    item["source"], item["target"], num_samples=args.max_samples, generator=generator
                ).samples.cpu().float()
            for n in counts:
                flow, variance = samples_statistics(samples[:, :n])
                errors, ranking = valid_errors(flow, gt, mask, variance if n > 1 else None)
                if errors.size == 0:
                    continue
                rows[n]["aepe"].append(float(errors.mean()))
                rows[n]["pck5"].append(float((errors <= 5).mean()))
                if ranking is not None:
                    rows[n]["ause"].append(ause(errors, ranking))
                    rows[n]["ause_random"].append(ause(errors, rng.random(errors.size)))
            level, _, photo = item["name"].partition("/")
            taken = [p["name"] for p in panels]
            if (
                len(panels) < args.figure_pairs
                and sum(name.startswith(level + "/") for name in taken) < per_level
                and not any(photo.split("_", 1)[-1] in name for name in taken)
            ):
                flow, variance = samples_statistics(samples)
                panels.append(
                    {
                        "name": item["name"] + (f", {item['corruption']}" if "corruption" in item else ""),
                        "source": _image(item["source"]),
                        "target": _image(item["target"]),
                        "flow": flow[0].permute(1, 2, 0).numpy(),
                        "error": end_point_error(flow, gt)[0].numpy(),
                        "variance": variance[0, 0].numpy(),
                        "mask": mask.numpy(),
                        "aepe": float(end_point_error(flow, gt)[0][mask].mean()),
                        "samples": args.max_samples,
                    }
                )
            index += 1
    seconds = time.perf_counter() - start

    summary = {
        "checkpoint": args.checkpoint or "diffmatch/assets/diffmatch_xfeat_stage2.pt (bundled)",
        "corruptions": list(corruptions),
        "pairs": index,
        "seconds": seconds,
        "rows": {n: {key: float(np.mean(v)) if v else None for key, v in row.items()} for n, row in rows.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "hypotheses.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    save_figure(out / "error_vs_variance.png", error_vs_variance_figure(panels))
    label = ", ".join(corruptions) if corruptions else "clean"
    print(f"{index} pairs of the synthetic benchmark ({label}), {args.max_samples} hypotheses each, {seconds:.0f} s")
    print(f"{'N':>2s} {'AEPE':>7s} {'PCK-5':>6s} {'AUSE-EPE':>9s} {'random':>7s}")
    for n, row in summary["rows"].items():
        fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9s}"  # noqa: E731
        print(f"{n:2d} {row['aepe']:7.2f} {100 * row['pck5']:6.2f} {fmt(row['ause'])} {fmt(row['ause_random'])[2:]}")
    print(f"wrote {out / 'hypotheses.json'}, {out / 'error_vs_variance.png'}")


if __name__ == "__main__":
    main()
