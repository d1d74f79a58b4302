"""Evaluating a calibrated confidence and the homographies it gives (behind ``python -m diffmatch.evaluate_confidence``).

Flow convention: flow on the target grid, ``target(x) ≈ source(x + flow(x))``, in pixels, channel
0 = x. Homographies map target pixels to source pixels.

On the synthetic benchmark (the bundled held-out photos, ``bundled_photos("val")``; optionally with
ImageNet-C), for a checkpoint calibrated by ``python -m diffmatch.calibrate``:

* **calibration**: reliability diagram and ECE of ``P(EPE < τ)`` for every fitted τ, all valid
  pixels pooled; AUSE (EPE, per image, averaged) with ``1 − confidence`` and with the variance as
  the ranking;
* **homography accuracy** (HPatches practice, mean corner error and the share of pairs under 1, 3,
  5 px) of MAGSAC++ (``cv2.USAC_MAGSAC``, 3 px) on ``--num`` matches: the most confident
  (``top-k``), the most confident per grid cell (``spread``), drawn by confidence (``sampled``),
  drawn uniformly (``random``), and SIFT + ratio
  test + the same estimator (``sift``, OpenCV). The true homography is fitted to the exact
  benchmark flow.

Writes ``summary.json`` and ``reliability.png`` to ``--out`` and prints Markdown tables.

Example:
    python -m diffmatch.evaluate_confidence --checkpoint CKPT_CAL --limit 10 --out outputs/confidence-clean
    python -m diffmatch.evaluate_confidence --checkpoint CKPT_CAL --limit 2 --corruptions all --out outputs/confidence-c
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmatch.confidence.metrics import (
    corner_error,
    homography_accuracy,
    homography_from_flow,
    reliability,
)

__all__ = ["HOMOGRAPHY_METHODS", "format_tables", "plot_reliability", "run_evaluation", "sift_homography"]



HOMOGRAPHY_METHODS = ("top-k", "spread", "sampled", "random", "sift")


def sift_homography(source: np.ndarray, target: np.ndarray, threshold: float = 3.0, ratio: float = 0.8) -> np.ndarray | None:
    """SIFT + Lowe's ratio test + MAGSAC++ (OpenCV): the target → source homography, or ``None``.

    Args:
        source, target: ``(H, W, 3)`` uint8 RGB images.
        threshold: MAGSAC++ threshold in px.
        ratio: Lowe's ratio.
    """
    import cv2

    sift = cv2.SIFT_create()
    kp_t, desc_t = sift.detectAndCompute(cv2.cvtColor(target, cv2.COLOR_RGB2GRAY), None)
    kp_s, desc_s = sift.detectAndCompute(cv2.cvtColor(source, cv2.COLOR_RGB2GRAY), None)
    if desc_t is None or desc_s is None or len(kp_t) < 4 or len(kp_s) < 2:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_t, desc_s, k=2)
    good = [m for m, *rest in pairs if rest and m.distance < ratio * rest[0].distance]
    if len(good) < 4:
        return None
    tgt = np.float32([kp_t[m.queryIdx].pt for m in good])
    src = np.float32([kp_s[m.trainIdx].pt for m in good])
    matrix, _ = cv2.findHomography(tgt, src, cv2.USAC_MAGSAC, threshold, maxIters=10000, confidence=0.999)
    return None if matrix is None else matrix / matrix[2, 2]


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _homographies(result: Any, item: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, float]:
    from diffmatch.geometry import estimation as matches

    truth, rms = homography_from_flow(item["flow"].permute(1, 2, 0).numpy(), item["mask"].numpy())
    if rms > 0.05:
        raise ValueError(f"{item['name']}: the true flow is not a homography (RMS {rms:.3f} px)")
    size = tuple(item["target"].shape[-2:])
    source_size = tuple(item["source"].shape[-2:])
    uniform = dataclasses.replace(result, confidence=torch.ones_like(result.confidence))
    runs = {"top-k": (result, "top_k"), "spread": (result, "spread"), "sampled": (result, "sample"),
            "random": (uniform, "sample")}
    out = {}
    for name, (res, mode) in runs.items():
        gen = torch.Generator().manual_seed(seed)
        try:
            estimate = matches.estimate_homography(
                res, args.num, mode=mode, threshold=args.threshold, source_size=source_size, generator=gen
            ).matrix
        except ValueError:
            estimate = None
        out[name] = corner_error(estimate, truth, size)
    out["sift"] = corner_error(sift_homography(_uint8(item["source"]), _uint8(item["target"]), args.threshold), truth, size)
    return out


def _dataset(args: argparse.Namespace) -> str:
    return getattr(args, "dataset", "synthetic")


def run_evaluation(args: argparse.Namespace, matcher: Any, subsets: Sequence[Any]) -> dict[str, Any]:
    from diffmatch.confidence.cues import match_with_cues
    from diffmatch.metrics import ause, end_point_error

    calibrator = matcher.calibrator
    probs: dict[str, dict[float, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    errors: dict[str, list[np.ndarray]] = defaultdict(list)
    ause_rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    corners: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    count = 0
    for subset in subsets:
        for index in range(len(subset.dataset)):
            item = subset.dataset[index]
            groups = ("all", subset.tags.get("level", "all"))
            seed = args.seed * 100003 + count
            src, tgt = item["source"][None].to(matcher.device), item["target"][None].to(matcher.device)
            two_pass = matcher.two_pass is not None and not getattr(args, "one_pass", False)
            if two_pass or matcher.layer_search is not None:
                # The passes are chosen per pixel by the confidence at one τ, so each τ is its own
                # match (same draws): its result's confidence is that τ's.
                by_tau = {
                    tau: matcher.match(
                        src, tgt, num_samples=args.samples, num_steps=args.steps, confidence_tau=tau,
                        generator=torch.Generator(device=matcher.device).manual_seed(seed), two_pass=two_pass,
                    )
                    for tau in calibrator.taus
                }
                result = by_tau[calibrator.default_tau]
                predicted = {tau: by_tau[tau].confidence for tau in calibrator.taus}
            else:
                reverse = calibrator.needs_reverse
                result, cues = match_with_cues(
                    matcher.model, src, tgt, args.samples, args.steps, reverse=reverse,
                    generator=torch.Generator(device=matcher.device).manual_seed(seed),
                    refiner=matcher.refiner,  # as the calibration was fitted (DiffMatcher's default)
                    reverse_samples=calibrator.reverse_samples, local=calibrator.cues,
                )
                result.confidence = calibrator.predict(cues)
                predicted = {tau: calibrator.predict(cues, tau) for tau in calibrator.taus}
            mask = item["mask"].bool().numpy().ravel()
            epe = end_point_error(result.flow.cpu(), item["flow"][None])[0].numpy().ravel()[mask]
            variance = result.uncertainty[0, 0].cpu().numpy().ravel()[mask]
            confidence = result.confidence[0, 0].cpu().numpy().ravel()[mask]
            # Homographies only where the truth is one (the synthetic benchmark; scenes have parallax).
            homographies = _homographies(result, item, args, count) if _dataset(args) == "synthetic" else {}
            for group in dict.fromkeys(groups):
                errors[group].append(epe.astype(np.float32))
                for tau in calibrator.taus:
                    probs[group][tau].append(predicted[tau][0, 0].cpu().numpy().ravel()[mask])
                ause_rows[group].append((ause(epe, 1.0 - confidence), ause(epe, variance)))
                for name, value in homographies.items():
                    corners[group][name].append(value)
            count += 1
            print(f"  {count} {item['name']} {item.get('corruption', 'clean')}", file=sys.stderr)
    results: dict[str, Any] = {}
    for group in errors:
        epe = np.concatenate(errors[group])
        calibration = {}
        for tau in calibrator.taus:
            diagram = reliability(np.concatenate(probs[group][tau]), epe < tau, args.bins)
            calibration[f"{tau:g}"] = {
                "ece": diagram.ece,
                "accuracy": float((epe < tau).mean()),
                "mean_confidence": float(np.concatenate(probs[group][tau]).mean()),
                "bins": {k: np.nan_to_num(v, nan=-1).tolist() for k, v in dataclasses.asdict(diagram).items()},
            }
        rows = np.array(ause_rows[group])
        results[group] = {
            "pairs": len(ause_rows[group]),
            "pixels": int(epe.size),
            "calibration": calibration,
            "ause_epe_confidence": float(rows[:, 0].mean()),
            "ause_epe_variance": float(rows[:, 1].mean()),
            "homography": {name: homography_accuracy(values) for name, values in corners[group].items()},
            "corner_errors": {name: values for name, values in corners[group].items()},
        }
    return results


def format_tables(results: dict[str, Any], taus: Sequence[float]) -> str:
    """Two Markdown tables: calibration (ECE per τ, AUSE) and homography accuracy (where there is a
    homography truth), one row per group."""
    lines = [
        "| group | pairs | " + " | ".join(f"ECE τ={t:g} (acc / conf)" for t in taus) + " | AUSE confidence | AUSE variance |",
        "|---|---:|" + "---:|" * (len(taus) + 2),
    ]
    for group, r in results.items():
        cells = [
            f"{c['ece']:.3f} ({c['accuracy']:.2f} / {c['mean_confidence']:.2f})"
            for c in (r["calibration"][f"{t:g}"] for t in taus)
        ]
        lines.append(f"| {group} | {r['pairs']} | " + " | ".join(cells) + f" | {r['ause_epe_confidence']:.3f} | {r['ause_epe_variance']:.3f} |")
    if not any(r["homography"] for r in results.values()):
        return "\n".join(lines)  # no homography truth (3D scenes)
    lines += ["", "| group | matches | mean corner error (px) | median | < 1 px | < 3 px | < 5 px |", "|---|---|---:|---:|---:|---:|---:|"]
    for group, r in results.items():
        for name in HOMOGRAPHY_METHODS:
            h = r["homography"][name]
            lines.append(
                f"| {group} | {name} | {h['mean']:.2f} | {h['median']:.2f} | {h['acc@1']:.2f} | {h['acc@3']:.2f} | {h['acc@5']:.2f} |"
            )
    return "\n".join(lines)


def plot_reliability(path: Path, results: dict[str, Any], taus: Sequence[float], title: str) -> None:
    """One reliability diagram per τ (observed frequency against mean confidence per bin), one line per group."""
    from diffmatch.viz import plt, save_figure

    fig, axes = plt.subplots(1, len(taus), figsize=(4 * len(taus), 4), squeeze=False)
    for ax, tau in zip(axes[0], taus):
        ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
        for group, r in results.items():
            bins = r["calibration"][f"{tau:g}"]["bins"]
            conf, freq, count = (np.array(bins[k], float) for k in ("confidence", "frequency", "count"))
            used = count > 0
            ece = r["calibration"][f"{tau:g}"]["ece"]
            ax.plot(conf[used], freq[used], marker="o", label=f"{group} (ECE {ece:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel=f"share with EPE < {tau:g} px", title=f"τ = {tau:g} px")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(path, fig)
