"""ftlab's layers, as docs/ARCHITECTURE.md's "Layers" table states them, hold in the code: every
module is in one layer, no import goes to a later layer, and no import cycle exists. Imports inside
functions count (they hide a dependency, they do not remove it); `if TYPE_CHECKING:` blocks do not
(they never run)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "ftlab"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> list[str]:
    """Every module name an import statement under `tree` names, TYPE_CHECKING blocks left out."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            found.extend(f"{base}.{a.name}" for a in node.names)
            found.append(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {owner(n) for n in _imports(ast.parse(path.read_text()), package) if n.startswith("ftlab")}
        # Importing ftlab.x.y runs ftlab/x/__init__.py first: a package's own imports count too
        # (its ancestors are already being imported when one of its modules runs).
        targets |= {p for t in set(targets) if t for p in _parents(t) if p in modules and not _within(name, p)}
        graph[name] = {t for t in targets if t and t != name and t != "ftlab"}
    return graph


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_cycle_finder_finds_function_level_cycles_and_ignores_type_checking():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ftlab.b import X\n"
                     "def f():\n    from ftlab.c import Y\n")
    assert "ftlab.b.X" not in _imports(tree, "ftlab") and "ftlab.c.Y" in _imports(tree, "ftlab")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert _parents("ftlab.eval.scoring.metrics") == ["ftlab.eval", "ftlab.eval.scoring"]
    assert _within("ftlab.eval.scoring.metrics", "ftlab.eval") and not _within("ftlab.evaluation", "ftlab.eval")


def test_no_import_cycle():
    assert not [sorted(c) for c in cycles(import_graph())]


def layers() -> list[tuple[str, list[str]]]:
    """(layer name, module paths) rows of the doc's Layers table, in order."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if re.match(r"\| \d ", line)]
    return [(name.strip(), re.findall(r"`(ftlab/[^`]*)`", cell)) for name, cell in rows]


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    """The row of the most specific entry naming `module` (its own path before its package's)."""
    path = module.replace(".", "/")
    hits = [(len(p), rank) for rank, (_, paths) in enumerate(table) for p in paths
            if p.endswith("/") and (path + "/").startswith(p) or p in (f"{path}.py", f"{path}/__init__.py")]
    return max(hits)[1] if hits else None


def test_every_module_is_in_one_layer_of_the_doc():
    table = layers()
    assert [name for name, _ in table] == ["1 base", "2 kinds", "3 foundation", "4 stages", "5 compositions", "6 commands"]
    listed = [p for _, paths in table for p in paths]
    assert len(listed) == len(set(listed))
    missing = sorted(m for m in import_graph() if layer_of(m, table) is None)
    assert not missing, f"modules in no layer of docs/ARCHITECTURE.md: {missing}"
    packages = {p.parent.relative_to(REPO).as_posix() + "/" for p in ROOT.glob("*/__init__.py")}
    assert packages <= set(listed), "every package is a row entry of its own"


def test_no_import_goes_to_a_later_layer():
    table = layers()
    upward = sorted(f"{m} ({table[layer_of(m, table)][0]}) imports {t} ({table[layer_of(t, table)][0]})"
                    for m, targets in import_graph().items() for t in targets
                    if layer_of(t, table) > layer_of(m, table))
    assert not upward, upward


def test_the_layer_check_catches_an_upward_import():
    table = [("1 low", ["ftlab/errors.py"]), ("2 high", ["ftlab/study/"])]
    assert layer_of("ftlab.study.run", table) == 1 and layer_of("ftlab.errors", table) == 0
    assert layer_of("ftlab.config", table) is None
    assert layer_of("ftlab.study.run", [("1", ["ftlab/study/"]), ("2", ["ftlab/study/run.py"])]) == 1


def test_no_private_name_is_imported_from_another_module():
    """A name with a leading underscore is its module's own business; one that another module needs
    is part of the interface and is named so."""
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ftlab"):
                found += [f"{name} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


# Libraries cheap enough to import at module top (stdlib aside): under 0.1 s each on the 2-core box.
LIGHT_LIBRARIES = frozenset({"yaml", "psutil", "tqdm", "safetensors"})


def _light(name: str) -> bool:
    import sys

    root = name.split(".")[0]
    return root in sys.stdlib_module_names or root in LIGHT_LIBRARIES and name != "safetensors.torch"


def _top_and_function_imports(tree: ast.AST, package: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(imports run when the module is imported, [(line, names) of each import inside a function])."""
    top: list[str] = []
    inner: list[tuple[int, list[str]]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = _imports(node, package)
            (inner.append((node.lineno, names)) if in_function else top.extend(names))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return top, inner


def test_lazy_imports_are_heavy_and_say_why():
    """An import inside a function is for a heavy library (or an ftlab module that imports one at
    its top), and its line says why (`# lazy: <reason>`); light modules are imported at the top."""
    modules = _modules()
    parsed = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        parsed[name] = _top_and_function_imports(ast.parse(path.read_text()), package)

    def owner(n: str) -> str | None:
        while n and n not in modules:
            n = n.rpartition(".")[0]
        return n or None

    heavy: dict[str, bool] = {}

    def is_heavy(module: str) -> bool:
        if module not in heavy:
            heavy[module] = False  # a cycle cannot make a module heavy
            deps = [n for n in parsed[module][0]] + _parents(module)
            heavy[module] = any(
                is_heavy(owner(n)) if n.startswith("ftlab") and owner(n) else not n.startswith("ftlab") and not _light(n)
                for n in deps if n != "ftlab")
        return heavy[module]

    problems = []
    for name, path in modules.items():
        lines = path.read_text().splitlines()
        for lineno, names in parsed[name][1]:
            reason = lines[lineno - 1].partition("# lazy:")[2].strip()
            own = [owner(n) for n in names if n.startswith("ftlab") and owner(n)]
            light = all(not is_heavy(o) for o in own) if own else all(_light(n) for n in names)
            # ftlab/cli.py is all `ftlab --help` imports: it may keep a light module lazy, for a measured reason
            if not reason or (light and path != ROOT / "cli.py"):
                problems.append(f"{path.relative_to(REPO)}:{lineno}: {lines[lineno - 1].strip()}")
    assert not problems, "lazy imports of light modules, or without `# lazy: <reason>`:\n" + "\n".join(problems)
