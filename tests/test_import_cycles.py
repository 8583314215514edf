"""No import cycle anywhere in ``deftx/``.

The graph is read from the source with :mod:`ast`, not by importing: an edge for every
``import`` / ``from … import`` of a ``deftx`` module, at module level and inside functions
and classes alike (a function-level import is a cycle deferred, not a cycle removed).
Imports under ``if TYPE_CHECKING:`` are left out: they are never executed and name types
only. ``from package import name`` is an edge to the submodule ``package.name`` when there
is one, else to the package itself (its ``__init__``). Importing a module of another package
runs that package's ``__init__`` first, so that is an edge too (``deftx.ops.topk`` importing
``deftx.distributed.topk`` also imports ``deftx.distributed``); a module's own packages are
already importing and add none.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deftx"

def module_name(path: Path, root: Path) -> str:
    """``deftx/sft/diff.py`` -> ``deftx.sft.diff``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def executed_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement loads (``from a import b``: both ``a.b`` and ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        anchor = module.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        source = ".".join([*anchor, node.module] if node.module else anchor)
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" for alias in node.names] + [source]


def import_graph(ignored: Collection[tuple[str, str]] = (), root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the package ``root`` importing it runs (module-level and function-level
    imports), leaving out the ``(importer, imported)`` edges in ``ignored``."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in executed_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in files:
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files]
                plain = len(submodules) < len(node.names)
                targets.update(submodules + ([node.module] if plain else []))
                continue
            targets.update(name for name in imported_names(node, module, is_package) if name in files)
        targets = {target for target in targets if (module, target) not in ignored}
        graph[module] = {package for target in targets for package in with_packages(target, module)} - {module}
    return graph


def with_packages(target: str, importer: str) -> list[str]:
    """``target`` and the packages importing it runs first: its parents outside ``importer``'s own packages.

    ``deftx.ops.topk`` importing ``deftx.distributed.topk`` runs ``deftx/distributed/__init__.py``
    first; ``deftx.sft.apply`` importing ``deftx.sft.diff`` finds ``deftx.sft`` already importing.
    """
    parts = target.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) not in own]


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, …, a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        path = [root]
        state[root] = 1
        pending = [iter(sorted(graph[root]))]
        while pending:
            target = next(pending[-1], None)
            if target is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(target) == 1:
                return [*path[path.index(target):], target]
            elif not state.get(target):
                state[target] = 1
                path.append(target)
                pending.append(iter(sorted(graph.get(target, ()))))
    return None


def test_no_import_cycle_in_deftx() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_graph_sees_function_level_and_package_imports_but_not_type_checking(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg.b import g\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\nimport pkg.sub.c\n",
        "sub/__init__.py": "from pkg.sub import c\n",
        "sub/c.py": "from pkg import a\n",
    }
    for name, text in sources.items():
        (root / name).write_text(text)
    graph = import_graph(root=root)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert graph["pkg.sub"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.a"]
    assert find_cycle(import_graph({("pkg.sub.c", "pkg.a")}, root)) is None
