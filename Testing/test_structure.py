"""The package's shape: layers that import one way, no cycles, small modules and inference functions.

Layers, lowest first; a module may import its own layer and those below it only. Top-level modules
(``choices``, ``resources``) are the foundation every layer may use.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import segmatecore

ROOT = Path(segmatecore.__file__).parent
LAYERS = ("data", "models", "hub", "runtime", "inference", "export", "evaluation", "train", "bench", "cli")
FOUNDATION = ("choices", "resources")
MAX_MODULE_LINES = 400
MAX_INFERENCE_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["segmatecore", *parts])] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The segmatecore modules ``name`` imports anywhere in its body (function-local ones too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([base] if base else [])])
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = submodules if len(submodules) == len(node.names) else [base, *submodules]
        else:
            continue
        found |= {t for t in targets if t in known and t != name and t != "segmatecore"}
    return found


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) < 2 or parts[1] in FOUNDATION:
        return -1
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_every_module_belongs_to_a_layer():
    stray = [n for n in modules() if n != "segmatecore" and n.split(".")[1] not in (*LAYERS, *FOUNDATION)]
    assert not stray, stray


def test_no_module_imports_a_higher_layer(graph):
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a))
    assert not upward, upward


def test_imports_have_no_cycles(graph):
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [node, target]) if target in stack
                              else f"{node} -> {target}")
            elif target not in state:
                visit(target, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, cycles


def test_no_module_is_over_the_size_limit():
    long = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in modules().items()}
    assert not {n: c for n, c in long.items() if c > MAX_MODULE_LINES}


def test_inference_functions_are_short():
    long = []
    for path in (ROOT / "inference").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_INFERENCE_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} {lines}")
    assert not long, long


def test_the_checker_follows_real_imports(graph):
    """The walk follows imports: the predictor's own imports include the runtime and the data layer."""
    assert {"segmatecore.runtime.network", "segmatecore.data.io"} <= graph["segmatecore.inference.predictor"]


def test_the_tests_mirror_the_layers():
    """Testing/<layer>/ holds the tests of segmatecore/<layer>/; the Slicer module's tests are in
    Testing/slicer_module/ and only whole-repository checks sit at the top."""
    testing = Path(__file__).resolve().parent
    folders = {p.parent.name for p in testing.glob("*/test_*.py")}
    assert folders == {*LAYERS, "slicer_module"}, folders
    assert {p.name for p in testing.glob("test_*.py")} == {"test_readme.py", "test_no_absolute_paths.py",
                                                         "test_structure.py"}


def test_test_modules_neither_import_each_other_nor_edit_the_path():
    """Shared code lives in conftest.py and Testing/support; pytest.ini puts it on the path."""
    testing = Path(__file__).resolve().parent
    test_modules = {p.stem for p in testing.rglob("test_*.py")}
    offences = []
    for path in testing.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                    node.value.attr == "path" and getattr(node.value.value, "id", "") == "sys" and \
                    node.attr in ("insert", "append", "extend"):
                offences.append(f"{path.name}: sys.path.{node.attr}")
                continue
            else:
                continue
            offences += [f"{path.name}: imports {n}" for n in names if n.split(".")[-1] in test_modules]
    assert not offences, offences
    assert "test_structure" in test_modules  # the check sees the test modules
