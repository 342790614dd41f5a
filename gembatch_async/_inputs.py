"""Find, stat, hash, count and validate JSONL inputs. No network.

Every file is read once, streaming, in a worker thread: memory stays flat in the
file's size (one line at a time; request keys are checked for duplicates by an
external sort of their hashes, see ``_keysort``) and the event loop is never
blocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio
import anyio.to_thread

from ._errors import InputChangedError, Problem, UsageError
from ._keysort import SortedHashes, repeated
from ._names import display_path
from ._schema import GENERATE, KIND_FIELDS, MISSING, check_request, request_kind
from ._settings import MAX_INPUT_BYTES, VERTEX_MAX_INPUT_BYTES, VERTEX_MAX_REQUESTS
from ._vertex_import import TableImport

#: Beyond this many problems in one file the rest are summarised in one line.
MAX_PROBLEMS_PER_FILE = 20
_READ_SIZE = 1 << 20
#: Linux and macOS name open descriptors as files; elsewhere uploads go by path.
_HAS_DEV_FD = os.path.isdir("/dev/fd")


@dataclass(frozen=True)
class Fingerprint:
    """Which file, in which version: what the upload checks it still has."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> Fingerprint:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class JobLimits:
    """What one batch job may take; a larger input is split into parts at line boundaries."""

    #: Bytes of JSONL per job (the Batch API refuses input files over 2 GB).
    max_bytes: int = MAX_INPUT_BYTES
    #: Requests per job, for users whose token quota is the tighter limit.
    max_requests: int | None = None

    @classmethod
    def of(cls, max_bytes: int | None, max_requests: int | None, *, vertex: bool) -> JobLimits:
        """What the user asked (None: the backend's limit), never past the backend's limit:
        Vertex takes 1 GB and 200,000 requests a job, the Batch API 2 GB."""
        if not vertex:
            return cls(MAX_INPUT_BYTES if max_bytes is None else max_bytes, max_requests)
        if max_bytes is not None and max_bytes > VERTEX_MAX_INPUT_BYTES:
            raise UsageError(
                f"--max-bytes-per-job: at most {VERTEX_MAX_INPUT_BYTES} bytes (1GB) on the "
                "Vertex backend, its limit for one input file"
            )
        if max_requests is not None and max_requests > VERTEX_MAX_REQUESTS:
            raise UsageError(
                f"--max-requests-per-job: at most {VERTEX_MAX_REQUESTS:,} on the Vertex "
                "backend, its limit for one job"
            )
        return cls(
            VERTEX_MAX_INPUT_BYTES if max_bytes is None else max_bytes,
            VERTEX_MAX_REQUESTS if max_requests is None else max_requests,
        )


@dataclass(frozen=True)
class Part:
    """One part of a split input: a byte range of whole lines, its own job."""

    number: int
    of: int
    start: int
    end: int
    count: int
    sha256: str


class Selection(Protocol):
    """Some requests of an input, sent as their own job (``_results._remainder``)."""

    def copy(self, source: int, target: int, name: str) -> None:
        """Write the selected lines of the input open at ``source`` to ``target``."""
        ...

    def line_fields(self, identity: str, input_sha256: str) -> dict[str, Any]:
        """What the job's journal line records of the selection."""
        ...


@dataclass(frozen=True)
class InputFile:
    """One input that passed pre-flight, with what was learned reading it."""

    path: str
    size_bytes: int
    sha256: str
    count: int
    #: The file as it was read; None only for inputs made without reading a file.
    fingerprint: Fingerprint | None = None
    #: The identity the journal knows it by (see ``_identity``); set by submit.
    identity: str = ""
    #: GENERATE (batchGenerateContent) or EMBED (asyncBatchEmbedContent), from its requests.
    kind: str = GENERATE
    #: The parts it is split into (over JobLimits), or () when it fits one job.
    parts: tuple[Part, ...] = ()
    #: For one part of a split input (see :meth:`units`): which part this is.
    part: Part | None = None
    #: The limits its parts were cut by (None when it fits one job).
    limits: JobLimits | None = None
    #: For one part: the sha256 of the whole input (``sha256`` is the part's).
    input_sha256: str = ""
    #: Only these requests of the input are sent (its unanswered ones); ``sha256``,
    #: ``size_bytes`` and ``count`` are then the selection's.
    selection: Selection | None = None

    @property
    def key(self) -> str:
        """The journal's key: the identity, and for a part its number (``ID#2/3``)."""
        return (
            self.identity
            if self.part is None
            else part_key(self.identity, self.part.number, self.part.of)
        )

    @property
    def label(self) -> str:
        """The path as shown: a part says which it is."""
        return (
            self.path
            if self.part is None
            else f"{self.path} (part {self.part.number}/{self.part.of})"
        )

    def units(self) -> list[InputFile]:
        """What is submitted: the file itself, or each of its parts as one job."""
        if not self.parts:
            return [self]
        return [
            replace(
                self,
                size_bytes=p.end - p.start,
                sha256=p.sha256,
                count=p.count,
                parts=(),
                part=p,
                input_sha256=self.sha256,
            )
            for p in self.parts
        ]


