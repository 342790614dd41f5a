"""job-info.jsonl: one JSON line per created batch job, shared safely between processes.

- Appends are one ``write`` of whole lines on an O_APPEND descriptor, under an
  exclusive lock, then ``fsync``: a crash can tear only the last line, and the
  next reader repairs that (and says so).
- Lines that cannot be parsed elsewhere are reported with their number and kept
  verbatim by any rewrite.
- Rewrites re-read under the lock, go through a temporary file, fsync and an
  atomic rename, so lines appended meanwhile by another process are not lost.
- Cross-process claims on single inputs use POSIX record locks on one lock
  file: the kernel drops them when a process dies, so a crash never leaves a
  stale lock behind (the original gembatch's did). The lock file also holds the
  journal's scope id (see ``_identity``), written once, before any upload.
- Nothing of the user's is damaged: a file that is not a journal (a request
  JSONL given by mistake, ``/dev/null``) is refused before anything is written,
  a read-only open (``--dry-run``) writes nothing at all, and a rewrite keeps the
  file's permission bits and owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .._durable import fsync_folder
from .._errors import JournalError
from .._events import JournalProblem
from .._identity import (
    derived_scope_id,
    journal_root,
    journal_roots,
)
from ._locks import (
    _CLAIM_POLL_MAX,
    _acquire_lock_file,
    _claim_slot,
    _LockFile,
    _release_lock_file,
)
from ._records import (
    _JOB_LINE_START,
    _is_torn_job_line,
    _parse_line,
    _parse_lines,
)
from ._records import (
    JobLine as JobLine,
)
from ._records import (
    batch_name_of as batch_name_of,
)
from ._records import (
    batch_state_of as batch_state_of,
)
from ._records import (
    encode_line as encode_line,
)
from ._records import (
    input_sha256_of as input_sha256_of,
)
from ._records import (
    is_round_line as is_round_line,
)
from ._records import (
    keys_sha256 as keys_sha256,
)
from ._records import (
    unit_sha256_of as unit_sha256_of,
)
from ._view import (
    JournalView as JournalView,
)

#: A file whose first this-many lines hold no job record is not a journal.
_SNIFF_LINES = 100


def peek_lines(path: str | os.PathLike[str]) -> list[JobLine]:
    """The job lines a journal holds, read once without its lock: a peek for choices made
    before a command opens the journal (e.g. which backends its jobs are on). A line that
    is not a job line is left out, for the command's own open to report; no file, none."""
    try:
        raws = Path(path).read_bytes().splitlines()
    except OSError:
        return []
    return [line for line in _parse_lines(raws) if isinstance(line, dict)]


@dataclass(frozen=True)
class Appended:
    """Where an append landed: byte span and the file's identity."""

    start: int
    end: int
    inode: int


