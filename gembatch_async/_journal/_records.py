"""The journal's line format in one home: what a job line holds and how it is read,
checked and written (one JSON object per line, ``{"input_file": ...`` first)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

from .._names import json_safe

JobLine = dict[str, Any]


#: Every line we (and the original tool) write starts so; a torn first append does too.
_JOB_LINE_START = b'{"input_file"'


def keys_sha256(keys: Iterable[str]) -> str:
    """The ``keys_sha256`` of a job's ``carries`` entry: the sha256 of the sorted request
    keys as one compact JSON array (UTF-8), so no key's characters can make two sets
    hash alike. One definition for rounds (``_results._remainder``) and packs
    (``_submit._pack``)."""
    text = json.dumps(sorted(keys), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def batch_name_of(line: JobLine) -> str:
    """The batch name recorded on a job line: ``batch.name``, or the older ``job_name``."""
    batch = line.get("batch")
    name = batch.get("name") if isinstance(batch, dict) else None
    if not name:
        name = line.get("job_name")
    return name if isinstance(name, str) else ""


def input_sha256_of(line: JobLine) -> str | None:
    """The sha256 of the whole input a line records (a part's line carries it beside
    the part's own), or None when it does not say."""
    whole = line.get("input_sha256")
    if isinstance(whole, str):
        return whole
    sha256 = line.get("sha256")
    return sha256 if isinstance(sha256, str) and "part" not in line else None


def unit_sha256_of(line: JobLine) -> object:
    """The sha256 of the input (or part) a line's job was made for: a round's line
    records its own file's sha256 and the whole input's beside it (a part's round, the
    part's too: ``part_sha256``)."""
    if not is_round_line(line):
        return line.get("sha256")
    return line.get("part_sha256") if "part" in line else line.get("input_sha256")


def is_round_line(line: JobLine) -> bool:
    """A round's line (``_submit._resubmit``: an input's unanswered requests sent again).
    ``carries`` alone does not tell: a packed job's lines carry their inputs too, each
    recording its own input's size and sha256 as a whole job's line does."""
    return "round" in line


def batch_state_of(line: JobLine) -> str:
    """The last recorded state ("" when the line never had one, as in the older format)."""
    batch = line.get("batch")
    state = batch.get("state") if isinstance(batch, dict) else None
    return state if isinstance(state, str) else ""


def _parse_line(raw: bytes) -> JobLine | str:
    """The job line, or a message saying why it is not one."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    return _check_line(obj)


def _parse_lines(raws: list[bytes]) -> list[JobLine | str | None]:
    """For each line its job line, the reason it is not one, or None when blank.

    One JSON array for the whole batch when every line parses (a 50 000-line
    journal then reads in one decoder call, not 50 000); line by line otherwise,
    to say which line is broken.
    """
    filled = [raw for raw in raws if raw.strip()]
    try:
        objects = json.loads(b"[" + b",".join(filled) + b"]")
    except ValueError:
        return [_parse_line(raw) if raw.strip() else None for raw in raws]
    if len(objects) != len(filled):  # a line held two values ("{}, {}"): find it the slow way
        return [_parse_line(raw) if raw.strip() else None for raw in raws]
    decoded = iter(objects)
    return [_check_line(next(decoded)) if raw.strip() else None for raw in raws]


def _check_line(obj: object) -> JobLine | str:
    """The job line, or why it is not one: every field we act on has the shape we expect."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    path = obj.get("input_file")
    if not isinstance(path, str) or not path:
        return 'no "input_file"'
    if "\0" in path:
        return '"input_file" holds a NUL character'
    if "batch" in obj and not isinstance(obj["batch"], dict):
        return '"batch" is not a JSON object'
    for name in ("part", "parts"):
        value = obj.get(name, 1)
        # bool is an int to Python, not a number to JSON
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f'"{name}" is not a part number from 1'
    if obj.get("part", 1) > obj.get("parts", obj.get("part", 1)):
        return '"part" is over "parts"'
    strings = ("job_name", "uploaded_file_name", "input_identity", "journal_id", "sha256")
    for name in (*strings, "input_sha256"):
        if name in obj and not isinstance(obj[name], str):
            return f'"{name}" is not a string'
    identity = obj.get("input_identity")
    if identity and (os.path.isabs(identity) or "\0" in identity):
        # We only ever record a relative path: any other is not ours, and a journal
        # line never points us at a file by its absolute name (see ``_identity``).
        return '"input_identity" is not a relative path'
    batch = obj.get("batch") or {}
    for name in ("name", "state"):
        if name in batch and not isinstance(batch[name], str):
            return f'"batch.{name}" is not a string'
    if not batch_name_of(obj):
        return 'no batch name ("batch.name" or "job_name")'
    return obj


def _is_torn_job_line(fragment: bytes) -> bool:
    """A fragment a crash left mid-append: one of our lines, cut short."""
    if not fragment.lstrip().startswith(_JOB_LINE_START):
        return False
    try:
        json.loads(fragment)
    except ValueError:
        return True
    return False


def encode_line(line: JobLine) -> bytes:
    """One journal line, UTF-8. A file name that is not UTF-8 (Python holds its bytes as
    lone surrogates) is written with JSON ``\\udcNN`` escapes: valid JSON, read back as
    the very same name (see ``_names.json_safe``)."""
    text = json.dumps(line, ensure_ascii=False, separators=(", ", ": "))
    return (json_safe(text) + "\n").encode()