def part_key(identity: str, number: int, of: int) -> str:
    return f"{identity}#{number}/{of}"


class _Splitter:
    """Cuts a file into parts at line boundaries as it is read: no part held in memory."""

    def __init__(self, limits: JobLimits) -> None:
        self.limits = limits
        self.spans: list[tuple[int, int, int, str]] = []
        self.start = self.offset = self.count = 0
        self.hasher = hashlib.sha256()
        #: The first line that alone is over the byte limit (it cannot go in any job).
        self.too_big_line: int | None = None

    def add(self, number: int, raw: bytes) -> None:
        request = bool(raw.strip())
        full = self.offset - self.start + len(raw) > self.limits.max_bytes or (
            request
            and self.limits.max_requests is not None
            and self.count >= self.limits.max_requests
        )
        if full and self.count:
            self._close()
        if len(raw) > self.limits.max_bytes and self.too_big_line is None:
            self.too_big_line = number
        self.hasher.update(raw)
        self.offset += len(raw)
        self.count += request

    def _close(self) -> None:
        self.spans.append((self.start, self.offset, self.count, self.hasher.hexdigest()))
        self.start, self.count, self.hasher = self.offset, 0, hashlib.sha256()

    def parts(self) -> tuple[Part, ...]:
        """The parts, or () when the whole file fits one job."""
        if self.count or not self.spans:
            self._close()
        if len(self.spans) == 1:
            return ()
        total = len(self.spans)
        return tuple(Part(i + 1, total, *span) for i, span in enumerate(self.spans))


def normalise_path(path: str | os.PathLike[str]) -> str:
    """The path as given, normalised, so ``./a.jsonl`` and ``a.jsonl`` are one file."""
    text = os.fspath(path)
    # Only these spellings change under normpath; the check spares a 50 000-line
    # journal as many normpath calls.
    if text and not (text.startswith(".") or "/." in text or "//" in text or text.endswith("/")):
        return text
    return os.path.normpath(text)


def unique_paths(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Normalised paths in first-seen order, each once."""
    return list(dict.fromkeys(normalise_path(p) for p in paths))


@contextlib.asynccontextmanager
async def open_as_checked(item: InputFile) -> AsyncIterator[str]:
    """A path to exactly the bytes pre-flight read, for the SDK to upload from.

    The file is opened here and compared with what pre-flight saw (device, inode,
    size, mtime); the path yielded is ``/dev/fd/N`` for that descriptor. So the
    upload reads this very file even if its name is replaced meanwhile, and the
    file name the SDK puts in an HTTP header is plain ASCII, whatever the user's
    file is called (httpx refuses non-ASCII header values). For one part of a split
    input, the part's bytes are copied from that descriptor to a temporary file (one
    part at most, checked against the part's sha256 as they are copied), removed
    afterwards. Raises :class:`InputChangedError` when the file vanished or changed
    since pre-flight, or changed while it was open.
    """
    try:
        fd = os.open(item.path, os.O_RDONLY)
    except OSError as exc:
        reason = "vanished" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise InputChangedError(
            f"{display_path(item.path)}: {reason} since pre-flight; not submitted"
        ) from exc
    try:
        _require_unchanged(item, fd, "since pre-flight")
        async with _source_path(item, fd) as source:
            try:
                yield source
            except Exception:
                # A file rewritten mid-upload makes the service refuse it ("exceeds the
                # declared size"): the change is the reason worth reporting.
                _require_unchanged(item, fd, "while it was being uploaded")
                raise
        _require_unchanged(item, fd, "while it was being uploaded")
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def _source_path(item: InputFile, fd: int) -> AsyncIterator[str]:
    if item.selection is not None:
        async with _selected_copy(item, item.selection, fd) as path:
            yield path
        return
    if item.part is None:
        yield f"/dev/fd/{fd}" if _HAS_DEV_FD else item.path
        return
    handle, temp = tempfile.mkstemp(prefix="gembatch-part-", suffix=".jsonl")
    try:
        await anyio.to_thread.run_sync(_copy_part, fd, handle, item)
        yield temp
    finally:
        os.close(handle)
        with contextlib.suppress(OSError):
            os.unlink(temp)


@contextlib.asynccontextmanager
async def _selected_copy(item: InputFile, selection: Selection, fd: int) -> AsyncIterator[str]:
    """The selected lines in a temporary file (TMPDIR), removed afterwards."""
    handle, temp = tempfile.mkstemp(prefix="gembatch-requests-", suffix=".jsonl")
    try:
        await anyio.to_thread.run_sync(selection.copy, fd, handle, item.path)
        yield temp
    finally:
        os.close(handle)
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _copy_part(source: int, target: int, item: InputFile) -> None:
    """Copy one part's byte range, streaming, and check it is what pre-flight hashed."""
    assert item.part is not None
    hasher = hashlib.sha256()
    offset, end = item.part.start, item.part.end
    while offset < end:
        chunk = os.pread(source, min(_READ_SIZE, end - offset), offset)
        if not chunk:
            break
        hasher.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]
        offset += len(chunk)
    if hasher.hexdigest() != item.part.sha256:
        raise InputChangedError(
            f"{display_path(item.label)}: changed since pre-flight; not submitted"
        )


