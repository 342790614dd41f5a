"""One input's share of a packed job's output (see ``_submit/_pack``).

A packed job's requests carry their input's key prefix (``3~key``). Its output is
cut back per input here, before the ordinary join: the answers whose key starts
with the input's prefix, the prefix taken off, so the input's results come out
exactly as if it had had a job of its own (in its order, its own keys, its own
failed-requests file). An answer whose key no input of the pack can own (none, or
without a prefix) goes to every input's share: each reports it as unexpected, so
it is never dropped unseen.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_WRITE_BUFFER = 1 << 20
#: A pack's key prefix: the member's number, then the first ``~``.
_PREFIX = re.compile(r"[0-9]+~")


def member_output(source: Path, target: Path, prefix: str, *, unowned: bool = True) -> None:
    """Write to ``target`` the lines of the packed output ``source`` that answer the
    input with key ``prefix``, keys without it; lines no input owns are copied as they
    are, unless not ``unowned`` (what answers the input for sure: a request is never
    taken as answered by a line it may not own). Blocking."""
    with (
        open(source, "rb", buffering=_WRITE_BUFFER) as lines,
        open(target, "wb", buffering=_WRITE_BUFFER) as out,
    ):
        for raw in lines:
            line = _share(raw, prefix)
            if line is not None and (unowned or line is not raw):
                out.write(line)


def _share(raw: bytes, prefix: str) -> bytes | None:
    """The line as this input's output holds it, or None when it is another input's."""
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return raw  # malformed: the join names it, with its line
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
        return raw  # no input of the pack owns it: every one reports it
    key: str = obj["key"]
    owner = _PREFIX.match(key)
    if owner is None:
        return raw
    if owner.group() != prefix:
        return None
    obj["key"] = key[len(prefix) :]
    try:
        return json.dumps(obj, ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (an escape in the answer): keep it escaped
        return json.dumps(obj).encode() + b"\n"
