"""The package's layers (docs/architecture.md): every import of a scgrpo_verl module points down, and no two
modules import each other, directly or around a loop (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scgrpo_verl"

#: first component under scgrpo_verl -> layer (0 math, 1 options, 2 teacher, 3 methods, 4 verl glue, 5 tools)
LAYERS = {
    "algos": 0, "batch_keys": 0, "errors": 0, "rewards": 0, "configs": 0, "cpu_flag": 0,
    "settings": 1,
    "teacher": 2,
    "methods": 3,
    "step": 4, "losses": 4, "estimator": 4, "config": 4, "trainer": 4, "worker": 4, "plugin": 4, "engine_path": 4,
    "compose": 4, "startup_checks": 4, "cpu_backend": 4,
    "evaluation": 4,  # shared by the tools and cpu-run (verl's log parser)
    "cli": 5, "dry_run": 5, "eval": 5, "report": 5, "ttsd": 5, "explain": 5, "learning_report": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The scgrpo_verl modules ``path`` imports (``from scgrpo_verl import step`` counts as ``scgrpo_verl.step``;
    relative imports are resolved against the module's package)."""
    found = set()
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.module else base
            found.add(module)
            if not node.module:
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scgrpo_verl":
            if node.module == "scgrpo_verl":
                found.update(f"scgrpo_verl.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "scgrpo_verl")
    return found


def _layer(module: str):
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    assert sorted(m for m in _graph() if m != "scgrpo_verl" and _layer(m) is None) == []


def test_imports_point_down_the_layers():
    upward = sorted((module, target) for module, targets in _graph().items() for target in targets
                    if module != "scgrpo_verl" and _layer(target) is not None and _layer(module) is not None
                    and _layer(target) > _layer(module))
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), each sorted. A package's ``__init__`` importing
    its own submodules is not a cycle of interest, so edges from a package to its submodules are left out."""
    edges = {m: {t for t in ts if t in graph and not t.startswith(m + ".")} for m, ts in graph.items()}
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(out)


def test_no_import_cycles():
    # a submodule importing its package's __init__ (which re-exports it) is how a package is read: leave those out
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in _graph().items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