def _require_unchanged(item: InputFile, fd: int, when: str) -> None:
    if item.fingerprint is not None and Fingerprint.of(os.fstat(fd)) != item.fingerprint:
        raise InputChangedError(
            f"{display_path(item.path)}: changed {when}; not submitted (run submit again)"
        )


def check_regular_file(path: str) -> Problem | None:
    """A problem when the path is missing, not a regular file, or unreadable."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return Problem(path, "no such file")
    except OSError as exc:
        return Problem(path, f"cannot stat: {exc.strerror}")
    if stat.S_ISDIR(mode):
        return Problem(path, "is a directory, not a JSONL file")
    if not stat.S_ISREG(mode):
        return Problem(path, "is not a regular file")
    if not os.access(path, os.R_OK):
        return Problem(path, "is not readable (permission denied)")
    return None


class _Validator:
    """Checks request lines one by one and remembers what it needs for the end."""

    def __init__(self, path: str, schema_check: bool = True, table_import: bool = False) -> None:
        self.path = path
        self.schema_check = schema_check
        #: Vertex: the rules of the table import that would fail the whole job.
        self.table = TableImport() if table_import else None
        self.problems: list[Problem] = []
        self.suppressed = 0
        self.count = 0
        self.key_hashes = SortedHashes()
        #: The file's kind, from its first request that has one, and that line.
        self.kind: str | None = None
        self.kind_line = 0

    def add_problem(self, line: int, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS_PER_FILE:
            self.problems.append(Problem(self.path, message, line))
        else:
            self.suppressed += 1

    def check_line(self, number: int, raw: bytes) -> None:
        if not raw.strip():
            return
        self.count += 1
        if number == 1 and raw.startswith(_UTF8_BOM):
            self.add_problem(
                number,
                "starts with a UTF-8 byte order mark (BOM): save the file as UTF-8 without one",
            )
            return
        try:
            obj = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            self.add_problem(number, f"not valid JSON ({_short_json_error(exc)})")
            return
        if not isinstance(obj, dict):
            self.add_problem(number, f"expected a JSON object, got {type(obj).__name__}")
            return
        request = obj.get("request")
        if request is None:
            self.add_problem(number, 'missing "request" object')
        elif not isinstance(request, dict):
            self.add_problem(number, '"request" must be a JSON object')
        else:
            self.check_request(number, request)
        if "key" in obj:
            self.check_key(number, obj["key"])
        if self.table is not None:
            for issue in self.table.check(number, obj):
                self.add_problem(number, f"{issue.path}: {issue.reason}")

    def finish(self) -> None:
        """What only the whole file shows (after its last line)."""
        issue = self.table.finish() if self.table is not None else None
        if issue is not None:
            self.problems.append(Problem(self.path, issue.reason))

    def check_request(self, number: int, request: dict[str, object]) -> None:
        """One kind per file (one batch job runs one method), and the API's schema."""
        kind = request_kind(request)
        if kind is not None and self.kind is None:
            self.kind, self.kind_line = kind, number
        elif kind is not None and kind != self.kind:
            self.add_problem(
                number,
                f'request: a {kind} request (it has "{KIND_FIELDS[kind]}"), but line '
                f"{self.kind_line} is a {self.kind} request: a batch holds one kind",
            )
            return
        if not self.schema_check:
            return
        if kind is None:
            self.add_problem(
                number, 'request: needs "contents" (to generate) or "content" (to embed)'
            )
        for issue in check_request(request, kind or self.kind or GENERATE):
            if kind is None and issue.problem == MISSING:
                continue  # said above, for both kinds
            self.add_problem(number, f"request.{issue.written_path()}: {issue.reason()}")

    def check_key(self, number: int, key: object) -> None:
        if not isinstance(key, str):
            self.add_problem(number, '"key" must be a string')
            return
        self.key_hashes.add(key_hash(key))


_UTF8_BOM = b"\xef\xbb\xbf"


def _refuse_constant(name: str) -> object:
    """NaN and the infinities are not JSON (RFC 8259); Python's parser takes them by default."""
    raise ValueError(f"{name} is not valid JSON (RFC 8259 has no NaN or Infinity)")


