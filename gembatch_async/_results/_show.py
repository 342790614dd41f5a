"""A results file read as key and text: what most users want from the answers.

A results line is ``{"key", "response"}`` or ``{"key", "error"}`` (README, Results; Vertex
lines are converted to this shape when downloaded). Streamed line by line: any size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import UsageError
from .._names import display_path
from .._strict_json import TooDeepError, strict_json
from ._records import error_label

#: How many of an embedding's values are shown (its length is always shown).
EMBEDDING_VALUES_SHOWN = 3


@dataclass(frozen=True)
class Answer:
    """One results line: its key ("" when it has none), and the answer's text or the
    error; ``problem`` says why a line is no results line (then text and error are None)."""

    line: int
    key: str
    text: str | None = None
    error: str | None = None
    problem: str | None = None


def read_answers(path: str) -> Iterator[Answer]:
    """Each line of a results file as an :class:`Answer`, in the file's order."""
    try:
        # Opened apart from the `with` below: only a file that cannot be opened is a
        # usage error, not a failure while reading it.
        handle = Path(path).open("rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"{display_path(path)}: {exc.strerror or exc}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield answer_of(number, raw)


def answer_of(number: int, raw: bytes) -> Answer:
    try:
        obj = strict_json(raw)
    except TooDeepError as exc:
        return Answer(number, "", problem=str(exc))
    except (ValueError, UnicodeDecodeError):
        return Answer(number, "", problem="not valid JSON")
    if not isinstance(obj, dict):
        return Answer(number, "", problem="not a JSON object")
    key = _key(obj.get("key"))
    if isinstance(obj.get("error"), dict):
        return Answer(number, key, error=_error_text(obj["error"]))
    if isinstance(obj.get("response"), dict):
        return Answer(number, key, text=response_text(obj["response"]))
    return Answer(number, key, problem='neither "response" nor "error" is an object')


def _key(key: object) -> str:
    """The key as written: a string as is, a number (as the service may write one) in its
    JSON form, none as ""."""
    if key is None:
        return ""
    return key if isinstance(key, str) else str(key)


def _error_text(error: dict[str, Any]) -> str:
    """``13 INTERNAL: message``: the code and its name (as download's counts name them),
    then the service's message."""
    message = error.get("message")
    label = error_label(error)
    return f"{label}: {message}" if isinstance(message, str) and message else label


def response_text(response: dict[str, Any]) -> str:
    """The text of ``candidates[0]``'s parts, joined with nothing between them, thought
    parts left out: what google-genai's ``GenerateContentResponse.text`` returns
    (Source: googleapis/python-genai, google/genai/types.py, ``_get_text``). An embedding
    shows its length and first values; an answer with no text says why, in brackets."""
    embedding = response.get("embedding")
    if isinstance(embedding, dict) and isinstance(embedding.get("values"), list):
        return _embedding_text(embedding["values"])
    candidates = response.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    if not isinstance(first, dict):
        feedback = response.get("promptFeedback")
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        return f"[no answer: prompt blocked, {reason}]" if reason else "[no answer]"
    content = first.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts = [
        part["text"]
        for part in (parts if isinstance(parts, list) else [])
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")
    ]
    if texts:
        return "".join(texts)
    reason = first.get("finishReason")
    return f"[no text: finish reason {reason}]" if reason else "[no text]"


def _embedding_text(values: list[Any]) -> str:
    head = ", ".join(str(v) for v in values[:EMBEDDING_VALUES_SHOWN])
    more = ", ..." if len(values) > EMBEDDING_VALUES_SHOWN else ""
    return f"[embedding of {len(values)} values: {head}{more}]"


#: What would break one answer per line, or reach the terminal as a control sequence:
#: C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the backslash
#: (so that the escapes read back unambiguously).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def one_line(text: str) -> str:
    """``text`` on one line: a newline as ``\\n``, a tab ``\\t``, a backslash ``\\\\``, any
    other control character ``\\xNN`` or ``\\uNNNN`` (Python's string escapes)."""
    return _UNSAFE.sub(lambda m: _NAMED.get(m[0]) or m[0].encode("unicode_escape").decode(), text)
