"""Reports of an evaluation: grouped summary, per-pair CSV, table and plots (all written atomically)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffmatch.evaluation.runner import PairRecord
from diffmatch.io import atomic_write_bytes
from diffmatch.metrics import PCK_THRESHOLDS, POSE_AUC_THRESHOLDS, summarize
from diffmatch.viz import plt, save_figure

__all__ = [
    "TAG_ORDER",
    "group_names",
    "scene_averaged_aepe",
    "summarize_records",
    "write_summary",
    "write_per_pair_csv",
    "format_table",
    "plot_sparsification",
    "plot_corruptions",
    "write_outputs",
]

# Tags that define groups, in the order groups are listed after "all".
TAG_ORDER: tuple[str, ...] = ("level", "rate", "pair", "corruption")


def group_names(records: Sequence[PairRecord]) -> list[str]:
    """``"all"`` then every tag value in :data:`TAG_ORDER` order, each in order of appearance."""
    names = ["all"]
    for tag in TAG_ORDER:
        for record in records:
            value = record.tags.get(tag)
            if value is not None and value not in names:
                names.append(value)
    return names


def scene_averaged_aepe(records: Sequence[PairRecord]) -> float | None:
    """ETH3D AEPE as the official DiffMatch evaluation reports it: per rate, the mean over scenes of
    each scene's mean AEPE (per image); over several rates, the mean of the rates' values.

    The scene is the first part of a pair's name (``<scene>/rate_<r>/<n>``); pairs without a
    ``rate`` tag form one rate. Failed pairs and pairs without valid pixels are left out.
    """
    by_rate: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if r.metrics is None or r.metrics.num_pixels == 0:
            continue
        scenes = by_rate.setdefault(r.tags.get("rate", ""), {})
        scenes.setdefault(r.name.split("/", 1)[0], []).append(r.metrics.aepe)
    if not by_rate:
        return None
    per_rate = [float(np.mean([np.mean(v) for v in scenes.values()])) for scenes in by_rate.values()]
    return float(np.mean(per_rate))


def summarize_records(
    records: Sequence[PairRecord], protocol: str | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics per method and group (see :func:`diffmatch.metrics.summarize`), plus ``num_failed``.

    With ``protocol="paper"`` and ETH3D pairs (a ``rate`` tag), ``aepe`` is
    :func:`scene_averaged_aepe` (the paper's Table 2) and ``aepe_per_image`` keeps the mean over images.

    Returns:
        ``{method: {group: metrics}}``; a group is ``"all"`` or a tag value (level, rate, corruption).
    """
    groups = group_names(records)
    methods = list(dict.fromkeys(r.method for r in records))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        mine = [r for r in records if r.method == method]
        out[method] = {}
        for group in groups:
            members = [r for r in mine if group == "all" or group in r.tags.values()]
            if not members:
                continue
            metrics = summarize([r.metrics for r in members if r.metrics is not None])
            metrics["num_failed"] = sum(r.metrics is None for r in members)
            if protocol == "paper" and any("rate" in r.tags for r in members):
                metrics["aepe_per_image"] = metrics["aepe"]
                metrics["aepe"] = scene_averaged_aepe(members)
            out[method][group] = metrics
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_summary(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Atomically write ``summary`` as JSON (non-finite numbers become ``null``)."""
    text = json.dumps(_json_safe(summary), indent=2, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def write_per_pair_csv(path: str | os.PathLike, records: Sequence[PairRecord]) -> None:
    """Atomically write one CSV row per (method, pair), failures included (``error`` filled in).

    Columns: ``method``, ``name``, the tags used (``level``, ``rate``, ``pair``, ``corruption``),
    ``num_pixels``, ``aepe``, ``pck1``, ``pck3``, ``pck5`` (per image), ``ause_epe``, ``ause_pck``
    (PCK-1), ``ause_pck5`` (empty without uncertainty), on pose benchmarks ``rotation_error``,
    ``translation_error`` and ``pose_error`` (degrees; ``inf`` when no pose was found; of the first
    estimate) and, when poses were estimated repeatedly, ``pose_errors`` (every repeat's, ``;``-joined),
    ``seconds``, ``error``.
    """
    tags = [t for t in TAG_ORDER if any(t in r.tags for r in records)]
    columns = ["method", "name", *tags, "num_pixels", "aepe", *(f"pck{t}" for t in PCK_THRESHOLDS)]
    columns += ["ause_epe", "ause_pck", "ause_pck5"]
    with_pose = any(r.metrics is not None and r.metrics.pose_error is not None for r in records)
    if with_pose:
        columns += ["rotation_error", "translation_error", "pose_error"]
    repeated = any(r.metrics is not None and len(r.metrics.pose_repeats) > 1 for r in records)
    if repeated:
        columns += ["pose_errors"]
    columns += ["seconds", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row: dict[str, Any] = {"method": record.method, "name": record.name, "error": record.error or ""}
        row.update({t: record.tags.get(t, "") for t in tags})
        metrics = record.metrics
        if metrics is not None:
            row.update(
                num_pixels=metrics.num_pixels, aepe=_fmt(metrics.aepe), seconds=_fmt(metrics.seconds, 5)
            )
            row.update({f"pck{t}": _fmt(metrics.pck(t)) for t in PCK_THRESHOLDS})
            areas = metrics.sparsification.ause if metrics.sparsification is not None else {}
            row.update(
                ause_epe=_fmt(areas.get("epe")),
                ause_pck=_fmt(areas.get("pck1")),
                ause_pck5=_fmt(areas.get("pck5")),
            )
            if with_pose and metrics.pose_error is not None:
                row.update(
                    rotation_error=_fmt(metrics.rotation_error),
                    translation_error=_fmt(metrics.translation_error),
                    pose_error=_fmt(metrics.pose_error),
                )
            if repeated:
                row["pose_errors"] = ";".join(_fmt(e) for e in metrics.pose_repeats)
        writer.writerow(row)
    atomic_write_bytes(path, buffer.getvalue().encode())


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A fixed-width text table: one row per method and group (pose AUC columns on pose benchmarks)."""
    with_pose = any(m.get("num_poses") for groups in results.values() for m in groups.values())
    header = ["method", "group", "pairs", "failed", "AEPE", "PCK-1", "PCK-3", "PCK-5", "AUSE-EPE", "AUSE-PCK1"]
    header += [f"AUC@{t}" for t in POSE_AUC_THRESHOLDS] if with_pose else []
    header += ["s/pair"]
    rows = [header]
    for method, groups in results.items():
        for group, m in groups.items():
            pcks = [_fmt(None if m[f"pck{t}"] is None else 100 * m[f"pck{t}"], 2) for t in PCK_THRESHOLDS]
            aucs = [m.get(f"pose_auc{t}") for t in POSE_AUC_THRESHOLDS] if with_pose else []
            rows.append(
                [method, group, str(m["num_pairs"]), str(m["num_failed"]), _fmt(m["aepe"], 3), *pcks]
                + [_fmt(m["ause_epe"]), _fmt(m["ause_pck"])]
                + [_fmt(None if a is None else 100 * a, 1) for a in aucs]
                + [_fmt(m["seconds_per_pair"], 4)]
            )
    rows = [[cell or "-" for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return (
        "\n".join(lines)
        + "\n(PCK in %, per dataset: all valid pixels pooled; AEPE in px: mean of per-image means"
        + ("; pose AUC in %, of the pose error max(rotation, translation direction) in degrees)" if with_pose else ")")
    )


def plot_sparsification(
    path: str | os.PathLike, results: dict[str, dict[str, dict[str, Any]]], group: str = "all"
) -> None:
    """Sparsification curves against the oracle (normalised EPE and PCK-1) of every method.

    Methods without an uncertainty show their oracle only (how much removing their worst pixels
    would help). Writes a PNG atomically.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (method, groups) in enumerate(results.items()):
        curves = groups.get(group, {}).get("sparsification")
        if not curves:
            continue
        color = colors[index % len(colors)]
        x = np.asarray(curves["fractions"])
        for ax, metric in zip(axes, ("epe", "pck1")):
            ax.plot(x, curves[f"oracle_{metric}"], "--", color=color, label=f"{method} oracle")
            if metric in curves:
                ax.plot(x, curves[metric], "-", color=color, label=f"{method} uncertainty")
    for ax, label in zip(axes, ("EPE", "PCK-1")):
        ax.set_xlabel("fraction of pixels removed")
        ax.set_ylabel(f"{label} (normalised by the oracle's maximum)")
        ax.set_title(f"{label} sparsification ({group})")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(path, fig)


def plot_corruptions(
    path: str | os.PathLike, results: dict[str, dict[str, dict[str, Any]]], corruptions: Sequence[str]
) -> None:
    """AEPE and PCK-1 per corruption type, one bar per method. Writes a PNG atomically."""
    fig, axes = plt.subplots(
        2, 1, figsize=(min(16.0, max(6.0, 0.3 * len(corruptions) * max(1, len(results)) + 3)), 7), sharex=True
    )
    x = np.arange(len(corruptions))
    width = 0.8 / max(1, len(results))
    for index, (method, groups) in enumerate(results.items()):
        offset = (index - (len(results) - 1) / 2) * width
        for ax, key, scale in zip(axes, ("aepe", "pck1"), (1.0, 100.0)):
            values = [groups.get(c, {}).get(key) for c in corruptions]
            heights = [np.nan if v is None else v * scale for v in values]
            ax.bar(x + offset, heights, width, label=method)
    axes[0].set_ylabel("AEPE (px)")
    axes[1].set_ylabel("PCK-1 (%)")
    axes[1].set_xticks(x, [c.replace("_", "\n") for c in corruptions], fontsize="small")
    axes[0].set_title("error per corruption type")
    axes[0].legend(fontsize="small")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(path, fig)


def write_outputs(
    out_dir: str | os.PathLike, summary: dict[str, Any], records: Sequence[PairRecord]
) -> list[Path]:
    """Write ``summary.json``, ``per_pair.csv``, ``sparsification.png`` and (with corruptions) ``corruptions.png``.

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    written = [out_dir / "summary.json", out_dir / "per_pair.csv", out_dir / "sparsification.png"]
    write_summary(written[0], summary)
    write_per_pair_csv(written[1], records)
    plot_sparsification(written[2], summary["results"])
    if summary.get("corruptions"):
        written.append(out_dir / "corruptions.png")
        plot_corruptions(written[-1], summary["results"], summary["corruptions"])
    return written
