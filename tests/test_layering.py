"""The emulator depends on nothing of the tool but the request schema, a leaf module."""

from __future__ import annotations

import ast
import pathlib
import re
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
    "_submit/_one_file.py",
    "_submit/_writer.py",
    "_journal/__init__.py",
    "_admission.py",
    "_results/__init__.py",
    "_results/_fetch.py",
    "_results/_join.py",
    "_results/_targets.py",
    "_results/_staging.py",
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


#: Where google-genai may be imported: the backends (which answer in records of ours,
#: ``_backends/_records``) and the emulator, which is tested against the SDK's wire form.
SDK_ROOMS = ("_backends/", "emulator/")


def sdk_imports(path: pathlib.Path) -> set[str]:
    """The google-genai modules a source file imports, anywhere in it (type-only too):
    ``from google import genai`` counts as ``google.genai``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "google.genai" or m.startswith("google.genai.")}


def test_only_the_backends_import_the_sdk() -> None:
    """Outside _backends/ (and the emulator) no module imports google.genai: jobs, models
    and files reach the rest of the package as our records, and the caller's
    ``genai.Client`` of the public API is named through ``_backends``."""
    found = {
        path.relative_to(PACKAGE).as_posix(): sorted(sdk_imports(path))
        for path in sorted(PACKAGE.rglob("*.py"))
        if not path.relative_to(PACKAGE).as_posix().startswith(SDK_ROOMS) and sdk_imports(path)
    }
    assert found == {}


def test_the_sdk_import_check_sees_each_form(tmp_path: pathlib.Path) -> None:
    """The check can fail: ``from google import genai``, ``from google.genai import
    types`` and ``import google.genai.types`` (also under TYPE_CHECKING) are all seen."""
    module = tmp_path / "peek.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from google import genai\n"
        "import google.genai.types\n"
        "if TYPE_CHECKING:\n"
        "    from google.genai import types\n"
    )
    assert sdk_imports(module) == {"google.genai", "google.genai.types"}


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
    """The check below can fail: a circle is found, also one reached from outside it."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"d", "e"}, "d": {"b"}, "e": set()}) == [
        "b",
        "c",
        "d",
        "b",
    ]
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


# -- backend names stay in the backends ---------------------------------------------------
#: A name that says which backend: Vertex, Gemini (the API's own name, as a backend) or
#: Cloud Storage, which only Vertex uses.
BACKEND_WORD = re.compile(r"vertex|gemini|gcs", re.IGNORECASE)
#: Where backend names belong: the backends, and the emulator of both services.
BACKEND_ROOMS = ("_backends/", "emulator/")
#: The backend names still seen outside the backends, each with why it is there. The test
#: fails on a new one and on one that is gone, so this list stays the true picture. Most
#: wait for a Target (issue 18) that carries its own limits and pre-flight rules; the
#: public API's ``vertex=`` parameters and names stay as they are.
KNOWN_BACKEND_NAMES: dict[str, set[str]] = {
    # The public API: GeminiApi and VertexTarget are exported names.
    "__init__.py": {"GeminiApi", "VertexTarget"},
    # Vertex's job limits (1 GB, 200,000 requests) and its table-import rules are
    # pre-flight rules of one backend, chosen by a ``vertex: bool``.
    "_settings.py": {"VERTEX_MAX_INPUT_BYTES", "VERTEX_MAX_REQUESTS"},
    "_inputs.py": {"VERTEX_MAX_INPUT_BYTES", "VERTEX_MAX_REQUESTS", "_vertex_import", "vertex"},
    # submit, run and open_jobs take ``vertex: VertexTarget | None`` (public API) and
    # pass it to ``_backends._sessions`` to build their Target; no branch on it.
    "_submit/__init__.py": {"VertexTarget", "vertex"},
    "_run.py": {"VertexTarget", "vertex"},
    "_jobs/__init__.py": {"VertexTarget", "vertex"},
    # The CLI's --project/--location/--bucket flags build a VertexTarget for the above.
    "cli/_endpoints.py": {"VertexTarget", "_vertex_flags", "vertex"},
    "cli/_commands.py": {"vertex"},
}


def backend_names(path: pathlib.Path) -> set[str]:
    """The backend names a module uses: identifiers, imported names and modules, and
    string constants that are a backend's name (``"vertex"``), or mention the journal's
    ``"backend"`` field. Docstrings and messages are prose, not checked."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.arg | ast.keyword):
            names = [node.arg or ""]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.alias):
            names = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip().lower()
            names = (
                [repr(node.value)] if text in ("vertex", "gemini") or '"backend"' in text else []
            )
        else:
            continue
        found.update(n for n in names if BACKEND_WORD.search(n) or n.startswith("'"))
    return found


def test_backend_names_stay_in_the_backends() -> None:
    """Outside _backends/ (and the emulator) no module names a backend, except the ones
    listed with their reason; a byte check like ``'"backend": "vertex"' in line`` is seen."""
    seen: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if not name.startswith(BACKEND_ROOMS) and (names := backend_names(path)):
            seen[name] = names
    assert seen == KNOWN_BACKEND_NAMES


def test_the_backend_name_check_sees_a_journal_byte_check(tmp_path: pathlib.Path) -> None:
    """The check can fail: the CLI's old look into the journal's bytes is seen."""
    module = tmp_path / "peek.py"
    module.write_text(
        "def may_use(line: str) -> bool:\n"
        "    return '\"backend\": \"vertex\"' in line or line == 'gemini'\n"
    )
    assert backend_names(module) == {'\'"backend": "vertex"\'', "'gemini'"}


# -- the module map ------------------------------------------------------------------------
MODULE_MAP = PACKAGE.parent / "docs" / "architecture.md"


def test_the_module_map_names_every_module_once() -> None:
    """docs/architecture.md has one row per module: a new module gets its line, a moved
    or deleted one loses it, so the map a newcomer reads first stays true."""
    rows = re.findall(r"^\| `([^`]+\.py)` \|", MODULE_MAP.read_text(), re.MULTILINE)
    modules = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py"))
    assert sorted(rows) == modules
    assert len(rows) == len(set(rows))
