"""The evaluation loop: every pair of every subset through every method, one pair at a time.

A pair that fails (unreadable file, a method error, a wrong-shaped or non-finite flow) is recorded
with its error message and the loop moves on; nothing else is discarded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from diffmatch.baselines import Method
from diffmatch.evaluation.datasets import EvalSubset
from diffmatch.metrics import PairMetrics, pair_metrics, valid_errors

__all__ = ["PairRecord", "evaluate_pair", "run_evaluation"]


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


def evaluate_pair(method: Method, item: dict, device: torch.device) -> PairMetrics:
    """Run ``method`` on one dataset item and score it.

    Args:
        method: the matcher.
        item: ``source`` ``(3, Hs, Ws)``, ``target`` ``(3, Ht, Wt)`` in ``[0, 1]``, ``flow`` ``(2, Ht, Wt)``
            ground truth in pixels (``target(x) ≈ source(x + flow(x))``), ``mask`` ``(Ht, Wt)`` bool.
        device: where the images are put.

    Returns:
        The pair's metrics; the uncertainty is used only when the method drew several samples.

    Raises:
        ValueError: the method's flow has the wrong shape or non-finite values on valid pixels.
    """
    source = item["source"].unsqueeze(0).to(device)
    target = item["target"].unsqueeze(0).to(device)
    gt = item["flow"].unsqueeze(0).float()
    mask = item["mask"].bool()
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        result = method(source, target)
    _synchronize(device)
    seconds = time.perf_counter() - start
    if tuple(result.flow.shape) != tuple(gt.shape):
        raise ValueError(f"flow has shape {tuple(result.flow.shape)}, expected {tuple(gt.shape)}")
    uncertainty = result.uncertainty.cpu() if result.samples.shape[1] > 1 else None
    errors, ranking = valid_errors(result.flow.cpu(), gt, mask, uncertainty)
    if not torch.isfinite(torch.from_numpy(errors)).all():
        raise ValueError("flow is not finite on valid pixels")
    if ranking is not None and not torch.isfinite(torch.from_numpy(ranking)).all():
        raise ValueError("uncertainty is not finite on valid pixels")
    return pair_metrics(errors, ranking, seconds=seconds)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text}"


def run_evaluation(
    methods: Sequence[Method],
    subsets: Sequence[EvalSubset],
    device: torch.device,
    warn: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> list[PairRecord]:
    """Evaluate every method on every pair; each pair is loaded (and corrupted) once for all methods.

    Args:
        methods: the matchers.
        subsets: the pairs and their tags.
        device: where images are put.
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
                        metrics = evaluate_pair(method, item, device)
                    except Exception as err:  # one failed pair must not discard the others
                        message = _one_line(err)
                        warn(f"warning: {method.name} failed on {name} {tags}: {message}")
                        records.append(PairRecord(method.name, name, tags, error=message))
                        continue
                    records.append(PairRecord(method.name, name, tags, metrics))
    return records
