"""Match a job's answers to its requests, one results line per request, in input
order, in bounded memory whatever the size (blocking; run it in a worker thread).

The service answers in another order than the requests (python-genai#1909) and
ties each answer to its request by the request's ``key``. Three passes over files on
disk:

1. each output line is parsed by :func:`parse_output_line`, strictly (a malformed
   one stops the file: nothing is written, every bad line is named) and indexed as
   (128-bit key hash, where it is): an external sort;
2. each input request is indexed as (key hash, position), and a key that reads as
   a number also under that number's hash (for a key the service wrote as a
   number: matched only when one request reads as it): an external sort; the
   two are joined on the hash into (position, where its answer is), sorted by
   position (a third external sort);
3. the input is read again in order; each request's answer is copied, byte for
   byte, with ``pread`` from the output; a request with no answer gets an error
   line saying so, and every request that failed has its original input line
   copied to the failed-requests file, ready to submit again.

A job without any keys is matched by position (the n-th answer to the n-th
request); in a job with keys, a request without one cannot be matched.
Several output files (the parts of one input) are read as one output, in order.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .._errors import OutputError, Problem
from .._keysort import SortedRecords
from ._keys import answer_digest, key_digest, number_digest, numeric_form
from ._output_lines import OutputLine, parse_output_line, request_key
from ._records import error_label
from ._staging import Staging
from ._usage import UsageTally

#: How many keys (missing, unknown) and malformed lines a result names; counts cover all.
MAX_LISTED = 100
MAX_PROBLEMS = 20
_CHECK_EVERY = 4096
_WRITE_BUFFER = 1 << 20

#: The error line written for a request the output has no answer for.
NOT_ANSWERED = {
    "code": 5,
    "message": "gembatch-async: the batch output has no answer for this request",
    "status": "NOT_ANSWERED",
}
#: ... and for a request without a key in a job whose other requests have one.
NO_KEY = {
    "code": 3,
    "message": "gembatch-async: this request has no key while others in the job have one, "
    "so its answer cannot be told apart; give every request a key",
    "status": "NO_KEY",
}

# Index records, big-endian so byte order is sort order.
_WHERE = struct.Struct(">BIQQ")  # is error, output file number, byte offset, length
_OUT = struct.Struct(">16s" + _WHERE.format[1:])  # key hash + where: responses sort first
_IN = struct.Struct(">16sBQ")  # key hash, is a number's alias, request position
_JOINED = struct.Struct(">Q" + _WHERE.format[1:])  # request position + where
_Where = tuple[int, int, int, int]


@dataclass
class Tally:
    """What the join found: counts for ``ResultFile``, the first keys it names, tokens."""

    requests: int = 0
    responses: int = 0
    errors: int = 0
    failed_by_code: Counter[str] = field(default_factory=Counter)
    missing_keys: list[str] = field(default_factory=list)
    missing: int = 0
    unknown_keys: list[str] = field(default_factory=list)
    unknown: int = 0
    unmatched: int = 0
    duplicates: int = 0
    keyless: bool = False
    #: Unknown answers whose numeric key several request keys read as.
    ambiguous: int = 0
    usage: UsageTally = field(default_factory=UsageTally)


@dataclass
class _Outputs:
    """The output files, open for ``pread``, as one numbered sequence."""

    paths: Sequence[Path]
    names: Sequence[str]
    fds: list[int] = field(default_factory=list)

    def __enter__(self) -> _Outputs:
        for path in self.paths:
            self.fds.append(os.open(path, os.O_RDONLY))
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)

    def line(self, where: _Where) -> bytes:
        """The output line at ``where`` (is error, file, offset, length), without its newline."""
        _, number, offset, length = where
        data = os.pread(self.fds[number], length, offset)
        while len(data) < length:
            more = os.pread(self.fds[number], length - len(data), offset + len(data))
            if not more:
                raise OSError(f"{self.names[number]} shrank while being read")
            data += more
        return data.rstrip(b"\r\n")


Check = Callable[[], None]


def _no_check() -> None:
    """Default: nothing can cancel a direct (non-thread) call."""


def build_results(
    input_path: str,
    outputs: Sequence[Path],
    staging: Staging,
    *,
    names: Sequence[str] | None = None,
    check: Check = _no_check,
    superseding: bool = False,
) -> tuple[Tally, Path, Path | None]:
    """Write the results (and failed requests) of ``input_path`` to temporaries of
    ``staging``: (what was found, results temp, failed temp or None).

    Raises :class:`OutputError` when an output line is malformed, ``OSError`` when a
    file cannot be read or written. ``check`` is called now and then (cancellation).

    ``superseding``: the outputs are the jobs of one input's rounds, newest first (see
    ``_remainder``): a request answered in several is no duplicate; its response is
    kept, else its newest error.
    """
    files = _Outputs(outputs, names or [str(p) for p in outputs])
    tally = Tally()
    with (
        files,
        SortedRecords(_OUT.size) as answers,
        SortedRecords(_IN.size) as requests,
        SortedRecords(_JOINED.size) as joined,
        _Spool(_WHERE.size) as keyless_answers,
    ):
        _index_outputs(files, answers, keyless_answers, check, tally.usage)
        keyed = _index_inputs(input_path, requests, tally, check)
        tally.keyless = keyed == 0 and tally.requests > 0
        _join(answers, requests, joined, tally, files, check, superseding)
        if tally.keyless:  # the n-th answer is the n-th request's
            in_order: Iterator[tuple[int, _Where]] = enumerate(
                _WHERE.unpack(record) for record in keyless_answers
            )
        else:  # answers without a key cannot be placed in a job with keys
            tally.unknown += keyless_answers.count
            in_order = ((r[0], r[1:]) for r in map(_JOINED.unpack, joined))
        results, failed = _write_in_order(input_path, files, in_order, staging, tally, check)
    return tally, results, failed


def _index_outputs(
    files: _Outputs, answers: SortedRecords, keyless: _Spool, check: Check, usage: UsageTally
) -> None:
    """Pass 1: parse every output line; index keyed answers by key, the rest in order;
    sum the tokens of every answer (each was billed, matched or not)."""
    problems: list[Problem] = []
    more = 0
    for number, path in enumerate(files.paths):
        for line_no, offset, raw in _lines(path, check):
            parsed = parse_output_line(raw)
            if isinstance(parsed, str):
                if len(problems) < MAX_PROBLEMS:
                    problems.append(Problem(files.names[number], parsed, line_no))
                else:
                    more += 1
                continue
            where = (int(parsed.is_error), number, offset, len(raw))
            if not parsed.is_error:
                usage.add_response(parsed.response)
            if parsed.key is None:
                keyless.add(_WHERE.pack(*where))
            else:
                answers.add(_OUT.pack(answer_digest(parsed.key), *where))
    if problems:
        raise OutputError(problems, more)


def _lines(path: Path, check: Check) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of each non-blank line."""
    offset = 0
    with open(path, "rb", buffering=_WRITE_BUFFER) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no % _CHECK_EVERY == 0:
                check()
            if raw.strip():
                yield line_no, offset, raw
            offset += len(raw)