class Journal:
    """The job-info journal at ``path`` and its lock file beside it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        #: As the user named it, for messages.
        self.given = os.fspath(path)
        # A symlinked journal is written through to its target, never replaced by a copy.
        self.path = Path(os.path.realpath(path))
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        # Named, not resolved: a journal moved with a symlink left keeps its identities.
        self.root = journal_root(self.given)
        self.roots = journal_roots(self.given)
        self._lock: _LockFile | None = None
        self._view = self._new_view()
        #: The id every server-side name of this journal carries (None when read-only).
        self.scope_id: str | None = None

    # -- lifecycle -----------------------------------------------------------
    def open(self, *, read_only: bool = False) -> JournalView:
        """Check it is a journal, take the lock file, repair a torn tail, read it. Blocking.

        ``read_only`` (a dry run): nothing is created, repaired or locked.
        """
        self._refuse_if_not_a_journal()
        if read_only:
            self._view = self._new_view(self._torn_tail_notice())
            self._read_from(0)
            return self._view
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _acquire_lock_file(self.lock_path)
        except OSError as exc:
            raise JournalError(f"cannot open {self.lock_path}: {exc.strerror}") from exc
        problems = self._repair_torn_tail()
        self._view = self._new_view(problems)
        self._read_from(0)
        self.scope_id = self._settle_scope_id(self._view.recorded_scope_id)
        return self._view

    def _new_view(self, problems: list[JournalProblem] | None = None) -> JournalView:
        return JournalView(root=self.root, roots=self.roots, problems=problems or [])

    def close(self) -> None:
        if self._lock is not None:
            _release_lock_file(self._lock)
            self._lock = None

    # -- what the file is ----------------------------------------------------
    def _refuse_if_not_a_journal(self) -> None:
        """Refuse a path that is not a regular file, or whose lines are not job records.

        Read before anything is written: a request JSONL passed as ``--job-info``
        must come out byte for byte as it went in.
        """
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise JournalError(f"cannot read {self.given}: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise JournalError(f"{self.given} is not a regular file; a journal must be one")
        reason = self._why_not_a_journal()
        if reason is not None:
            raise JournalError(
                f"{self.given} is not a gembatch journal ({reason}); refusing to use it: "
                "pass --job-info with a journal or a new file name"
            )

    def _why_not_a_journal(self) -> str | None:
        """None if the file is empty or holds a job record; else what its first line is.

        Reads only as far as the first job record: a real journal is told from
        its first line.
        """
        first_reason: str | None = None
        number = 0
        try:
            with open(self.path, "rb") as handle:
                for raw in handle:
                    number += 1
                    if not raw.strip():
                        continue
                    torn = not raw.endswith(b"\n")  # a torn last line: ours if it starts as ours
                    if torn and first_reason is None and raw.lstrip().startswith(_JOB_LINE_START):
                        return None
                    parsed = _parse_line(raw)
                    if isinstance(parsed, dict):
                        return None
                    if first_reason is None:
                        first_reason = f"line {number}: {parsed}"
                    if number >= _SNIFF_LINES:
                        break
        except OSError as exc:
            raise JournalError(f"cannot read {self.given}: {exc.strerror}") from exc
        return first_reason

    def _torn_tail_notice(self) -> list[JournalProblem]:
        """A read-only open leaves a torn tail alone, but says so."""
        try:
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - 1))
                if size == 0 or handle.read(1) == b"\n":
                    return []
                lines = self._count_lines_before(handle, size) + 1
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise JournalError(f"cannot read {self.given}: {exc.strerror}") from exc
        return [
            JournalProblem(
                self.given, lines, "last line is unfinished; left as it is (read-only run)"
            )
        ]

    def _settle_scope_id(self, recorded: str | None) -> str:
        """The journal's scope id: kept in the lock file, else the journal's, else derived.

        Written under the journal lock before any upload, so a crash after an
        upload and before the first line still finds that upload's name again.
        """
        lock = self._require_lock()
        with self._locked():
            stored = os.pread(lock.fd, 256, 0).decode("ascii", "replace").strip()
            if stored.isalnum():
                return stored
            scope_id = recorded if recorded and recorded.isalnum() else derived_scope_id(self.path)
            try:
                os.ftruncate(lock.fd, 0)
                _write_all_at(lock.fd, scope_id.encode() + b"\n")
                os.fsync(lock.fd)
            except OSError as exc:
                raise JournalError(f"cannot write {self.lock_path}: {exc.strerror}") from exc
            return scope_id

    # -- locking -------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The whole-journal lock (byte 0 of the lock file): threads, then processes."""
        lock = self._require_lock()
        with lock.mutex:
            fcntl.lockf(lock.fd, fcntl.LOCK_EX, 1, 0)
            try:
                yield
            finally:
                fcntl.lockf(lock.fd, fcntl.LOCK_UN, 1, 0)

    def _require_lock(self) -> _LockFile:
        if self._lock is None:
            raise JournalError(f"journal {self.given} is not open")
        return self._lock

    def try_claim(self, identity: str) -> bool:
        """Claim one input without waiting; False if this or another process holds it."""
        lock = self._require_lock()
        if identity in lock.claimed:
            return False
        try:
            fcntl.lockf(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _claim_slot(identity))
        except OSError:
            return False
        lock.claimed.add(identity)
        return True

    def release_claim(self, identity: str) -> None:
        lock = self._lock
        if lock is not None and identity in lock.claimed:
            lock.claimed.discard(identity)
            fcntl.lockf(lock.fd, fcntl.LOCK_UN, 1, _claim_slot(identity))

    @contextlib.asynccontextmanager
    async def claim(self, identity: str) -> AsyncIterator[None]:
        """Hold the input ``identity`` against other tasks and processes, waiting if needed."""
        delay = 0.02
        while not self.try_claim(identity):
            await anyio.sleep(delay)
            delay = min(delay * 2, _CLAIM_POLL_MAX)
        try:
            yield
        finally:
            self.release_claim(identity)

    # -- reading -------------------------------------------------------------
    def _repair_torn_tail(self) -> list[JournalProblem]:
        """Cut a last line that a crash left unfinished; report it once."""
        with self._locked():
            try:
                with open(self.path, "rb+") as handle:
                    return self._cut_torn_tail(handle)
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise JournalError(f"cannot read {self.given}: {exc.strerror}") from exc

    def _cut_torn_tail(self, handle: Any) -> list[JournalProblem]:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return []
        start = max(0, size - (1 << 16))
        while True:
            handle.seek(start)
            tail = handle.read(size - start)
            if tail.endswith(b"\n"):
                return []
            cut = tail.rfind(b"\n")
            if cut >= 0 or start == 0:
                break
            start = max(0, start - (1 << 16))
        line_start = start + cut + 1
        fragment = tail[cut + 1 :]
        line_number = self._count_lines_before(handle, line_start) + 1
        if _is_torn_job_line(fragment):
            handle.truncate(line_start)
            message = f"removed an unfinished last line ({len(fragment)} bytes) left by a crash"
        else:  # a whole line that only lacked its newline, or someone else's text: keep it
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
            message = "last line had no newline; added one"
        handle.flush()
        os.fsync(handle.fileno())
        return [JournalProblem(self.given, line_number, message)]

    @staticmethod
    def _count_lines_before(handle: Any, offset: int) -> int:
        handle.seek(0)
        return int(handle.read(offset).count(b"\n"))

    def _read_from(self, offset: int) -> None:
        """Fold complete lines from ``offset`` into the view."""
        try:
            with open(self.path, "rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise JournalError(f"cannot read {self.given}: {exc.strerror}") from exc
        end = data.rfind(b"\n") + 1  # an unfinished line is another writer's, mid-append
        view = self._view
        for parsed in _parse_lines(data[:end].splitlines()):
            view.lines_read += 1
            if parsed is None:
                continue
            if isinstance(parsed, str):
                view.problems.append(
                    JournalProblem(self.given, view.lines_read, f"{parsed}; line skipped")
                )
            else:
                view.add(parsed)
        view.offset = offset + end
        view.inode = inode

    def refresh(self) -> JournalView:
        """Fold in lines other processes appended since the last read. Cheap when none."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return self._view
        view = self._view
        if info.st_ino != view.inode or info.st_size < view.offset:  # replaced by a rewrite
            self._view = self._new_view(view.problems)
            self._read_from(0)
        elif info.st_size > view.offset:
            self._read_from(view.offset)
        return self._view

    # -- writing -------------------------------------------------------------
    def append(self, lines: list[JobLine]) -> Appended:
        """Append job lines durably: one write, one fdatasync, under the lock. Blocking.

        If the file does not end with a newline (another writer died mid-line),
        a newline goes first, so the fragment stays a line of its own (reported
        on reading) instead of swallowing ours.
        """
        data = b"".join(encode_line(line) for line in lines)
        try:
            with self._locked():
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    info = os.fstat(fd)
                    if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
                        _write_all(fd, b"\n")
                    start = os.fstat(fd).st_size
                    _write_all(fd, data)
                    _sync_data(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise JournalError(f"cannot append to {self.given}: {exc.strerror}") from exc
        return Appended(start, start + len(data), info.st_ino)

    def note_appended(self, lines: list[JobLine], where: Appended) -> None:
        """Fold our own append into the view, unless others wrote too (then refresh reads it)."""
        view = self._view
        if where.start == view.offset and where.inode == view.inode:
            for line in lines:
                view.lines_read += 1
                view.add(line)
            view.offset = where.end

    def record(self, lines: list[JobLine]) -> None:
        """Append and fold in, in one call (for callers outside the event loop)."""
        self.note_appended(lines, self.append(lines))

    def rewrite(self, transform: Callable[[JobLine], JobLine]) -> None:
        """Apply ``transform`` to every job line, atomically; unreadable lines kept as they are."""
        with self._locked():
            try:
                raw_lines = self.path.read_bytes().splitlines(keepends=True)
            except FileNotFoundError:
                return
            out = [self._transform_raw(raw, transform) for raw in raw_lines]
            self._replace_atomically(b"".join(out))
            self._view = self._new_view()
            self._read_from(0)

    @staticmethod
    def _transform_raw(raw: bytes, transform: Callable[[JobLine], JobLine]) -> bytes:
        parsed = _parse_line(raw)
        if isinstance(parsed, str):
            return raw if raw.endswith(b"\n") else raw + b"\n"
        return encode_line(transform(parsed))

    def _replace_atomically(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                _copy_mode_and_owner(self.path, handle.fileno())
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            fsync_folder(self.path.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _write_all_at(fd: int, data: bytes, offset: int = 0) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_data(fd: int) -> None:
    """fdatasync where there is one: it also flushes the size, which is all an append changes."""
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


def _copy_mode_and_owner(original: Path, fd: int) -> None:
    """The replacement keeps the journal's permission bits and, where allowed, its owner."""
    try:
        info = os.stat(original)
    except FileNotFoundError:
        return
    os.fchmod(fd, stat.S_IMODE(info.st_mode))
    with contextlib.suppress(PermissionError):
        os.fchown(fd, info.st_uid, info.st_gid)
