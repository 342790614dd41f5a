"""Turn a job's output into results: one line per input request, in input order.

The service answers in another order than the requests (python-genai#1909) and
ties each answer to its request by the request's ``key``. Results are built in
bounded memory, whatever the size, from files on disk:

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

Files are written as hidden temporary files beside their final names, fsynced,
and renamed into place only when complete; the results file comes last, so its
existence means "done". Temporaries are removed on failure or cancellation, and
those a killed process left are removed by the next download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import anyio
import anyio.from_thread
import anyio.to_thread

from .._backends import JobsApi
from .._durable import fsync_folder
from .._errors import ApiError, NotFoundApiError, OutputError, Problem
from .._keysort import SortedRecords
from .._retry import call_with_retries, describe
from .._settings import RetrySettings
from .._strict_json import TooDeepError as TooDeepError  # re-exported for _show
from .._strict_json import strict_json as strict_json
from ._usage import TokenUsage, UsageTally

if TYPE_CHECKING:  # a record only: _prices imports this package
    from .._prices import Cost
from ._unpack import member_output

#: How many keys (missing, unknown) and malformed lines a result names; counts cover all.
MAX_LISTED = 100
MAX_PROBLEMS = 20
RESULTS_FOLDER = "results"
_TEMP_SUFFIX = ".gembatch-tmp"
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
_GRPC_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}

# Index records, big-endian so byte order is sort order.
_WHERE = struct.Struct(">BIQQ")  # is error, output file number, byte offset, length
_OUT = struct.Struct(">16s" + _WHERE.format[1:])  # key hash + where: responses sort first
_IN = struct.Struct(">16sBQ")  # key hash, is a number's alias, request position
_JOINED = struct.Struct(">Q" + _WHERE.format[1:])  # request position + where
_Where = tuple[int, int, int, int]


# -- where results go -------------------------------------------------------------------------
@dataclass(frozen=True)
class ResultTargets:
    """The files one input's results are written to."""

    input_path: str
    results: Path
    failed: Path
    raw: Path

    def files(self) -> list[Path]:
        """Every file a download may write for the input (raw output: with ``--keep-raw``,
        for malformed output, or for an input changed since it was submitted)."""
        return [self.results, self.failed, self.raw]


def result_targets(input_path: str, out_dir: str | os.PathLike[str] | None = None) -> ResultTargets:
    """``<input dir>/results/<name>`` (the original gembatch's layout), or with
    ``out_dir`` the input's path mirrored under it."""
    source = Path(input_path)
    if out_dir is None:
        folder = source.parent / RESULTS_FOLDER
    else:
        folder = Path(out_dir) / _mirrored(input_path).parent
    return ResultTargets(
        input_path,
        folder / source.name,
        folder / _beside(source.name, "failed"),
        folder / _beside(source.name, "raw"),
    )


def _beside(name: str, role: str) -> str:
    """``q.jsonl`` -> ``q.failed.jsonl`` (the layout since the first release); any other
    name keeps its whole self (``q.txt`` -> ``q.txt.failed.jsonl``), so ``q.jsonl`` and
    ``q.txt`` beside it never share one. What names still meet (``q`` and ``q.jsonl``,
    or an input named ``q.failed.jsonl``) is refused by :func:`plan_targets`."""
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") and len(name) > 6 else name
    return f"{stem}.{role}.jsonl"


def _file_names(input_path: str) -> set[str]:
    """The names (not folders) of the files an input's results are written to."""
    name = os.path.basename(os.path.normpath(input_path))
    return {name, _beside(name, "failed"), _beside(name, "raw")}


def _mirrored(input_path: str) -> Path:
    """The input's path relative to the current folder; one outside it keeps its
    absolute path (without the leading ``/``), so nothing lands outside ``--out``."""
    normal = os.path.normpath(input_path)
    if not os.path.isabs(normal) and not normal.startswith(".."):
        return Path(normal)
    absolute = os.path.abspath(normal)
    relative = os.path.relpath(absolute, os.getcwd())
    if not relative.startswith(".."):
        return Path(relative)
    return Path(absolute.lstrip(os.sep))


