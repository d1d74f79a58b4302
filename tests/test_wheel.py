"""The wheel carries the assets, and the README's main command runs from it, installed outside the checkout.

The wheel is built from a copy of what it is made of (``pyproject.toml``, ``README.md``,
``diffmatch/``) in ``tmp_path``: setuptools writes ``build/`` and ``*.egg-info`` beside its source,
and a test writes only under ``tmp_path``. It is installed with ``--no-deps`` into a fresh virtual
environment that sees this interpreter's packages (torch and the rest, no network), and run from a
folder outside the checkout, so nothing can come from the checkout but through the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS_BUDGET = 36 * 2**20  # bytes of package data the wheel may carry: two checkpoints of <= 20 MB, photos


def _env(tmp_path: Path) -> dict[str, str]:
    """No checkout on the path, one thread, every cache under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               XDG_CACHE_HOME=str(tmp_path / "cache"), MPLCONFIGDIR=str(tmp_path / "mpl"),
               DIFFMATCH_HOME=str(tmp_path / "diffmatch_home"), TORCH_HOME=str(tmp_path / "torch_home"))
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(command)}: status {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _can_build_wheels() -> bool:
    """This interpreter's setuptools builds a wheel without downloading anything (pyproject's >= 64, and
    ``bdist_wheel``: built in from 70.1, else the ``wheel`` package)."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())
    return version >= (70, 1) or (version >= (64,) and importlib.util.find_spec("wheel") is not None)


def _build_wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "diffmatch", source / "diffmatch", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    # Without build isolation (no download) when this interpreter's setuptools can build wheels;
    # otherwise pip fetches the build requirements from its index.
    isolation = ["--no-build-isolation"] if _can_build_wheels() else []
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation, "-w", str(dist)],
         tmp_path, env, timeout=600)  # fmt: skip
    (wheel,) = dist.glob("diffmatch-*.whl")
    return wheel


def _venv(tmp_path: Path, env: dict[str, str]) -> Path:
    """A fresh virtual environment that sees this interpreter's packages; returns its ``bin`` folder."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, env, timeout=300)
    if sys.prefix != sys.base_prefix:  # run from a virtual environment: its packages are not the system's
        purelib = _run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       tmp_path, env, timeout=60).stdout.strip()  # fmt: skip
        outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (Path(purelib) / "outer_environment.pth").write_text("\n".join(sorted(outer)) + "\n")
    return venv / "bin"


def test_wheel_ships_the_assets_and_runs_the_readme_command_outside_the_checkout(tmp_path):
    env = _env(tmp_path)
    wheel = _build_wheel(tmp_path, env)

    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        entry_points = archive.read(next(n for n in sizes if n.endswith(".dist-info/entry_points.txt"))).decode()
    assets = {name: size for name, size in sizes.items() if name.startswith("diffmatch/assets/") and not name.endswith(".py")}
    assert sizes.get("diffmatch/assets/diffmatch_xfeat.pt", 0) > 10_000_000, sorted(assets)
    assert sizes.get("diffmatch/assets/diffmatch_xfeat_stage2.pt", 0) > 10_000_000, sorted(assets)
    assert len([n for n in assets if n.startswith("diffmatch/assets/photos/train/")]) == 12
    assert len([n for n in assets if n.startswith("diffmatch/assets/photos/val/")]) == 5
    assert {"diffmatch/assets/samples/motorcycle_left.png", "diffmatch/assets/samples/motorcycle_right.png"} <= set(assets)
    assert sum(assets.values()) < ASSETS_BUDGET, f"{sum(assets.values()) / 2**20:.1f} MiB of package data"
    assert "diffmatch = diffmatch.cli.main:main" in entry_points

    bin_dir = _venv(tmp_path, env)
    _run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
         tmp_path, env, timeout=600)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"  # outside the checkout
    elsewhere.mkdir()
    probe = ("import json, diffmatch; from diffmatch.assets import bundled_checkpoint, fetched_photos, sample_pair; "
             "print(json.dumps([diffmatch.__file__, str(bundled_checkpoint()), str(fetched_photos()), *map(str, sample_pair())]))")  # fmt: skip
    package, checkpoint, fetched, source, target = json.loads(
        _run([str(bin_dir / "python"), "-c", probe], elsewhere, env, timeout=300).stdout.strip().splitlines()[-1]
    )
    venv = bin_dir.parent.resolve()
    for path in (package, checkpoint, source, target):
        assert Path(path).resolve().is_relative_to(venv), f"{path} is not the wheel's (venv {venv})"
    assert Path(fetched) == tmp_path / "diffmatch_home" / "photos" / "extra"  # not a checkout: the user's folder

    # The README's main command, on the packaged sample pair.
    out = elsewhere / "demo"
    proc = _run([str(bin_dir / "diffmatch"), "match", "--source", source, "--target", target, "--out", "demo"],
                elsewhere, env, timeout=600)  # fmt: skip
    assert "wrote" in proc.stdout + proc.stderr
    flow, uncertainty, confidence = (np.load(out / f"{name}.npy") for name in ("flow", "uncertainty", "confidence"))
    height, width = 345, 512  # the sample pair's target
    assert flow.shape == (height, width, 2) and uncertainty.shape == confidence.shape == (height, width)
    assert np.isfinite(flow).all() and (uncertainty >= 0).all() and ((confidence >= 0) & (confidence <= 1)).all()
