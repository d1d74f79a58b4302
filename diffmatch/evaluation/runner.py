"""The evaluation loop: every pair of every subset through every method, one pair at a time.

A pair scores its dense flow where it has a ground-truth flow (``flow``, ``mask``), and its relative
pose where it has a ground-truth pose (``K_source``, ``K_target``, ``R``, ``t``: the scene benchmark,
MegaDepth-1500, ScanNet-1500): the pose is estimated from the method's matches by
:func:`diffmatch.geometry.estimation.estimate_relative_pose` with :class:`PoseOptions`, and a pose that cannot be
estimated counts as an infinite error (as in LoFTR's protocol), not as a failed pair.

A pair that fails (unreadable file, a method error, a wrong-shaped or non-finite flow) is recorded
with its error message and the loop moves on; nothing else is discarded.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from diffmatch.evaluation.baselines import Method
from diffmatch.evaluation.datasets import EvalSubset
from diffmatch.geometry.estimation import estimate_relative_pose
from diffmatch.metrics import PairMetrics, pair_metrics, pose_error, valid_errors
from diffmatch.result import MatchResult

__all__ = ["POSE_KEYS", "PairRecord", "PoseOptions", "evaluate_pair", "pair_pose_error", "run_evaluation"]

POSE_KEYS: tuple[str, ...] = ("K_source", "K_target", "R", "t")


@dataclass(frozen=True)
class PoseOptions:
    """How a relative pose is estimated from a method's matches (:func:`estimate_relative_pose`).

    Attributes:
        num_matches: matches given to the estimator (a dense method's drawn by confidence, a sparse
            method's own, most confident first).
        method: ``"ransac"`` or ``"magsac"``.
        threshold: inlier threshold in pixels.
        seed: seed of the draw of dense matches (the same for every pair and method).
        trials: estimates from independent draws, the one best supported by matches spread over the
            image kept (:func:`estimate_relative_pose`'s ``trials``). One RANSAC run on dense matches
            of a scene with a dominant plane lands 70–90° off at random (on the scenes benchmark's
            ``wide`` level, AUC@10 moved by 3 points between seeds of the same flows); five runs
            made it steadier.
        repeats: estimate each pair's pose this many times, the ``r``-th with seed ``seed + r``, and
            score every estimate (the AUC of a level pools them: the expected AUC of one run). A
            few near-degenerate pairs decide a level's AUC by where RANSAC lands: on the scenes
            benchmark's 30 ``wide`` pairs one method's AUC@10 spans 81–89 over five seeds of the
            same flows, more than the differences between the settings it is used to compare.
    """

    num_matches: int = 5000
    method: str = "ransac"
    threshold: float = 0.5
    seed: int = 0
    trials: int = 5
    repeats: int = 5

    def __post_init__(self) -> None:
        if self.num_matches < 5 or self.threshold <= 0 or self.trials < 1 or self.repeats < 1:
            raise ValueError(
                "PoseOptions needs num_matches >= 5, threshold > 0, trials >= 1 and repeats >= 1, got "
                f"{self.num_matches}, {self.threshold}, {self.trials} and {self.repeats}"
            )


@dataclass
class PairRecord:
    """The outcome of one method on one pair.

    Attributes:
        method: method name.
        name: pair name (the dataset item's ``name``).
        tags: groups the pair belongs to, e.g. ``{"level": "easy", "corruption": "fog"}``.
        metrics: its metrics, or ``None`` if it failed.
        error: one-line error message of a failure.
    """

    method: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: PairMetrics | None = None
    error: str | None = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pair_pose_error(result: MatchResult, item: dict, options: PoseOptions, repeat: int = 0) -> tuple[float, float]:
    """Rotation and translation errors (degrees) of the pose estimated from ``result``'s matches.

    Args:
        result: the method's result on the pair (batch of one).
        item: the pair with ``K_source``, ``K_target``, ``R``, ``t`` (target camera → source camera).
        options: the estimator's settings.
        repeat: which of :attr:`PoseOptions.repeats` (its draws are seeded with ``options.seed + repeat``).

    Returns:
        ``(rotation_error, translation_error)``; ``(inf, inf)`` when no pose could be estimated.
    """
    generator = torch.Generator().manual_seed(options.seed + repeat)
    try:
        pose = estimate_relative_pose(
            result,
            item["K_source"],
            item["K_target"],
            num=options.num_matches,
            method=options.method,
            threshold=options.threshold,
            source_size=tuple(item["source"].shape[-2:]),
            generator=generator,
            trials=options.trials,
        )
    except ValueError:
        return math.inf, math.inf
    return pose_error(pose.rotation, pose.translation, np.asarray(item["R"]), np.asarray(item["t"]))


def evaluate_pair(
    method: Method, item: dict, device: torch.device, pose: PoseOptions | None = None
) -> PairMetrics:
    """Run ``method`` on one dataset item and score it.

    Args:
        method: the matcher.
        item: ``source`` ``(3, Hs, Ws)``, ``target`` ``(3, Ht, Wt)`` in ``[0, 1]``; optionally ``flow``
            ``(2, Ht, Wt)`` ground truth in pixels (``target(x) ≈ source(x + flow(x))``) with ``mask``
            ``(Ht, Wt)`` bool, and optionally a ground-truth pose (:data:`POSE_KEYS`).
        device: where the images are put.
        pose: how poses are estimated (``None``: :class:`PoseOptions` defaults).

    Returns:
        The pair's metrics (no valid pixels without a ground-truth flow; pose errors only with a
        ground-truth pose); the uncertainty is used only when the method drew several samples.

    Raises:
        ValueError: the method's flow has the wrong shape or non-finite values on valid pixels.
    """
    source = item["source"].unsqueeze(0).to(device)
    target = item["target"].unsqueeze(0).to(device)
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        result = method(source, target)
    _synchronize(device)
    seconds = time.perf_counter() - start
    expected = (1, 2, *target.shape[-2:])
    if tuple(result.flow.shape) != expected:
        raise ValueError(f"flow has shape {tuple(result.flow.shape)}, expected {expected}")
    errors, ranking = np.zeros(0), None
    if "flow" in item:
        gt = item["flow"].unsqueeze(0).float()
        uncertainty = result.uncertainty.cpu() if result.samples.shape[1] > 1 else None
        errors, ranking = valid_errors(result.flow.cpu(), gt, item["mask"].bool(), uncertainty)
        if not torch.isfinite(torch.from_numpy(errors)).all():
            raise ValueError("flow is not finite on valid pixels")
        if ranking is not None and not torch.isfinite(torch.from_numpy(ranking)).all():
            raise ValueError("uncertainty is not finite on valid pixels")
    metrics = pair_metrics(errors, ranking, seconds=seconds)
    if all(key in item for key in POSE_KEYS):
        options = pose if pose is not None else PoseOptions()
        errors = [pair_pose_error(result, item, options, repeat) for repeat in range(options.repeats)]
        metrics.rotation_error, metrics.translation_error = errors[0]
        metrics.pose_repeats = tuple(max(e) for e in errors)
    return metrics


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text}"


def run_evaluation(
    methods: Sequence[Method],
    subsets: Sequence[EvalSubset],
    device: torch.device,
    warn: Callable[[str], None] | None = None,
    progress: bool | None = None,
    pose: PoseOptions | None = None,
) -> list[PairRecord]:
    """Evaluate every method on every pair; each pair is loaded (and corrupted) once for all methods.

    Args:
        methods: the matchers.
        subsets: the pairs and their tags.
        device: where images are put.
        pose: how relative poses are estimated on pairs with a ground-truth pose.
        warn: called with a one-line message for every failure (default: print to stderr).
        progress: show a progress bar on stderr (``None``: only on a terminal).

    Returns:
        One record per (pair, method), failures included.
    """
    warn = warn if warn is not None else (lambda message: print(message, file=sys.stderr))
    records: list[PairRecord] = []
    total = sum(len(subset.dataset) for subset in subsets)
    with tqdm(
        total=total, disable=(None if progress is None else not progress), unit="pair", file=sys.stderr
    ) as bar:
        for subset in subsets:
            for index in range(len(subset.dataset)):
                bar.update(1)
                try:
                    item = subset.dataset[index]
                except Exception as err:  # a bad file must not stop the run
                    name = "/".join([*subset.tags.values(), f"#{index}"])
                    message = f"could not load pair {name}: {_one_line(err)}"
                    warn(f"warning: {message}")
                    records.extend(
                        PairRecord(m.name, name, dict(subset.tags), error=message) for m in methods
                    )
                    continue
                tags = dict(subset.tags)
                if "corruption" in item:
                    tags["corruption"] = str(item["corruption"])
                name = str(item.get("name", index))
                for method in methods:
                    try:
                        metrics = evaluate_pair(method, item, device, pose)
                    except Exception as err:  # one failed pair must not discard the others
                        message = _one_line(err)
                        warn(f"warning: {method.name} failed on {name} {tags}: {message}")
                        records.append(PairRecord(method.name, name, tags, error=message))
                        continue
                    records.append(PairRecord(method.name, name, tags, metrics))
    return records
