"""Requests checked as the service checks them, with the service's error texts.

The rules are the tool's own request schema (``gembatch_async._schema``, a leaf
module generated from the SDK's request types): the emulator and pre-flight
can never disagree about what a valid request is. Only the wording here is the
service's: proto JSON parse errors such as
``Invalid JSON payload received. Unknown name "temprature" at 'generation_config':
Cannot find field.`` (text as quoted in python-genai#1451).
"""

from __future__ import annotations

import json
from typing import Any

from gembatch_async import _schema

_API_TYPES = "type.googleapis.com/google.ai.generativelanguage.v1beta"
_PROTO_TYPES = {
    "string": "TYPE_STRING",
    "bytes": "TYPE_BYTES",
    "integer": "TYPE_INT32",
    "number": "TYPE_FLOAT",
    "boolean": "TYPE_BOOL",
    "struct": "type.googleapis.com/google.protobuf.Struct",
}


def request_issues(request: dict[str, Any], kind: str) -> list[_schema.Issue]:
    """What the service would refuse in one request of ``kind``."""
    return _schema.check_request(request, kind)


def issue_message(issue: _schema.Issue, kind: str, prefix: str = "") -> str:
    """One issue in the service's words; ``prefix`` is where the request sits in the body."""
    if issue.problem == _schema.UNKNOWN:
        parent = _join(prefix, issue.proto_path(issue.path[:-1]))
        at = f" at '{parent}'" if parent else ""
        return (
            f'Invalid JSON payload received. Unknown name "{issue.field}"{at}: Cannot find field.'
        )
    if issue.problem == _schema.MISSING:
        return f"* {_schema.ROOTS[kind]}.{issue.field}: {issue.field} is not specified"
    where = _join(prefix, issue.proto_path())
    return f"Invalid value at '{where}' ({_proto_type(issue.expected)}), {json.dumps(issue.value)}"


def request_error(request: dict[str, Any], kind: str) -> str | None:
    """The per-request error message for a batch line, or None when it is valid."""
    issues = request_issues(request, kind)
    if not issues:
        return None
    return "\n".join(issue_message(issue, kind) for issue in issues)


def field_violations(
    issues: list[_schema.Issue], kind: str, prefix: str
) -> tuple[str, list[dict[str, Any]]]:
    """(message, google.rpc.BadRequest details) for a create whose inline requests are bad."""
    messages = [issue_message(issue, kind, prefix) for issue in issues]
    violations = [
        {"field": _join(prefix, issue.proto_path(issue.path[:-1])), "description": message}
        for issue, message in zip(issues, messages, strict=True)
    ]
    details = [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}
    ]
    return "\n".join(messages), details


def _proto_type(code: str) -> str:
    code = code.removeprefix("[]")
    if code.startswith("enum:"):
        return f"{_API_TYPES}.{code[5:]}"
    if code.startswith("map:") or code[:1].isupper():
        return f"{_API_TYPES}.{code.removeprefix('map:')}"
    return _PROTO_TYPES.get(code, "TYPE_MESSAGE")


def _join(prefix: str, path: str) -> str:
    return ".".join(part for part in (prefix, path) if part)


# ----- input files: one line the service cannot parse refuses the whole create ---------
#
# Source: the service refuses a batchGenerateContent whose input file has a line it
# cannot parse, at create time, with 400 INVALID_ARGUMENT naming each line:
# "Error on line 1: invalid JSON, near column 1032: no such field: 'thinking_config'\n
# Error on line 2: ..." (UKGovernmentBEIS/inspect_ai#3257) and "Error on line 1: invalid
# JSON, near column 23: unexpected character: '['; expected '{'" (inspect_ai#5100: "failing
# every request in the batch at once"). Texts for other kinds of line are the emulator's.

#: Lines named in one refusal at most (the emulator's bound: the service's is unknown).
MAX_LINES_NAMED = 20
#: The service's text when it refuses a field its schema has (python-genai#1150).
INVALID_ARGUMENT = "Request contains an invalid argument."


def line_problem(raw: bytes, kind: str) -> str | None:
    """Why the service's parser refuses one input-file line, in its words, or None."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        column = getattr(exc, "colno", 1)
        return f"invalid JSON, near column {column}: {getattr(exc, 'msg', str(exc)).lower()}"
    if not isinstance(obj, dict):
        return f"invalid JSON, near column 1: {_unexpected(obj, '{')}"
    request = obj.get("request")
    if not isinstance(request, dict):
        if "request" not in obj:
            return "invalid JSON: missing field: 'request'"
        where = _column(raw, "request")
        return f"invalid JSON, near column {where}: {_unexpected(request, '{')}"
    issues = request_issues(request, kind)
    if not issues:
        return None
    issue = issues[0]  # the service's parser stops at the first (inspect_ai#5100)
    if issue.problem == _schema.UNKNOWN:
        return (
            f"invalid JSON, near column {_column(raw, issue.field)}: no such field: '{issue.field}'"
        )
    bracket = _bracket(issue.expected, issue.value) if issue.problem == _schema.WRONG_TYPE else None
    if bracket is not None:
        where = _column(raw, issue.field)
        return f"invalid JSON, near column {where}: {_unexpected(issue.value, bracket)}"
    return issue_message(issue, kind)


def input_file_error(problems: list[tuple[int, str]]) -> str:
    """The 400 message for a create whose input file has lines the service refuses."""
    return "\n".join(f"Error on line {number}: {text}" for number, text in problems)


def uses_field(value: Any, names: frozenset[str]) -> bool:
    """Whether a request uses one of ``names`` (camelCase or snake_case) at any depth."""
    if isinstance(value, dict):
        return any(
            _camel(str(key)) in names or uses_field(item, names) for key, item in value.items()
        )
    if isinstance(value, list):
        return any(uses_field(item, names) for item in value)
    return False


def camel_names(names: tuple[str, ...]) -> frozenset[str]:
    """Field names in one spelling, for :func:`uses_field`."""
    return frozenset(_camel(name) for name in names)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _column(raw: bytes, field: str) -> int:
    """1-based column of a field's name in the line (1 when it cannot be found)."""
    return raw.find(f'"{field}"'.encode()) + 1 or 1


def _unexpected(value: Any, bracket: str) -> str:
    return f"unexpected character: '{json.dumps(value)[:1]}'; expected '{bracket}'"


def _bracket(code: str, value: Any) -> str | None:
    """The bracket the parser wanted where a list or an object belongs, else None."""
    if code.startswith("[]") and not isinstance(value, list):
        return "["
    code = code.removeprefix("[]")
    is_object = code == "struct" or code.startswith("map:") or code[:1].isupper()
    return "{" if is_object and not isinstance(value, dict) else None
