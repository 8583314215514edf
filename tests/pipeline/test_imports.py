"""No import cycle through the pipeline, eval or commands modules, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import deftx

ROOT = Path(deftx.__file__).parent
CHECKED = ("deftx.pipeline", "deftx.eval", "deftx.commands")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The deftx modules a module imports anywhere in its body (``from x import y``: x.y when it is a module)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {module for module in found if module in known}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in ROOT.rglob("*.py")}
    known = set(paths)
    return {name: imported(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
            for name, path in paths.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycle_through_pipeline_eval_or_commands():
    graph = import_graph()
    cycles = [cycle for name in sorted(graph) if name.startswith(CHECKED)
              if (cycle := cycle_through(graph, name))]
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_eval_and_train_do_not_import_the_pipeline():
    graph = import_graph()
    offenders = {name: sorted(m for m in targets if m.startswith("deftx.pipeline"))
                 for name, targets in graph.items() if name.startswith(("deftx.eval", "deftx.train"))}
    assert not {name: found for name, found in offenders.items() if found}