def _index_inputs(input_path: str, requests: SortedRecords, tally: Tally, check: Check) -> int:
    """Pass 2: index each keyed request by key; returns how many have a key."""
    keyed = 0
    for position, (_, _, raw) in enumerate(_lines(Path(input_path), check)):
        key = request_key(raw)
        if key is not None:
            requests.add(_IN.pack(key_digest(key), 0, position))
            number = numeric_form(key)
            if number is not None:  # in case the service answers with the key as a number
                requests.add(_IN.pack(number_digest(number), 1, position))
            keyed += 1
        tally.requests = position + 1
    return keyed


class _Unknown:
    """Answers no request claimed: counted, the first few kept to name their keys."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.where: list[_Where] = []

    def add(self, group: tuple[bytes, _Where, int], ambiguous: bool) -> None:
        """One key's answers: counted once, or each when ambiguous (each is a request's)."""
        count = 1 + group[2] if ambiguous else 1
        self.tally.unknown += count
        self.tally.ambiguous += count if ambiguous else 0
        if len(self.where) < MAX_LISTED:
            self.where.append(group[1])


def _join(
    answers: SortedRecords,
    requests: SortedRecords,
    joined: SortedRecords,
    tally: Tally,
    files: _Outputs,
    check: Check,
    superseding: bool = False,
) -> None:
    """Match answers to requests on the key hash: (position, where) into ``joined``.
    A request with no answer leaves a gap; an answer with no request is unknown, and
    so is a numeric key that more than one request key reads as."""
    unknown = _Unknown(tally)
    groups = _answer_groups(answers)
    answer, claimed, ambiguous = next(groups, None), False, False
    for step, (digest, position, sharing) in enumerate(_request_groups(requests), start=1):
        if step % _CHECK_EVERY == 0:
            check()
        while answer is not None and answer[0] < digest:
            if not claimed:
                unknown.add(answer, ambiguous)
            answer, claimed, ambiguous = next(groups, None), False, False
        if answer is not None and answer[0] == digest:
            if sharing > 1:  # "0" and "000" both read as 0: never guess which
                ambiguous = True
                continue
            if not claimed:
                tally.duplicates += 0 if superseding else answer[2]
                claimed = True
            joined.add(_JOINED.pack(position, *answer[1]))
    while answer is not None:
        if not claimed:
            unknown.add(answer, ambiguous)
        answer, claimed, ambiguous = next(groups, None), False, False
    tally.unknown_keys = [_answer_key(files, where) for where in unknown.where]


def _request_groups(requests: SortedRecords) -> Iterator[tuple[bytes, int, int]]:
    """(key hash, position, how many requests share it): each keyed request as it
    comes; the requests whose keys read as one number, once, with the first position."""
    alias: tuple[bytes, int, int] | None = None
    for record in requests:
        digest, is_alias, position = _IN.unpack(record)
        if alias is not None and (not is_alias or digest != alias[0]):
            yield alias
            alias = None
        if not is_alias:
            yield digest, position, 1
        elif alias is None:
            alias = (digest, position, 1)
        else:
            alias = (digest, alias[1], alias[2] + 1)
    if alias is not None:
        yield alias


def _answer_groups(answers: SortedRecords) -> Iterator[tuple[bytes, _Where, int]]:
    """(key hash, where its first answer is, how many more answers it has); a
    response sorts before an error, so a response is the one kept."""
    current: bytes | None = None
    first: _Where = (0, 0, 0, 0)
    more = 0
    for record in answers:
        digest, *where = _OUT.unpack(record)
        if digest == current:
            more += 1
            continue
        if current is not None:
            yield current, first, more
        current, first, more = digest, (where[0], where[1], where[2], where[3]), 0
    if current is not None:
        yield current, first, more


def _answer_key(files: _Outputs, where: _Where) -> str:
    """An unknown answer's key as shown: a numeric key as its number ("" for none)."""
    try:
        parsed = parse_output_line(files.line(where) + b"\n")
    except OSError:
        return ""
    if isinstance(parsed, str) or parsed.key is None:
        return ""
    if isinstance(parsed.key, str):
        return parsed.key
    number = int(parsed.key) if parsed.key.is_integer() else parsed.key
    return f"{number} (a number)"


