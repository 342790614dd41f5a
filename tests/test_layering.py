"""The emulator depends on nothing of the tool but the request schema, a leaf module."""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Mapping

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gembatch_async"
#: Tool modules the emulator may import: the schema (a leaf) and its generated tables,
#: and the rules of Vertex's table import (a leaf).
SHARED = {
    "gembatch_async._schema",
    "gembatch_async._schema_tables",
    "gembatch_async._vertex_import",
}


def imported_modules(path: pathlib.Path) -> set[str]:
    """Absolute names of the modules a source file imports (relative ones resolved)."""
    tree = ast.parse(path.read_text())
    package = "gembatch_async" + "".join(
        f".{part}" for part in path.parent.relative_to(PACKAGE).parts
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_emulator_imports_only_the_schema_from_the_tool() -> None:
    """emulator/ imports gembatch_async.emulator.* and the schema leaf, nothing else of ours."""
    for path in (PACKAGE / "emulator").glob("*.py"):
        ours = {m for m in imported_modules(path) if m.startswith("gembatch_async")}
        outside = {
            m
            for m in ours
            if not m.startswith("gembatch_async.emulator")
            and m not in SHARED
            and m.rsplit(".", 1)[0] not in SHARED
            and m != "gembatch_async"
        }
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_schema_is_a_leaf() -> None:
    """The shared schema imports only the standard library and its own tables."""
    for name in ("_schema.py", "_schema_tables.py", "_vertex_import.py"):
        ours = {m for m in imported_modules(PACKAGE / name) if m.startswith("gembatch_async")}
        assert ours <= SHARED | {
            f"{m}.{n}" for m in SHARED for n in ("ENUMS", "MESSAGES", "SDK_VERSION")
        }, name


#: The code that must not know which backend runs (issue 12: one seam, no `if vertex:`).
BACKEND_BLIND = (
    "_submit/_pipeline.py",
    "_journal/__init__.py",
    "_admission.py",
    "_results/__init__.py",
    "_submit/_lookup.py",
    "_run.py",
    "_submit/__init__.py",
    "_jobs/__init__.py",
)
BACKEND_MODULES = {
    "gembatch_async._backends.vertex",
    "gembatch_async._backends._gcs",
    "google.cloud",
}


def test_pipeline_journal_admission_and_results_do_not_know_the_backend() -> None:
    """They reach a backend only through _backend/_sessions, never Vertex or storage code."""
    for name in BACKEND_BLIND:
        path = PACKAGE / name
        found = {m for m in imported_modules(path) if any(m.startswith(b) for b in BACKEND_MODULES)}
        assert not found, f"{name} imports {sorted(found)}"


# -- no import cycles --------------------------------------------------------------------
# Every import statement counts: at module level, under ``if TYPE_CHECKING:`` and inside
# functions. A lazy (function-level) import only defers loading, for start-up time; the
# module still depends on what it imports, so a lazy import cannot hide a cycle. Importing
# ``P.m`` also runs package ``P``'s ``__init__``; that implicit edge is not counted (a
# package's ``__init__`` may re-export its modules without forming a cycle with them).


def module_name(path: pathlib.Path) -> str:
    """``gembatch_async._backends._genai`` for .../_backends/_genai.py (a package: its name)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def import_edges(path: pathlib.Path, modules: Mapping[str, object] = MODULES) -> set[str]:
    """The modules of ours that a source file imports, anywhere in it: ``from P import n``
    is an edge to module ``P.n`` when there is one, else to ``P``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                found.add(
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                )
    return {m for m in found if m in modules and m != name}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None: depth-first, iterative."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]
        pending: list[list[str]] = [sorted(graph[start])]
        while pending:
            if not pending[-1]:
                done.add(path.pop())
                pending.pop()
                continue
            nxt = pending[-1].pop()
            if nxt in path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                path.append(nxt)
                pending.append(sorted(graph.get(nxt, ())))
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check below can fail: a two-step and a longer circle are both found."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b", "d"}, "d": set()}) == ["b", "c", "b"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles() -> None:
    """No module of ours reaches itself through imports, lazy and type-only ones included."""
    cycle = find_cycle({name: import_edges(path) for name, path in MODULES.items()})
    assert cycle is None, " -> ".join(cycle)


#: What the backends may not import: everything that builds on them (and the rules of
#: capacity and of identity, which use a backend's answers rather than give them).
ABOVE_THE_BACKENDS = (
    "gembatch_async._submit",
    "gembatch_async._journal",
    "gembatch_async._results",
    "gembatch_async._jobs",
    "gembatch_async._run",
    "gembatch_async.cli",
    "gembatch_async._admission",
    "gembatch_async._identity",
)


def test_the_backends_import_nothing_above_them() -> None:
    """``_backends`` is the bottom of the house: it imports leaves (errors, settings, names,
    schema, events) and the SDK, never a module that builds on it."""
    for name, path in MODULES.items():
        if not name.startswith("gembatch_async._backends"):
            continue
        above = {m for m in import_edges(path) if m.startswith(ABOVE_THE_BACKENDS)}
        assert not above, f"{name} imports {sorted(above)}"
