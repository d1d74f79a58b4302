from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads(monkeypatch):
    # Tests share two cores with whatever else runs; one intra-op thread keeps timings sane. The command
    # lines take their budget from OMP_NUM_THREADS too (diffmatch.threads), so a CLI run inside a test
    # uses the same single thread as the API it is compared with: PyTorch's sums differ in the last bits
    # between thread counts, and the variational refinement can grow such differences to a pixel.
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    environment = dict(os.environ)
    yield
    # Lightning's in-process runs (infer --devices' one-process path) set MASTER_ADDR, MASTER_PORT,
    # NODE_RANK and LOCAL_RANK; a later test's DDP subprocess inheriting them waited for ranks that
    # never started. Each test gets the environment it started with back.
    os.environ.clear()
    os.environ.update(environment)


@pytest.fixture
def photo() -> np.ndarray:
    """A real photo (scikit-image's bundled astronaut), 128x128 RGB uint8."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random model saved through the public export path (hypotheses differ)."""
    from helpers import tiny_config

    from diffmatch.models.diffmatch import DiffMatch
    from diffmatch.models.weights import save_weights

    torch.manual_seed(0)
    model = DiffMatch(tiny_config())
    torch.nn.init.normal_(model.denoiser.unet.conv_out.weight, std=0.05)
    return save_weights(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# ------------------------------------------------------------------------------ the tree stays clean
# Every test writes under its tmp_path. A run that leaves a new file in the checkout (ignored ones
# included: outputs/, lightning_logs/, stray checkpoints) fails, naming the files.
_ROOT = Path(__file__).resolve().parents[1]
_CACHES = ("__pycache__/", ".pytest_cache/", ".ruff_cache/", ".mypy_cache/")
_TREE_KEY = pytest.StashKey[set]()
_LITTER_KEY = pytest.StashKey[list]()


def _untracked_paths() -> set[str] | None:
    """New (untracked or ignored) files in the checkout, caches aside; ``None`` outside a git checkout."""
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
            cwd=_ROOT, capture_output=True, text=True, timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    paths = {line[3:] for line in proc.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(f"/{c}" in f"/{p}" for c in _CACHES) and not p.endswith(".pyc")}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_TREE_KEY] = _untracked_paths()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_TREE_KEY, None)
    after = _untracked_paths() if before is not None else None
    if before is None or after is None:
        return
    added = sorted(after - before)
    session.config.stash[_LITTER_KEY] = added
    if added and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    added = config.stash.get(_LITTER_KEY, [])
    if added:
        shown = ", ".join(added[:10]) + (f" and {len(added) - 10} more" if len(added) > 10 else "")
        terminalreporter.write_line(
            f"FAILED: the test run wrote {len(added)} file(s) into the checkout (tests must write under "
            f"tmp_path): {shown}",
            red=True,
        )