def _write_in_order(
    input_path: str,
    files: _Outputs,
    answers: Iterator[tuple[int, _Where]],
    staging: Staging,
    tally: Tally,
    check: Check,
) -> tuple[Path, Path | None]:
    """Pass 3: the input in order; each request's answer (or an error line) to the
    results, the original line of each failed request to the failed file."""
    results_path = staging.new("results")
    failed = _LazyFile(staging)
    pending = next(answers, None)
    with open(results_path, "wb", buffering=_WRITE_BUFFER) as results, failed:
        for position, (_, _, raw) in enumerate(_lines(Path(input_path), check)):
            where = None
            if pending is not None and pending[0] == position:
                where = pending[1]
                pending = next(answers, None)
                while pending is not None and pending[0] == position:  # "5" and 5 both
                    tally.duplicates += 1
                    pending = next(answers, None)
            line, label = _answer_line(files, where, raw, tally)
            results.write(line + b"\n")
            if label is not None:
                tally.failed_by_code[label] += 1
                failed.write(raw if raw.endswith(b"\n") else raw + b"\n")
        _sync(results)
    if pending is not None and tally.keyless:  # more answers than requests
        tally.unknown += 1 + sum(1 for _ in answers)
    return results_path, failed.path


def _answer_line(
    files: _Outputs, where: _Where | None, raw: bytes, tally: Tally
) -> tuple[bytes, str | None]:
    """The results line for one request, and its failure label (None when answered)."""
    if where is not None:
        line = files.line(where)
        if not where[0]:
            tally.responses += 1
            return line, None
        tally.errors += 1
        parsed = parse_output_line(line + b"\n")  # read in pass 1: only a changed file fails
        return line, error_label(parsed.error) if isinstance(parsed, OutputLine) else "unknown"
    key = request_key(raw)
    if key is None and not tally.keyless:
        tally.unmatched += 1
        error = NO_KEY
    else:
        tally.missing += 1
        if key is not None and len(tally.missing_keys) < MAX_LISTED:
            tally.missing_keys.append(key)
        error = NOT_ANSWERED
    body = {"key": key, "error": error} if key is not None else {"error": error}
    return json.dumps(body, ensure_ascii=False).encode(), error_label(error)


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


class _LazyFile:
    """The failed-requests temporary, created with its first line (most jobs have none)."""

    def __init__(self, staging: Staging) -> None:
        self._staging = staging
        self._handle: BinaryIO | None = None
        self.path: Path | None = None

    def write(self, data: bytes) -> None:
        if self._handle is None:
            self.path = self._staging.new("failed")
            self._handle = open(self.path, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115 (closed in __exit__)
        self._handle.write(data)

    def __enter__(self) -> _LazyFile:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._handle is not None:
            try:
                if exc_type is None:
                    _sync(self._handle)
            finally:
                self._handle.close()


class _Spool:
    """Fixed-width records written once and read back in order, from a temporary file."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.count = 0
        self._file: BinaryIO | None = None

    def add(self, record: bytes) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="gembatch-spool-")  # noqa: SIM115 (closed in __exit__)
        self._file.write(record)
        self.count += 1

    def __iter__(self) -> Iterator[bytes]:
        if self._file is None:
            return
        self._file.seek(0)
        while chunk := self._file.read(self.width * 4096):
            for start in range(0, len(chunk), self.width):
                yield chunk[start : start + self.width]

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
