"""The one task group of submit: inputs -> upload -> create -> journal, under a limiter.

Each file's worker claims its input against other processes, decides whether
the journal already covers it, uploads (or reuses an upload an earlier attempt
left), creates the batch (or adopts one an ambiguous earlier attempt created),
and hands the outcome to the single journal writer. Whatever fails, and also
under cancellation, a shielded and bounded cleanup either records the batch
that was created or deletes the upload that no batch uses.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from google.genai import types

from ._client import GeminiApi, batch_to_dict
from ._errors import (
    AlreadyExistsApiError,
    AmbiguousApiError,
    ApiError,
    NotFoundApiError,
    PermanentApiError,
    TransientApiError,
    single_error,
)
from ._events import (
    CleanupFailed,
    Event,
    EventHandler,
    FileFailed,
    FileSkipped,
    FileSubmitted,
    Retrying,
)
from ._inputs import InputFile
from ._journal import JobLine, Journal, batch_name_of, batch_state_of
from ._retry import OnRetry, call_with_retries, describe
from ._settings import SubmitSettings

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

T = TypeVar("T")

#: Recorded states after which --retry-failed submits the file again.
RETRYABLE_END_STATES = frozenset({"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})
#: An upload this close to its 48 h expiry is replaced rather than reused.
MIN_REUSE_LIFETIME_S = 3600.0
_MAX_DISPLAY_PATH = 400
#: The longest a sent create is waited for, even under cancellation.
CREATE_WAIT_SECONDS = 60.0
#: How long after a cut-off upload the cleanup looks again for a late-finishing file.
LATE_UPLOAD_GRACE_SECONDS = 0.5
_WRITER_BUFFER = 64


@dataclass(frozen=True)
class Submission:
    """One file to submit, with the identity the server will know it by."""

    item: InputFile
    #: Upload id chosen by us: the same path and content always map to it, so a
    #: repeated or retried upload is found by its name (a 409 on upload).
    upload_id: str
    #: Batch display name carrying the submission id, so an ambiguous create is
    #: found by listing batches.
    display_name: str

    @property
    def upload_name(self) -> str:
        return f"files/{self.upload_id}"


def upload_id_for(item: InputFile) -> str:
    digest = hashlib.sha256(f"{item.path}\0{item.sha256}".encode()).hexdigest()
    return f"gba-{digest[:36]}"


def display_name_for(item: InputFile, upload_id: str, model: str, generation: int) -> str:
    """``PATH [gba-ID]``: readable, and unique per path, content, model and generation."""
    token = hashlib.sha256(f"{upload_id}\0{model}\0{generation}".encode()).hexdigest()[:16]
    path = (
        item.path if len(item.path) <= _MAX_DISPLAY_PATH else "..." + item.path[-_MAX_DISPLAY_PATH:]
    )
    return f"{path} [gba-{token}]"


@dataclass
class _Completion:
    """A finished file on its way to the writer; ``written`` is set once it is on disk."""

    make_event: Callable[[int, int], Event]
    line: JobLine | None = None
    written: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Progress:
    """What a worker knows about what may exist on the server, for cleanup."""

    upload_may_exist: bool = False
    #: An upload attempt got no answer: the file may exist whatever came after.
    upload_ambiguous: bool = False
    batch_unknown: bool = False
    uploaded: str | None = None
    #: The batch, once a create answered (it may answer inside a shield while
    #: the run is being cancelled).
    created: types.BatchJob | None = None


@dataclass
class Tally:
    submitted: int = 0
    skipped: int = 0
    failed: int = 0
    not_started: int = 0


class SubmitRun:
    """One submit run: its settings, client, journal and counters."""

    def __init__(
        self,
        api: GeminiApi,
        journal: Journal,
        settings: SubmitSettings,
        emit: EventHandler,
        stop: anyio.Event,
    ) -> None:
        self.api = api
        self.journal = journal
        self.settings = settings
        self.emit = emit
        self.stop = stop
        self.limiter = anyio.CapacityLimiter(settings.concurrency)
        self.tally = Tally()
        self.interrupted = False

    # -- the task group ------------------------------------------------------
    async def run(self, items: list[InputFile]) -> Tally:
        """Submit every item; a single failure comes out as itself, not as a group."""
        try:
            return await self._run(items)
        except BaseExceptionGroup as group:
            error = single_error(group)
            if error is group:
                raise
            raise error from None

    async def _run(self, items: list[InputFile]) -> Tally:
        send, receive = anyio.create_memory_object_stream[_Completion](_WRITER_BUFFER)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write_journal, receive, len(items))
            watcher = anyio.CancelScope()
            with anyio.CancelScope() as work_scope:
                tg.start_soon(self._cancel_after_stop, work_scope, watcher)
                async with send, anyio.create_task_group() as workers:
                    for item in items:
                        workers.start_soon(self._submit_file, item, send.clone())
            watcher.cancel()
            if work_scope.cancelled_caught:
                self.interrupted = True
        # A file cancelled before it started (still waiting for the limiter or its
        # claim) has no completion, so count every file without one.
        tally = self.tally
        tally.not_started = len(items) - tally.submitted - tally.skipped - tally.failed
        return tally

    async def _cancel_after_stop(self, work: anyio.CancelScope, watcher: anyio.CancelScope) -> None:
        """After a stop request, in-flight files get cleanup_seconds to finish."""
        with watcher:
            await self.stop.wait()
            self.interrupted = True
            await anyio.sleep(self.settings.cleanup_seconds)
            work.cancel()

    async def _write_journal(
        self, receive: MemoryObjectReceiveStream[_Completion], total: int
    ) -> None:
        """The single writer: append waiting lines with one fsync, then report them in order.

        Shielded, so it outlives cancelled workers and records their batches. It
        never stops early: a failing append or event handler is remembered and
        raised once every sender is done, so no worker waits for it forever.
        """
        done = 0
        failures: list[Exception] = []
        with anyio.CancelScope(shield=True):
            async with receive:
                async for first in receive:
                    batch = [first, *_drain(receive)]
                    try:
                        await self._append(batch)
                    except Exception as exc:  # disk full, say: stop starting files, finish, raise
                        failures.append(exc)
                        self.stop.set()
                    for completion in batch:
                        done += 1
                        event = completion.make_event(done, total)
                        self._count(event)
                        completion.written.set()
                        try:
                            if not failures:
                                self.emit(event)
                        except Exception as exc:  # the caller's handler: same treatment
                            failures.append(exc)
                            self.stop.set()
        if failures:
            raise failures[0]

    async def _append(self, batch: list[_Completion]) -> None:
        lines = [c.line for c in batch if c.line is not None]
        if lines:
            where = await anyio.to_thread.run_sync(self.journal.append, lines)
            self.journal.note_appended(lines, where)

    def _count(self, event: Event) -> None:
        if isinstance(event, FileSubmitted):
            self.tally.submitted += 1
        elif isinstance(event, FileSkipped):
            self.tally.skipped += 1
        elif isinstance(event, FileFailed):
            self.tally.failed += 1

    # -- one file ------------------------------------------------------------
    async def _submit_file(
        self, item: InputFile, send: MemoryObjectSendStream[_Completion]
    ) -> None:
        # Claimed by path, the key of the journal's skip decision: two processes
        # that read different contents of one path still exclude each other.
        async with send, self.journal.claim(item.path):
            completion = await self._decide_and_submit(item, upload_id_for(item), send)
            if completion is not None:
                await _deliver(send, completion)

    async def _decide_and_submit(
        self, item: InputFile, upload_id: str, send: MemoryObjectSendStream[_Completion]
    ) -> _Completion | None:
        view = self.journal.refresh()
        latest = view.latest.get(item.path)
        async with self.limiter:
            if self.stop.is_set():
                return None
            try:
                if latest is not None and not await self._should_resubmit(latest):
                    return _skipped(item, latest)
            except ApiError as exc:
                return _failed(
                    item, f"cannot read the recorded batch's state: {describe(exc)}", None
                )
            generation = view.history.get(item.path, 0)
            display = display_name_for(item, upload_id, self.settings.model_resource, generation)
            return await self._submit(Submission(item, upload_id, display), send)

    async def _should_resubmit(self, latest: JobLine) -> bool:
        if self.settings.force:
            return True
        if not self.settings.retry_failed:
            return False
        state = batch_state_of(latest)
        if state not in RETRYABLE_END_STATES:
            batch = await self._with_retries(
                "status",
                str(latest["input_file"]),
                lambda: self.api.get_batch(batch_name_of(latest)),
            )
            state = batch.state.value if batch.state is not None else ""
        return state in RETRYABLE_END_STATES

    async def _submit(
        self, sub: Submission, send: MemoryObjectSendStream[_Completion]
    ) -> _Completion:
        progress = _Progress()
        try:
            await self._upload_or_reuse(sub, progress)
            batch, adopted = await self._create_or_adopt(sub, progress)
            return self._submitted(sub, batch, adopted)
        except anyio.get_cancelled_exc_class():
            await _deliver(send, await self._settle_in_time(sub, progress, "cancelled"))
            raise
        except ApiError as exc:
            return await self._settle_in_time(sub, progress, describe(exc))
        except BaseException as exc:  # a bug or a local failure: clean up, then let it out
            await _deliver(send, await self._settle_in_time(sub, progress, describe(exc)))
            raise

    async def _settle_in_time(
        self, sub: Submission, progress: _Progress, reason: str
    ) -> _Completion:
        """_settle, shielded from cancellation but bounded by cleanup_seconds."""
        with anyio.move_on_after(self.settings.cleanup_seconds, shield=True):
            return await self._settle(sub, progress, reason)
        left = sub.upload_name if progress.upload_may_exist else None
        if left:
            self.emit(CleanupFailed(sub.item.path, left, "cleanup timed out"))
        return _failed(sub.item, f"{reason}; cleanup timed out", left)

    # -- upload --------------------------------------------------------------
    async def _upload_or_reuse(self, sub: Submission, progress: _Progress) -> None:
        """Upload the file under its own name, or reuse an earlier upload of it."""
        await self._with_retries("upload", sub.item.path, lambda: self._upload_once(sub, progress))

    async def _upload_once(self, sub: Submission, progress: _Progress) -> None:
        progress.upload_may_exist = True
        try:
            remote = await self.api.upload_file(
                sub.item.path,
                name=sub.upload_name,
                display_name=sub.item.path,
                mime_type=self.settings.mime_type,
            )
        except AlreadyExistsApiError:
            await self._reuse_or_replace(sub, progress)
            return
        except AmbiguousApiError:
            progress.upload_ambiguous = True
            raise
        except PermanentApiError:
            # Refused, so this attempt stored nothing; an earlier lost one may have.
            progress.upload_may_exist = progress.upload_ambiguous
            raise
        if remote.sha256 not in (None, sub.item.sha256):
            await self.api.delete_file(sub.upload_name)
            raise TransientApiError("the server's sha256 differs from the file's; uploading again")
        progress.uploaded = sub.upload_name

    async def _reuse_or_replace(self, sub: Submission, progress: _Progress) -> None:
        """An upload with our name exists, so an earlier attempt or run got this far.

        It may also have created the batch: the create step looks first. The
        upload is reused when intact; when it is not (expiring, not ACTIVE,
        other bytes) it is replaced, unless a batch already exists for this
        submission, which may be reading it.
        """
        progress.batch_unknown = True
        try:
            remote = await self.api.get_file(sub.upload_name)
        except NotFoundApiError as exc:  # deleted between our two calls
            raise TransientApiError("upload vanished; uploading again") from exc
        intact = remote.state in (None, "ACTIVE") and remote.sha256 in (None, sub.item.sha256)
        fresh = (
            remote.expires_in_seconds is None or remote.expires_in_seconds > MIN_REUSE_LIFETIME_S
        )
        if (intact and fresh) or await self._find_batch(sub) is not None:
            progress.uploaded = sub.upload_name
            return
        progress.batch_unknown = False
        await self.api.delete_file(sub.upload_name)
        raise TransientApiError("an earlier upload was stale; uploading again")

    # -- create --------------------------------------------------------------
    async def _create_or_adopt(
        self, sub: Submission, progress: _Progress
    ) -> tuple[types.BatchJob, bool]:
        """Create the batch; while one may exist already, look it up before trying."""
        return await self._with_retries(
            "create", sub.item.path, lambda: self._create_once(sub, progress)
        )

    async def _create_once(
        self, sub: Submission, progress: _Progress
    ) -> tuple[types.BatchJob, bool]:
        if progress.batch_unknown:  # an earlier attempt or run may have created it
            found = await self._find_batch(sub)
            if found is not None:
                return found, True
        progress.batch_unknown = True
        try:
            batch = await self._create_shielded(sub, progress)
        except AmbiguousApiError:
            raise  # batch_unknown stays set: the next attempt looks first
        except ApiError:
            progress.batch_unknown = False
            raise
        return batch, False

    async def _create_shielded(self, sub: Submission, progress: _Progress) -> types.BatchJob:
        """Once sent, a create is waited for even under cancellation: its answer is the
        only quick way to know whether the batch exists (a look-up right after may not
        see a create the server is still finishing)."""
        with anyio.move_on_after(CREATE_WAIT_SECONDS, shield=True):
            progress.created = await self.api.create_batch(
                model=self.settings.model_resource,
                src=sub.upload_name,
                display_name=sub.display_name,
            )
            return progress.created
        raise AmbiguousApiError(f"no answer to create within {CREATE_WAIT_SECONDS:.0f}s")

    async def _find_batch(self, sub: Submission) -> types.BatchJob | None:
        """The batch an earlier attempt created for this submission, if any."""
        matches = [b for b in await self.api.list_batches() if b.display_name == sub.display_name]
        matches.sort(key=lambda b: (b.create_time is None, b.create_time), reverse=True)
        return matches[0] if matches else None

    # -- failure -------------------------------------------------------------
    async def _settle(self, sub: Submission, progress: _Progress, reason: str) -> _Completion:
        """After a failure: record the batch if one was created, else delete the upload."""
        if progress.created is not None:
            return self._submitted(sub, progress.created, adopted=False)
        if progress.batch_unknown:
            try:
                found = await self._with_retries(
                    "lookup", sub.item.path, lambda: self._find_batch(sub)
                )
            except ApiError as exc:
                why = f"{reason}; could not tell whether the batch was created ({describe(exc)})"
                left = sub.upload_name if progress.upload_may_exist else None
                return _failed(sub.item, why + "; run submit again to settle it", left)
            if found is not None:
                return self._submitted(sub, found, adopted=True)
        if progress.upload_may_exist:
            left = await self._delete_upload(sub, progress)
            return _failed(sub.item, reason, left)
        return _failed(sub.item, reason, None)

    async def _delete_upload(self, sub: Submission, progress: _Progress) -> str | None:
        """Delete our upload unless a recorded job uses it; the name if it stayed behind."""
        if sub.upload_name in self.journal.refresh().uploads_in_use:
            return None

        async def delete() -> bool:
            return await self.api.delete_file(sub.upload_name)

        try:
            deleted = await self._with_retries("cleanup", sub.item.path, delete)
            if not deleted and progress.uploaded is None:
                # Cut off mid-upload: the server may still be finishing the last
                # chunk it received. Look once more, a moment later.
                await anyio.sleep(LATE_UPLOAD_GRACE_SECONDS)
                await self._with_retries("cleanup", sub.item.path, delete)
        except ApiError as exc:
            self.emit(CleanupFailed(sub.item.path, sub.upload_name, describe(exc)))
            return sub.upload_name
        return None

    # -- helpers -------------------------------------------------------------
    def _submitted(self, sub: Submission, batch: types.BatchJob, adopted: bool) -> _Completion:
        line: JobLine = {
            "input_file": sub.item.path,
            "count": sub.item.count,
            "uploaded_file_name": sub.upload_name,
            "sha256": sub.item.sha256,
            "size_bytes": sub.item.size_bytes,
            "model": self.settings.model_resource,
            "submitted_at": datetime.now(timezone.utc).isoformat(),
            "display_name": sub.display_name,
            "adopted": adopted,
            "batch": batch_to_dict(batch),
        }
        name = batch.name or ""

        def event(n: int, total: int) -> Event:
            return FileSubmitted(sub.item.path, name, sub.upload_name, n, total, adopted)

        return _Completion(event, line)

    def _on_retry(self, path: str, step: str) -> OnRetry:
        def report(attempt: int, delay: float, error: BaseException) -> None:
            self.emit(Retrying(path, step, attempt, delay, describe(error)))

        return report

    async def _with_retries(self, step: str, path: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(self.settings.retry, call, self._on_retry(path, step))


def _skipped(item: InputFile, latest: JobLine) -> _Completion:
    recorded = latest.get("sha256")
    changed = isinstance(recorded, str) and recorded != item.sha256
    name = batch_name_of(latest)
    return _Completion(lambda n, total: FileSkipped(item.path, name, n, total, changed))


def _failed(item: InputFile, reason: str, left_behind: str | None) -> _Completion:
    return _Completion(lambda n, total: FileFailed(item.path, reason, n, total, left_behind))


def _drain(receive: MemoryObjectReceiveStream[_Completion]) -> list[_Completion]:
    """Everything already waiting, so one fsync covers it all."""
    waiting: list[_Completion] = []
    while True:
        try:
            waiting.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return waiting


async def _deliver(send: MemoryObjectSendStream[_Completion], completion: _Completion) -> None:
    """Hand the outcome to the writer and wait until it is on disk (the claim is held till then)."""
    with anyio.CancelScope(shield=True):
        try:
            await send.send(completion)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        await completion.written.wait()