def _short_json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)


def key_hash(key: str) -> int:
    """A stable 64-bit hash of a request key: 8 bytes a key instead of the key itself."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _duplicate_keys(path: str, key_hashes: SortedHashes) -> list[Problem]:
    """Problems for keys seen twice; a second pass names them, only when there are any."""
    suspects = repeated(key_hashes, MAX_PROBLEMS_PER_FILE * 4)
    if not suspects:
        return []
    first_line: dict[str, int] = {}
    problems: list[Problem] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            key = _key_of(raw)
            if key is None or key_hash(key) not in suspects:
                continue
            if key in first_line:
                problems.append(
                    Problem(
                        path, f"duplicate key {key!r} (first on line {first_line[key]})", number
                    )
                )
            else:
                first_line[key] = number
    return problems[:MAX_PROBLEMS_PER_FILE]


def _key_of(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    key = obj.get("key") if isinstance(obj, dict) else None
    return key if isinstance(key, str) else None


def scan_file(
    path: str,
    limits: JobLimits | None = None,
    *,
    checked: bool = False,
    schema_check: bool = True,
    table_import: bool = False,
) -> tuple[InputFile | None, list[Problem]]:
    """Read one file once: hash, count, validate it, and plan its parts if it is over
    ``limits``. Blocking; run it in a thread.

    ``checked``: :func:`check_regular_file` already passed for this path.
    ``schema_check``: check each request against the API's schema (``_schema``).
    ``table_import``: check the lines as Vertex imports them (``_vertex_import``).
    """
    splitter = _Splitter(limits or JobLimits())
    problem = None if checked else check_regular_file(path)
    if problem is not None:
        return None, [problem]
    hasher = hashlib.sha256()
    validator = _Validator(path, schema_check, table_import)
    try:
        with open(path, "rb", buffering=_READ_SIZE) as handle:
            before = Fingerprint.of(os.fstat(handle.fileno()))
            size = before.size
            for number, raw in enumerate(handle, start=1):
                hasher.update(raw)
                splitter.add(number, raw)
                validator.check_line(number, raw)
            if Fingerprint.of(os.fstat(handle.fileno())) != before:
                return None, [Problem(path, "changed while it was being read; try again")]
    except OSError as exc:
        return None, [Problem(path, f"cannot read: {exc.strerror or exc}")]
    validator.finish()
    with validator.key_hashes:
        problems = validator.problems + _duplicate_keys(path, validator.key_hashes)
    if validator.suppressed:
        problems.append(Problem(path, f"... and {validator.suppressed} more problems"))
    if validator.count == 0:
        problems.append(Problem(path, "is empty: no request lines"))
    if splitter.too_big_line is not None:
        problems.append(
            Problem(
                path,
                f"this line alone is over {splitter.limits.max_bytes} bytes, more than one job may take",
                splitter.too_big_line,
            )
        )
    if problems:
        return None, problems
    kind = validator.kind or GENERATE
    item = InputFile(path, size, hasher.hexdigest(), validator.count, before, kind=kind)
    parts = splitter.parts()
    return replace(item, parts=parts, limits=splitter.limits if parts else None), []


def _scan_many(
    paths: list[str], schema_check: bool, limits: JobLimits, table_import: bool
) -> list[tuple[InputFile | None, list[Problem]]]:
    return [
        scan_file(path, limits, checked=True, schema_check=schema_check, table_import=table_import)
        for path in paths
    ]


async def scan_inputs(
    paths: Sequence[str],
    limiter: anyio.CapacityLimiter,
    *,
    schema_check: bool = True,
    limits: JobLimits | None = None,
    table_import: bool = False,
) -> tuple[dict[str, InputFile], list[Problem]]:
    """Scan paths that passed :func:`check_regular_file` in worker threads.

    Small files go to a thread in groups (one hop per file costs more than
    reading it); with few files, each gets its own thread so big ones hash in
    parallel.
    """
    found: dict[str, InputFile] = {}
    problems: dict[str, list[Problem]] = {}
    size = max(1, -(-len(paths) // (4 * int(limiter.total_tokens))))
    groups = [list(paths[i : i + size]) for i in range(0, len(paths), size)]

    async def scan_group(group: list[str]) -> None:
        results = await anyio.to_thread.run_sync(
            _scan_many,
            group,
            schema_check,
            limits or JobLimits(),
            table_import,
            limiter=limiter,
        )
        for path, (item, file_problems) in zip(group, results, strict=True):
            if item is not None:
                found[path] = item
            problems[path] = file_problems

    async with anyio.create_task_group() as tg:
        for group in groups:
            tg.start_soon(scan_group, group)
    ordered = [p for path in paths for p in problems.get(path, [])]
    return found, ordered