def plan_targets(
    paths: Sequence[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    inputs: Sequence[str] = (),
    together: Sequence[str] = (),
    written: Mapping[str, str] | None = None,
) -> dict[str, ResultTargets | str]:
    """Each path's targets, or why they are refused; the one place that decides what a
    download may write. Every file of an input counts (results, failed requests, raw
    output; the temporaries are named after the results file). Refused when:

    - two inputs would write one file: of ``paths``, or of ``together`` (the other
      inputs of one ``run``, whose results come one at a time), through a symlink too;
    - a file would overwrite an input (``paths`` and ``inputs``);
    - a file is one another input's download wrote (``written``: path -> that input,
      from the journal), so a later command never overwrites or removes it.
    Nothing is overwritten."""
    resolve = _Resolver()
    mine = {resolve(Path(p)) for p in paths}
    # Files can only meet when their names do: a cheap test first, as a run asks this
    # once per input of thousands.
    names = {name for path in paths for name in _file_names(path)}
    others = [p for p in together if names & _file_names(p) and resolve(Path(p)) not in mine]
    written = {f: owner for f, owner in (written or {}).items() if os.path.basename(f) in names}
    plans = {path: result_targets(path, out_dir) for path in [*paths, *others]}
    writers: dict[str, list[str]] = {}
    for path, targets in plans.items():
        for target in targets.files():
            writers.setdefault(resolve(target), []).append(path)
    protected = {resolve(Path(p)): p for p in [*inputs, *paths]}
    owners = {resolve(Path(file)): owner for file, owner in written.items()}
    refused: dict[str, str] = {}
    for where, who in writers.items():
        owner = owners.get(where)
        for path in who:
            if where in protected:
                refused[path] = f"refused: its results would overwrite the input {protected[where]}"
            elif len(who) > 1:
                named = ", ".join(other for other in who if other != path)
                refused[path] = (
                    f"refused: {named} would write the same file {where}; "
                    "download them one at a time with different --out"
                )
            elif owner is not None and resolve(Path(owner)) != resolve(Path(path)):
                refused[path] = (
                    f"refused: {where} belongs to the results of {owner}, another input; "
                    "download this one with --out DIR"
                )
    return {path: refused.get(path, plans[path]) for path in paths}


class _Resolver:
    """Real paths, resolving each folder once (a journal names thousands of inputs)."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path) -> str:
        folder = str(path.parent)
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder)
        return os.path.join(real, path.name)


def results_are_current(targets: ResultTargets, created_at: float | None) -> bool:
    """The results file exists and was written after the job was created (one left
    from an earlier job of the same input, submitted again since, is not current)."""
    try:
        written = os.stat(targets.results).st_mtime
    except OSError:
        return False
    return created_at is None or written >= created_at


# -- what came of it ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ResultCounts:
    """What a downloaded result held; recorded in the journal, shown by ``status``."""

    batch_name: str
    results_path: str
    failed_path: str | None
    requests: int
    responses: int
    failed: int
    failed_by_code: Mapping[str, int]
    missing: int
    unknown: int
    #: Tokens the answers used (None: recorded before usage was summed).
    usage: TokenUsage | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed_by_code": dict(self.failed_by_code)}

    @classmethod
    def from_dict(cls, data: object) -> ResultCounts | None:
        """The counts a journal line records, or None when it records none (or garbage)."""
        if not isinstance(data, dict):
            return None
        try:
            usage = TokenUsage.from_dict(data.get("usage"))
            return cls(**{**data, "failed_by_code": dict(data["failed_by_code"]), "usage": usage})
        except (TypeError, KeyError, ValueError):
            return None


@dataclass(frozen=True)
class ResultFile:
    """One input's results, as written (or why they were not) (USERS.md P8, P10).

    ``output_path`` holds one line per input request, in input order. ``errors``
    counts the error lines the service wrote; ``failed_by_code`` counts every
    request without a usable answer (those, plus never answered and unmatched),
    and ``failed_path`` holds their original input lines.
    """

    path: str
    batch_name: str
    output_path: str
    responses: int = 0
    errors: int = 0
    #: The first MAX_LISTED input keys with no answer; missing_count has them all.
    missing_keys: tuple[str, ...] = ()
    #: Answers whose key is not in the input (or has no key in a job with keys).
    unexpected_keys: int = 0
    skipped: bool = False
    error: str | None = None
    missing_count: int = 0
    requests: int = 0
    failed_path: str | None = None
    failed_by_code: Mapping[str, int] = field(default_factory=dict)
    #: The first MAX_LISTED keys of unexpected answers ("" for an answer without a key).
    unknown_keys: tuple[str, ...] = ()
    #: Requests without a key in a job with keys: they cannot be matched.
    unmatched: int = 0
    #: Answers beyond the first for one key (the first response is kept).
    duplicates: int = 0
    #: No request had a key: answers were matched by position.
    keyless: bool = False
    raw_path: str | None = None
    #: Malformed output lines, "NAME:LINE: reason" (the first MAX_PROBLEMS).
    problems: tuple[str, ...] = ()
    #: Of the unexpected answers: those whose key came back as a number that several
    #: request keys read as ("0" and "000"), left unmatched rather than guessed.
    ambiguous_keys: int = 0
    #: The input's job ended in this state (FAILED, CANCELLED, EXPIRED) without results:
    #: nothing was downloaded; ``error`` is None (the job's end is not the download's).
    ended: str | None = None
    #: Tokens used, summed from every answer's usageMetadata (None: not read).
    usage: TokenUsage | None = None
    #: The model the job ran and when it was created (epoch seconds): what prices it.
    model: str = ""
    created_at: float | None = None
    #: What the answers cost (set by ``download``/``run``, which know the model).
    cost: Cost | None = None

    @property
    def failed(self) -> int:
        return sum(self.failed_by_code.values())

    @property
    def complete(self) -> bool:
        """Every request has exactly one answer and every answer a request."""
        return self.error is None and not (
            self.missing_count or self.unexpected_keys or self.unmatched or self.duplicates
        )

    def counts(self) -> ResultCounts:
        return ResultCounts(
            self.batch_name,
            self.output_path,
            self.failed_path,
            self.requests,
            self.responses,
            self.failed,
            dict(self.failed_by_code),
            self.missing_count + self.unmatched,
            self.unexpected_keys,
            self.usage,
        )


def error_label(error: object) -> str:
    """``"13 INTERNAL"``: an error's code and name, for counting failures by code."""
    if not isinstance(error, dict):
        return "unknown"
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    status = error.get("status")
    name = status if isinstance(status, str) and status else _GRPC_NAMES.get(code or -1)
    return " ".join(str(part) for part in (code, name) if part is not None) or "unknown"


def key_digest(key: str) -> bytes:
    """128 bits of a key: collisions are out of reach even across billions of keys."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# A key the service turned into a JSON number: reported for keys like "000000", not
# confirmed (nothing in Google's docs or googleapis/python-genai shows it). Whatever it
# does, an answer is never given to the wrong request: a number is matched to the one
# request key that reads as that number (as a double, like protobuf's Struct, which
# keeps numbers as doubles), and left unmatched (reported) when several do ("0", "000").
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_MAX_NUMBER_TEXT = 400
_NUMBER_START = frozenset("-0123456789")


def _numeric_key(value: float) -> float | None:
    """A number as a key: a finite double (-0 is 0), or None."""
    try:
        number = float(value) + 0.0
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def numeric_form(key: str) -> float | None:
    """The number a string key would become if the service wrote it as one, or None."""
    if not key or key[0] not in _NUMBER_START or len(key) > _MAX_NUMBER_TEXT:
        return None  # most keys, at the cost of one comparison
    if not _NUMBER.fullmatch(key):
        return None
    return _numeric_key(float(key))


def number_digest(number: float) -> bytes:
    """128 bits of a numeric key, apart from every string key's (another personalisation)."""
    text = repr(number).encode()
    return hashlib.blake2b(text, digest_size=16, person=b"gba-number").digest()


def _answer_digest(key: str | float) -> bytes:
    return key_digest(key) if isinstance(key, str) else number_digest(key)


# -- building results (blocking; run it in a worker thread) ---------------------------------
@dataclass
class _Tally:
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
) -> tuple[_Tally, Path, Path | None]:
    """Write the results (and failed requests) of ``input_path`` to temporaries of
    ``staging``: (what was found, results temp, failed temp or None).

    Raises :class:`OutputError` when an output line is malformed, ``OSError`` when a
    file cannot be read or written. ``check`` is called now and then (cancellation).

    ``superseding``: the outputs are the jobs of one input's rounds, newest first (see
    ``_remainder``): a request answered in several is no duplicate; its response is
    kept, else its newest error.
    """
    files = _Outputs(outputs, names or [str(p) for p in outputs])
    tally = _Tally()
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
                answers.add(_OUT.pack(_answer_digest(parsed.key), *where))
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
        key = _numeric_key(key)
        if key is None:
            return '"key" is a number too large to match'
    elif key is not None and not isinstance(key, str):
        return '"key" is not a string'
    return OutputLine(key, "error" in obj, obj.get("error"), obj.get("response"))


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)


