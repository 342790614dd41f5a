"""What makes Vertex AI batch prediction fail a whole job while importing its input.

Vertex reads a Cloud Storage JSONL input by importing it into a BigQuery table first:
a failed job says ``code: 3, message: "Failed to import data. ..."`` with BigQuery's
own words after it (googleapis/python-aiplatform#4110, a BigQuery SQL syntax error
naming ``_vertex_row_id``; #4112, a missing ``llm_bp_tenant_dataset_...`` dataset).
So a line Vertex cannot store in one table fails every request of the file, not just
its own (issue 16). The table rules that bite batch requests:

- one type per field across all lines (BigQuery: "Field X has changed type from
  STRING to INTEGER"); integers and decimals count as one type (a schema widens
  INTEGER to FLOAT; unconfirmed for Vertex's import), null fits any type;
- no empty object, e.g. ``"googleSearch": {}`` (BigQuery: "Unsupported empty struct
  type for field ...", captured in bmizhen/rec-avro#2);
- at most 15 levels of nesting (BigQuery: "Schema nested too deeply for field ...,
  maximum allowed depth is 15", captured in bxparks/bigquery-schema-generator#51);
- no ``$defs`` key (not a BigQuery field name; JSON schemas put one in
  ``responseJsonSchema`` / ``parametersJsonSchema``).

The exact text Vertex gives after "Failed to import data." for these is not captured:
the ``bigquery`` texts below are BigQuery's for the same faults, a guess for Vertex.
A leaf, like ``_schema``: pre-flight (``_inputs``) and the emulator apply one rule set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: BigQuery's limit on nested RECORD levels.
MAX_DEPTH = 15
#: BigQuery tables hold at most 10,000 columns; past this many distinct field paths
#: a file cannot be imported (and checking it would take unbounded memory).
MAX_FIELDS = 10_000
DEFS = "$defs"

_NUMBER = "FLOAT"
_WORDS = {
    "STRING": "a string",
    _NUMBER: "a number",
    "BOOLEAN": "true or false",
    "RECORD": "an object",
    "ARRAY": "a list",
}


@dataclass(frozen=True)
class ImportIssue:
    """One thing the table import refuses: where (as the line writes it) and why."""

    path: str
    reason: str
    #: BigQuery's wording for it, as the emulator answers after "Failed to import data."
    bigquery: str


_KINDS: dict[type, str] = {
    str: "STRING",
    int: _NUMBER,
    float: _NUMBER,
    bool: "BOOLEAN",
    dict: "RECORD",
    list: "ARRAY",
}


class TableImport:
    """The import rules over the lines of one file, in order (it remembers each field's
    first type; memory is bounded by :data:`MAX_FIELDS`)."""

    def __init__(self) -> None:
        #: column path (``a.b``; ``a.b[]`` for a list's items) -> (type, first line)
        self._types: dict[str, tuple[str, int]] = {}
        self._full = False

    def check(self, number: int, row: dict[str, Any]) -> list[ImportIssue]:
        """The issues of line ``number`` (a parsed JSON object), at most one per kind.

        Recursion is bounded: objects deeper than MAX_DEPTH are not entered, and a list
        in a list (no column of its own) is not either."""
        issues: dict[str, ImportIssue] = {}
        self._object(number, row, "", "", 0, issues)
        return list(issues.values())

    def _object(
        self,
        number: int,
        obj: dict[str, Any],
        written: str,
        column: str,
        depth: int,
        issues: dict[str, ImportIssue],
    ) -> None:
        if not obj and depth:
            issues.setdefault("empty", _empty(written, column))
        for key, child in obj.items():
            path = f"{written}.{key}" if written else key
            name = f"{column}.{key}" if column else key
            if key == DEFS:
                issues.setdefault("defs", _defs(path))
            elif depth >= MAX_DEPTH:
                issues.setdefault("depth", _too_deep(path, name))
            elif child is not None:
                kind = _KINDS.get(type(child), "STRING")
                if not self._same(number, name, kind, path, issues):
                    continue
                if kind == "RECORD":
                    self._object(number, child, path, name, depth + 1, issues)
                elif kind == "ARRAY":
                    self._list(number, child, path, name, depth + 1, issues)

    def _list(
        self,
        number: int,
        items: list[Any],
        written: str,
        column: str,
        depth: int,
        issues: dict[str, ImportIssue],
    ) -> None:
        for index, item in enumerate(items):
            if item is None:
                continue
            path = f"{written}[{index}]"
            kind = _KINDS.get(type(item), "STRING")
            if self._same(number, f"{column}[]", kind, path, issues) and kind == "RECORD":
                self._object(number, item, path, column, depth, issues)

    def _same(
        self, number: int, name: str, kind: str, path: str, issues: dict[str, ImportIssue]
    ) -> bool:
        """False (with the issue) when ``name`` had another type before; else remember it."""
        seen = self._types.get(name)
        if seen is None:
            if len(self._types) < MAX_FIELDS:
                self._types[name] = (kind, number)
            else:
                self._full = True
            return True
        if seen[0] == kind:
            return True
        issues.setdefault(f"type {name}", _changed(path, name.removesuffix("[]"), seen, kind))
        return False

    def finish(self) -> ImportIssue | None:
        """After the last line: the file had too many distinct fields to import."""
        if not self._full:
            return None
        return ImportIssue(
            "(file)",
            f"more than {MAX_FIELDS:,} distinct fields: Vertex imports the file into a "
            f"table, which holds at most {MAX_FIELDS:,} columns",
            f"Too many total leaf fields: more than {MAX_FIELDS}.",
        )


def _changed(path: str, name: str, seen: tuple[str, int], kind: str) -> ImportIssue:
    before, line = seen
    return ImportIssue(
        path,
        f"{_WORDS[kind]} here but {_WORDS[before]} on line {line}: Vertex imports the file "
        "into a table, where a field keeps one type on every line, or the whole job fails",
        f"Field {name} has changed type from {before} to {kind}.",
    )


def _empty(path: str, name: str) -> ImportIssue:
    return ImportIssue(
        path,
        "an empty object: Vertex imports the file into a table, which cannot hold one, "
        "and the whole job fails (give it a field, or leave it out)",
        f"Unsupported empty struct type for field '{name}'.",
    )


def _too_deep(path: str, name: str) -> ImportIssue:
    return ImportIssue(
        path,
        f"nested deeper than {MAX_DEPTH} levels: Vertex imports the file into a table, "
        f"which nests at most {MAX_DEPTH}, and the whole job fails",
        f"Schema nested too deeply for field {name}, maximum allowed depth is {MAX_DEPTH}.",
    )


def _defs(path: str) -> ImportIssue:
    return ImportIssue(
        path,
        f'"{DEFS}" is not a field name Vertex\'s table import takes, and the whole job '
        "fails (inline the definitions)",
        f'Invalid field name "{DEFS}". Fields must contain only letters, numbers, and '
        "underscores, start with a letter or underscore, and be at most 300 characters long.",
    )
