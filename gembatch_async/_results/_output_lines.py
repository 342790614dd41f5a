"""One line read: an output line as an answer (the one reader of output lines), and
an input line's key."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .._strict_json import TooDeepError, strict_json
from ._keys import numeric_key


@dataclass(frozen=True)
class OutputLine:
    """One output line that reads as an answer: its key (None: no key; a float: a key
    the service wrote as a JSON number), whether it is an error, and the error."""

    key: str | float | None
    is_error: bool
    error: object = None
    #: The answer's ``response`` object (None for an error line).
    response: object = None


def parse_output_line(raw: bytes) -> OutputLine | str:
    """What an output line holds, or what is wrong with it: the one reader of output
    lines. Strict JSON (``NaN`` and ``Infinity`` are not JSON, and a results file
    copies the line as it is), any depth without a crash, the shape of an answer."""
    cut = not raw.endswith(b"\n")
    try:
        obj = strict_json(raw)
    except TooDeepError as exc:
        return str(exc)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = f"not valid JSON ({_json_error(exc)})"
        return reason + ("; the file ends in the middle of this line" if cut else "")
    if not isinstance(obj, dict):
        kind = "an array" if isinstance(obj, list) else f"a JSON {type(obj).__name__}"
        return f"{kind}, not an object"
    if "response" not in obj and "error" not in obj:
        return 'neither "response" nor "error"'
    for name in ("response", "error"):
        if name in obj and not isinstance(obj[name], dict):
            return f'"{name}" is not an object'
    key = obj.get("key")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        key = numeric_key(key)
        if key is None:
            return '"key" is a number too large to match'
    elif key is not None and not isinstance(key, str):
        return '"key" is not a string'
    return OutputLine(key, "error" in obj, obj.get("error"), obj.get("response"))


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)


def request_key(raw: bytes) -> str | None:
    """The key of an input line, or None (no key, or not a request line at all)."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # a line edited since pre-flight
        return None
    key = obj.get("key") if isinstance(obj, dict) else None
    return key if isinstance(key, str) else None
