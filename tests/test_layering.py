"""The emulator depends on nothing of the tool but the request schema, a leaf module."""

from __future__ import annotations

import ast
import pathlib

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