def _request_key(raw: bytes) -> str | None:
    """The key of an input line, or None (no key, or not a request line at all)."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # a line edited since pre-flight
        return None
    key = obj.get("key") if isinstance(obj, dict) else None
    return key if isinstance(key, str) else None


def _index_inputs(input_path: str, requests: SortedRecords, tally: _Tally, check: Check) -> int:
    """Pass 2: index each keyed request by key; returns how many have a key."""
    keyed = 0
    for position, (_, _, raw) in enumerate(_lines(Path(input_path), check)):
        key = _request_key(raw)
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

    def __init__(self, tally: _Tally) -> None:
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
    tally: _Tally,
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
    tally: _Tally,
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
    files: _Outputs, where: _Where | None, raw: bytes, tally: _Tally
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
    key = _request_key(raw)
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


# -- files beside the results, put in place only when complete ---------------------------------
class Staging:
    """Hidden temporaries in the results folder, named after the results file and the
    process that writes them: renamed into place when complete, removed otherwise."""

    def __init__(self, targets: ResultTargets) -> None:
        self.targets = targets
        self.folder = targets.results.parent
        self.prefix = f".{targets.results.name[:80]}."
        self._temps: list[Path] = []

    def prepare(self) -> None:
        """Create the folder; remove temporaries of processes that are gone (killed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(self.folder):
            name = entry.name
            if name.startswith(self.prefix) and name.endswith(_TEMP_SUFFIX):
                pid = name[len(self.prefix) :].split(".", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def new(self, role: str) -> Path:
        """A new empty temporary (created with the user's umask, like the final file)."""
        name = f"{self.prefix}{os.getpid()}.{secrets.token_hex(4)}.{role}{_TEMP_SUFFIX}"
        path = self.folder / name
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        self._temps.append(path)
        return path

    def commit(self, temp: Path, final: Path) -> None:
        """Put a complete temporary in place (it is fsynced first)."""
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        self._temps.remove(temp)

    def finish(self, results: Path, failed: Path | None, raw: Path | None) -> None:
        """Failed requests (or remove an old file of them), raw output, then results last:
        its presence is what says "done"."""
        if failed is not None:
            self.commit(failed, self.targets.failed)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.targets.failed)
        if raw is not None:
            self.commit(raw, self.targets.raw)
        self.commit(results, self.targets.results)
        fsync_folder(self.folder)

    def discard(self) -> None:
        """Remove every temporary not put in place (on failure or cancellation)."""
        for temp in self._temps:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        self._temps.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# -- the entry point: a succeeded job's output -> results on disk -----------------------------
class SucceededJob(Protocol):
    """What fetching results needs of a job (``JobStatus`` has it)."""

    @property
    def path(self) -> str: ...

    @property
    def batch_name(self) -> str: ...

    @property
    def output_file(self) -> str | None: ...


async def fetch_results(
    api: JobsApi,
    job: SucceededJob | Sequence[SucceededJob],
    targets: ResultTargets,
    *,
    retry: RetrySettings | None = None,
    keep_raw: bool = False,
    limiter: anyio.CapacityLimiter | None = None,
    submitted: Sequence[tuple[int, str]] | None = None,
    superseding: bool = False,
    key_prefix: str | None = None,
) -> ResultFile:
    """Download a succeeded job's output and write its results (see the module doc).

    ``key_prefix``: the job is a pack of several inputs (``_submit/_pack``) and this
    input's requests were sent with keys so prefixed: only their answers are its own.

    ``job`` may be the jobs of every part of a split input, in part order: their
    outputs are merged into one results file in the input's order. With
    ``superseding``, they are the jobs of one input's rounds, newest first (see
    :func:`build_results`); an output that is not there (a job that ended before it
    answered anything) is left out.

    ``submitted`` is (size, sha256) of what each job was made from, as the journal
    records it. When the input no longer holds exactly that, its lines are not what
    was answered: no results are matched to them; the answers (to the requests as
    submitted) are kept as the raw output and the file is an error (see
    :func:`_changed_input`).

    Never raises for a failure of this one file (API, disk, malformed output): the
    returned :class:`ResultFile` carries it in ``error``. Cancellation removes every
    temporary and re-raises. ``limiter`` bounds how many files are built at once
    (each holds a few MiB).
    """
    parts = list(job) if isinstance(job, Sequence) else [job]
    first = parts[0]
    staging = Staging(targets)
    done = ResultFile(first.path, first.batch_name, str(targets.results))
    outputs = [part.output_file for part in parts]
    if not all(outputs):
        return _with(done, error="the job has no output file")
    output_file = ", ".join(name for name in outputs if name)
    raw: Path | None = None
    raws: list[Path] = []
    try:
        await anyio.to_thread.run_sync(staging.prepare)
        names: list[str] = []
        for name in outputs:
            assert name is not None
            raw = await anyio.to_thread.run_sync(staging.new, "raw")
            try:
                await _download(api, retry, name, raw)
            except NotFoundApiError:
                if not superseding:
                    raise
                continue
            raws.append(raw)
            names.append(name)
            if key_prefix is not None:
                raw = await anyio.to_thread.run_sync(_share_of, staging, raw, key_prefix)
                raws[-1] = raw
        tally, results, failed = await anyio.to_thread.run_sync(
            _build_checked,
            targets.input_path,
            raws,
            names,
            staging,
            superseding,
            limiter=limiter,
        )
        change = None
        if submitted is not None:
            change = await anyio.to_thread.run_sync(changed_since, targets.input_path, submitted)
        if (keep_raw or change) and len(raws) > 1:  # a split input: the parts' outputs in order
            raw = await anyio.to_thread.run_sync(_joined, staging, raws)
        if change is not None:
            assert raw is not None
            kept = await anyio.to_thread.run_sync(_keep_raw, staging, raw)
            return _with(done, error=_changed_input(change, tally, kept), raw_path=kept)
        await anyio.to_thread.run_sync(staging.finish, results, failed, raw if keep_raw else None)
    except ApiError as exc:
        return _with(done, error=f"download of {output_file} failed: {describe(exc)}")
    except OutputError as exc:
        kept = await anyio.to_thread.run_sync(_keep_raw, staging, raw) if keep_raw and raw else None
        return _with(done, error=_malformed(exc, kept), problems=_problems(exc), raw_path=kept)
    except OSError as exc:
        return _with(done, error=_describe_os_error(exc))
    finally:
        staging.discard()
    return _result_file(done, tally, targets, failed is not None, keep_raw)


def _share_of(staging: Staging, packed: Path, prefix: str) -> Path:
    """This input's share of a packed job's output, in a temporary of its own."""
    share = staging.new("raw")
    member_output(packed, share, prefix)
    return share


def changed_since(input_path: str, submitted: Sequence[tuple[int, str]]) -> str | None:
    """How the input differs from what was submitted (each part's size and sha256, in
    order: the parts are consecutive byte ranges of it), or None when it is the same."""
    expected = sum(size for size, _ in submitted)
    with open(input_path, "rb") as handle:
        now = os.fstat(handle.fileno()).st_size
        if now != expected:
            return f"{now} bytes now, {expected} submitted"
        for size, sha256 in submitted:
            hasher = hashlib.sha256()
            left = size
            while left and (chunk := handle.read(min(left, _WRITE_BUFFER))):
                hasher.update(chunk)
                left -= len(chunk)
            if left or hasher.hexdigest() != sha256:
                return "sha256 differs"
    return None


def _changed_input(change: str, tally: _Tally, kept: str | None) -> str:
    """An input edited after submission: what is known, and what is kept."""
    line = f"changed since it was submitted ({change}): no results are matched to its new lines"
    if not tally.keyless:
        line += (
            f" ({tally.unknown} answered keys are no longer in it,"
            f" {tally.missing + tally.unmatched} of its requests have no answer)"
        )
    where = f"kept in {kept}" if kept else "not kept (the results folder cannot be written)"
    return (
        f"{line}; the answers to the requests as submitted are {where}; "
        "restore the file and download again, or submit it again"
    )


def _joined(staging: Staging, raws: list[Path]) -> Path:
    joined = staging.new("raw")
    with joined.open("wb") as target:
        for raw in raws:
            with raw.open("rb") as source:
                shutil.copyfileobj(source, target, 1 << 20)
    return joined


async def _download(api: JobsApi, retry: RetrySettings | None, name: str, target: Path) -> None:
    await call_with_retries(retry or RetrySettings(), lambda: api.download_file(name, str(target)))


def _build_checked(
    input_path: str, raws: list[Path], names: list[str], staging: Staging, superseding: bool
) -> tuple[_Tally, Path, Path | None]:
    return build_results(
        input_path,
        raws,
        staging,
        names=names,
        check=anyio.from_thread.check_cancelled,
        superseding=superseding,
    )


def _malformed(exc: OutputError, kept: str | None) -> str:
    total = len(exc.problems) + exc.more
    first = exc.problems[0]
    noun = "line" if total == 1 else "lines"
    hint = f"; it is kept in {kept}" if kept else "; download again with --keep-raw to inspect it"
    # The first line's number and reason here too: run shows this one line (no list).
    shown = f"{first.path}:{first.line}: {first.message}" + ("" if total == 1 else ", ...")
    return f"{total} malformed {noun} in {first.path} ({shown}), no results written{hint}"


def _problems(exc: OutputError) -> tuple[str, ...]:
    more = (f"... and {exc.more} more",) if exc.more else ()
    return tuple(str(p) for p in exc.problems) + more


def _keep_raw(staging: Staging, raw: Path) -> str | None:
    try:
        staging.commit(raw, staging.targets.raw)
    except OSError:
        return None
    return str(staging.targets.raw)


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _with(result: ResultFile, **changes: Any) -> ResultFile:
    return replace(result, **changes)


def _result_file(
    done: ResultFile, tally: _Tally, targets: ResultTargets, any_failed: bool, keep_raw: bool
) -> ResultFile:
    return _with(
        done,
        responses=tally.responses,
        errors=tally.errors,
        missing_keys=tuple(tally.missing_keys),
        unexpected_keys=tally.unknown,
        ambiguous_keys=tally.ambiguous,
        missing_count=tally.missing,
        requests=tally.requests,
        failed_path=str(targets.failed) if any_failed else None,
        failed_by_code=dict(sorted(tally.failed_by_code.items())),
        unknown_keys=tuple(tally.unknown_keys),
        unmatched=tally.unmatched,
        duplicates=tally.duplicates,
        keyless=tally.keyless,
        raw_path=str(targets.raw) if keep_raw else None,
        usage=tally.usage.usage(),
    )
