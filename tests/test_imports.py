"""The package graph is a DAG, and loading a model does not load the extraction stack."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "datamodules", "models")
HEAVY = ("segment_anything", "segment_anything_hq", "sam2", "timm", "open_clip", "fast_slic", "faiss")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            modules[_module_name(path)] = path
    for script in ("train.py", "eval.py"):
        modules[script[:-3]] = REPO / script
    return modules


def _import_edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere, at module level or inside a function (a lazy
    import only hides a cycle from the interpreter, not from the design)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            # `from pkg import module` depends on that module; `from pkg import name` on pkg
            targets = submodules + ([base] if len(submodules) < len(node.names) else [])
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a module's own ancestor packages are imported before it anyway: not a dependency edge
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
    return edges


def _cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == {("a", "b", "c")}


def test_the_project_import_graph_has_no_cycle():
    """Every import counts, at module level or inside a function: a layer never reaches back up
    (entry points -> tasks -> stages -> library modules)."""
    modules = _project_modules()
    graph = {name: _import_edges(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 60 and graph["bench.extract"] >= {"bench.tasks", "bench.preflight"}  # the parser sees imports
    assert not _cycles(graph), f"import cycles: {sorted(_cycles(graph))}"


def test_loading_a_model_does_not_import_the_extraction_stack():
    code = ("import sys, models.segmenter, models.decoders, models.multiview\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
