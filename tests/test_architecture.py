"""The package's shape (issue #28, docs/architecture.md): few top-level modules, layers that only
import downwards, no import cycles, no module reaching into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffmatch"

# Lowest first. A module may import modules of its own layer or lower ones, never higher ones. A name
# stands for the module and everything under it (``models`` is every module of diffmatch/models/).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "threads"),
    ("io", "assets"),
    ("inputs", "geometry", "geometry.flow", "geometry.relative_pose", "viz"),
    ("result", "metrics"),
    ("geometry.estimation", "features", "data"),
    ("models",),
    ("refinement", "two_pass"),
    ("confidence",),
    ("matcher",),
    ("evaluation", "training"),
    ("cli",),
    ("__init__", "evaluate", "evaluate_confidence", "calibrate", "export", "convert_official"),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)
        modules[name or "__init__"] = path
    return modules


MODULES = _modules()


def _resolve(dotted: str) -> str | None:
    """The module of ``diffmatch.<dotted>`` (a name inside a module resolves to the module)."""
    name = dotted
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or ("__init__" if dotted == "" else None)


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, imported name)`` for every import of diffmatch code in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "diffmatch":
            base = node.module.removeprefix("diffmatch").lstrip(".")
            for alias in node.names:
                target = f"{base}.{alias.name}".lstrip(".")
                found.append((_resolve(target if target in MODULES else base), alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "diffmatch":
                    found.append((_resolve(alias.name.removeprefix("diffmatch").lstrip(".")), ""))
    return found


def _layer(module: str) -> int:
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[1]):
                best = (index, len(name))
    assert best is not None, f"diffmatch.{module} is in no layer of tests/test_architecture.py"
    return best[0]


def test_at_most_15_top_level_modules():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 15, top


def test_layers_only_import_downwards():
    upward = [
        f"diffmatch.{module} (layer {_layer(module)}) imports diffmatch.{target} (layer {_layer(target)})"
        for module, path in MODULES.items()
        for target, _ in _imports(path)
        if target is not None and target != module and _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_private_names_cross_modules():
    private = [
        f"diffmatch.{module} imports {name} from diffmatch.{target}"
        for module, path in MODULES.items()
        for target, name in _imports(path)
        if target != module and (name.startswith("_") and not name.startswith("__") or any(p.startswith("_") and p != "__init__" for p in (target or "").split(".")))
    ]
    assert not private, "\n".join(private)


def test_no_import_cycles():
    graph = {m: {t for t, _ in _imports(p) if t and t != m and t != "__init__"} for m, p in MODULES.items()}
    # A package's __init__ is imported before any of its modules: an edge from each module to its package.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            raise AssertionError("import cycle: " + " -> ".join(f"diffmatch.{m}" for m in cycle))


def test_the_checker_sees_a_violation():
    assert _layer("models.diffmatch") > _layer("features.base") > _layer("io")
    assert ("models.cost_volume", "global_correlation") in _imports(MODULES["models.diffmatch"])
