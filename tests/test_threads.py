"""Thread counts that do not oversubscribe (#29 item 13): PyTorch, OpenCV and the refinement's pool share one budget."""

from __future__ import annotations

import concurrent.futures

import cv2
import pytest
import torch

from diffmatch import threads
from diffmatch.refinement import VariationalRefiner


@pytest.mark.parametrize("budget", [1, 2, 3, 4])
def test_refinement_keeps_within_torchs_thread_count(photo, monkeypatch, budget):
    pools, opencv = [], []
    real_pool, real_refine = concurrent.futures.ThreadPoolExecutor, VariationalRefiner._refine_one

    def recording_pool(*args, **kwargs):
        pools.append(kwargs.get("max_workers", args[0] if args else None))
        return real_pool(*args, **kwargs)

    def recording_refine(self, *args):
        opencv.append(cv2.getNumThreads())
        return real_refine(self, *args)

    import diffmatch.refinement.variational as refinement

    monkeypatch.setattr(refinement, "ThreadPoolExecutor", recording_pool)
    monkeypatch.setattr(VariationalRefiner, "_refine_one", recording_refine)
    torch.set_num_threads(budget)
    before = cv2.getNumThreads()
    image = torch.from_numpy(photo[:48, :48]).permute(2, 0, 1)[None].float() / 255
    VariationalRefiner(rounds=1)(image, image, torch.zeros(1, 3, 2, 48, 48))  # 3 hypotheses
    workers = min(3, budget)
    assert pools == [workers]
    assert set(opencv) == {budget // workers}
    assert workers * (budget // workers) <= budget  # never more threads than the budget
    assert cv2.getNumThreads() == before  # OpenCV's process-wide setting is restored


def test_budget_is_the_idle_cpus_or_exactly_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(threads, "busy_cpus", lambda interval=0.1: 0.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.thread_budget() == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.thread_budget() == 3
    monkeypatch.setattr(threads, "busy_cpus", lambda interval=0.1: 6.4)  # other jobs keep 6 CPUs busy
    # An explicit count is kept under load: the last bits of a match depend on it (a reproducible run).
    assert threads.thread_budget() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert threads.thread_budget() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.thread_budget() == 2 and threads.thread_budget(measure_load=False) == 8
    monkeypatch.setattr(threads, "busy_cpus", lambda interval=0.1: 11.0)
    assert threads.thread_budget() == 1


def test_busy_cpus_is_a_share_of_the_machine():
    busy = threads.busy_cpus(0.05)
    assert 0.0 <= busy <= (threads.os.cpu_count() or 1) + 1e-6


def test_infer_runs_torch_within_the_budget(tmp_path, checkpoint, photo, monkeypatch):
    from diffmatch.cli.infer import main as infer_main

    path = tmp_path / "a.png"
    cv2.imwrite(str(path), photo[:64, :64])
    monkeypatch.setattr(threads, "thread_budget", lambda measure_load=True: 1)
    torch.set_num_threads(2)
    assert infer_main(["--source", str(path), "--target", str(path), "--out", str(tmp_path / "o"), "--checkpoint",
                       str(checkpoint), "--no-viz", "--samples", "2"]) == 0
    assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
