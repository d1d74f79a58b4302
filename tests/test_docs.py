"""The README and the scripts' documented commands say what is true (#29 item 14)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = (ROOT / "docs" / "results.md").read_text()  # the README's measured numbers, moved out


def _git_tracks(path: Path) -> bool:
    proc = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT, capture_output=True, timeout=60)
    return proc.returncode == 0


def test_cpu_small_is_not_promised_in_minutes():
    lines = README.splitlines()
    command = lines.index("diffmatch train fit --config configs/cpu_small.yaml")
    comment = " ".join(x for x in lines[command - 2 : command] if x.startswith("#"))  # what the command gives
    assert "in minutes" not in comment and " h " in comment, comment
    config = (ROOT / "configs" / "cpu_small.yaml").read_text().split("\n\n")[0]
    assert "in minutes" not in config, config


def _documented_outs() -> list[str]:
    script = (ROOT / "scripts" / "uncertainty_hypotheses.py").read_text()
    commands = [x for x in (README + RESULTS + script).splitlines() if "uncertainty_hypotheses.py " in x and "--out" in x]
    assert commands
    outs = []
    for command in commands:
        words = shlex.split(command.split("#")[0])
        outs.append(words[words.index("--out") + 1])
    return outs


def test_documented_uncertainty_commands_do_not_overwrite_tracked_results():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for out in _documented_outs():
        for name in ("hypotheses.json", "error_vs_variance.png"):
            assert not _git_tracks(ROOT / out / name), f"--out {out} would overwrite a tracked {name}"


def test_uncertainty_script_refuses_tracked_results_in_one_line():
    if not _git_tracks(ROOT / "docs" / "results" / "uncertainty" / "hypotheses.json"):
        pytest.skip("the retired demo's results are not tracked here")
    target = ROOT / "docs" / "results" / "uncertainty" / "hypotheses.json"
    before = target.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "uncertainty_hypotheses.py"), "--out",
                           "docs/results/uncertainty"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"would overwrite .*hypotheses\.json.*tracked by git", lines[0]), lines
    assert target.read_bytes() == before


def test_every_test_named_in_bad_inputs_exists():
    """docs/bad-inputs.md pins each behaviour to a test: each one it names is there."""
    import ast

    text = (ROOT / "docs" / "bad-inputs.md").read_text()
    named, current = [], None
    for file, name in re.findall(r"`((?:\w+/)?test_\w+\.py)?::(\w+)`", text):
        current = file or current
        named.append((current, name))
    assert len(named) > 60
    for file, name in named:
        tree = ast.parse((ROOT / "tests" / file).read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in functions, f"docs/bad-inputs.md names tests/{file}::{name}, which does not exist"


def test_architecture_names_files_and_definitions_that_exist():
    """docs/architecture.md's table: every module path exists, every entry point is defined in the package."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`(diffmatch/[\w/]*\.py|diffmatch/[\w/]+/)`", text))
    assert len(paths) > 20
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, missing
    source = "\n".join(p.read_text() for p in (ROOT / "diffmatch").rglob("*.py"))
    rows = [line.split("|")[3] for line in text.splitlines() if line.startswith("| ") and line.count("|") >= 4]
    names = {n.split(".")[-1] for row in rows[1:] for n in re.findall(r"`([A-Za-z_][\w.]*)`", row)}
    undefined = sorted(n for n in names if not re.search(rf"^\s*(def|class) {n}\b", source, re.M))
    assert not undefined, undefined
