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
