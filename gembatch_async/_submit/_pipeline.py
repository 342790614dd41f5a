"""The one task group of submit: inputs -> upload -> create -> journal, under a limiter.

Each file's worker claims its input against other processes, decides whether
the journal already covers it, uploads (or reuses an upload an earlier attempt
left), creates the batch (or adopts one an ambiguous earlier attempt created),
and hands the outcome to the single journal writer. Whatever fails, and also
under cancellation, a shielded and bounded cleanup either records the batch
that was created or deletes the upload that no batch uses.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from google.genai import types

from .._admission import Admission, Limit, estimated_tokens
from .._backends import Backend
from .._backends._genai import batch_to_dict
from .._backends._quota import limit_after_retries
from .._errors import (
    AlreadyExistsApiError,
    AmbiguousApiError,
    ApiError,
    CapacityApiError,
    InputChangedError,
    JournalError,
    NotFoundApiError,
    PermanentApiError,
    TransientApiError,
    UnansweredApiError,
    single_error,
)
from .._events import (
    CleanupFailed,
    Event,
    EventHandler,
    FileDeferred,
    FileFailed,
    FileSkipped,
    FileSubmitted,
    Retrying,
    WaitingForCapacity,
)
from .._identity import display_name_for, submission_token, upload_id_for
from .._inputs import InputFile, open_as_checked
from .._journal import JobLine, Journal, batch_name_of, batch_state_of, unit_sha256_of
from .._names import utf8_text
from .._retry import OnRetry, call_with_retries, describe
from .._settings import SubmitSettings
from .._webhooks import dynamic_webhook
from ._lookup import BatchIndex
from ._resubmit import NothingToSend, unanswered
from ._twins import LOOK_FOR_TWINS, cancel_twins

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

T = TypeVar("T")

#: Recorded states after which --retry-failed submits the file again.
RETRYABLE_END_STATES = frozenset({"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})
#: An upload this close to its 48 h expiry is replaced rather than reused.
MIN_REUSE_LIFETIME_S = 3600.0
#: The longest a sent create is waited for, even under cancellation.
CREATE_WAIT_SECONDS = 60.0
#: How long after a cut-off upload the cleanup looks again for a late-finishing file.
LATE_UPLOAD_GRACE_SECONDS = 0.5
_WRITER_BUFFER = 64


@dataclass(frozen=True)
class Submission:
    """One file to submit, with the names the server will know it by (see ``_identity``)."""

    item: InputFile
    #: Upload id: one journal, input and content always map to it, so a repeated
    #: or retried upload is found by its name (a 409 on upload).
    upload_id: str
    #: Ends the batch's display name, so an ambiguous create is found by listing.
    token: str
    #: Where the backend stages the upload (a Files API name, a gs:// URI).
    upload_name: str

    @property
    def display_name(self) -> str:
        return display_name_for(self.item.label, self.token)


@dataclass
class _Completion:
    """A finished file on its way to the writer; ``written`` is set once it is on disk."""

    make_event: Callable[[int, int], Event]
    line: JobLine | None = None
    written: anyio.Event = field(default_factory=anyio.Event)
    #: An upload of ours that stays on the server (cleanup failed), if any.
    left_behind: str | None = None
    #: The limit that kept the file from being admitted, if it was deferred.
    deferred: Limit | None = None
    #: Lines recorded with ``line``, in the same append (one per input of a packed job).
    more_lines: list[JobLine] = field(default_factory=list)

    def event(self, n: int, total: int, unrecorded: str | None) -> Event:
        """The file's event; when its line could not be appended, a failure naming the batch."""
        if unrecorded is None or self.line is None:
            return self.make_event(n, total)
        name = batch_name_of(self.line)
        reason = (
            f"batch {name} was created but could not be recorded in the journal ({unrecorded}); "
            "run submit again to record it"
        )
        path = str(self.line["input_file"])
        return FileFailed(path, reason, n, total, None, unrecorded_batch=name)


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
    #: A create was sent and we stopped waiting for its answer: the batch may
    #: still appear, reading our upload, so the upload must stay.
    create_unanswered: bool = False
    #: The batch was looked up (an earlier attempt may have created it): a create of
    #: that attempt may still land late, beside the one we keep (see ``_twins``).
    looked_up: bool = False


@dataclass
class Tally:
    submitted: int = 0
    skipped: int = 0
    failed: int = 0
    not_started: int = 0
    deferred: int = 0


class SubmitRun:
    """One submit run: its settings, client, journal and counters."""

    def __init__(
        self,
        api: Backend,
        journal: Journal,
        settings: SubmitSettings,
        emit: EventHandler,
        stop: anyio.Event,
        admission: Admission | None = None,
    ) -> None:
        self.api = api
        self.journal = journal
        self.settings = settings
        self.emit = emit
        self.stop = stop
        self.limiter = anyio.CapacityLimiter(settings.concurrency)
        self.tally = Tally()
        self.interrupted = False
        #: Set when the run cannot go on as asked (the journal refuses appends):
        #: like a stop, no new file starts, but nobody interrupted the run.
        self.halted = False
        #: Who may start now: the service's job window and quotas.
        self.admission = admission or Admission(
            waits=settings.wait_for_capacity,
            storage_bytes=settings.storage_quota_bytes,
            probe_seconds=settings.capacity_probe_seconds,
            probe_max_seconds=settings.capacity_probe_max_seconds,
            token_quota=settings.enqueued_token_quota,
        )
        #: Batches earlier attempts made, found by one shared listing.
        self.batches = BatchIndex(api.list_batches)
        #: The shielded scopes of creates waiting for their answer.
        self._create_waits: set[anyio.CancelScope] = set()

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
        done = tally.submitted + tally.skipped + tally.failed + tally.deferred
        tally.not_started = len(items) - done
        return tally

    async def _cancel_after_stop(self, work: anyio.CancelScope, watcher: anyio.CancelScope) -> None:
        """The stop bound: in-flight files get cleanup_seconds to finish, then are cut off
        (an unanswered create too) and get cleanup_seconds more to clean up.

        A caller's cancellation has no first phase: creates already sent get
        cleanup_seconds to answer, then the same cleanup.
        """
        with watcher:
            try:
                await self.stop.wait()
                self.interrupted = True
                await anyio.sleep(self.settings.cleanup_seconds)
            except anyio.get_cancelled_exc_class():
                if not watcher.cancel_called:  # the caller cancelled the run, not us
                    self._bound_create_waits(self.settings.cleanup_seconds)
                raise
            self._bound_create_waits(0.0)
            work.cancel()

    def _bound_create_waits(self, seconds: float) -> None:
        """Stop waiting for sent creates after ``seconds`` (their shields ignore cancellation)."""
        deadline = anyio.current_time() + seconds
        for scope in self._create_waits:
            scope.deadline = min(scope.deadline, deadline)

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
                    unrecorded = await self._append_or_why_not(batch)
                    for completion in batch:
                        done += 1
                        event = completion.event(done, total, unrecorded)
                        self._count(event)
                        completion.written.set()
                        try:
                            if not failures:
                                self.emit(event)
                        except (
                            Exception
                        ) as exc:  # the caller's handler: stop starting, finish, raise
                            failures.append(exc)
                            self.halted = True
        if failures:
            raise failures[0]

    async def _append_or_why_not(self, batch: list[_Completion]) -> str | None:
        """Append the batch's lines; if the journal cannot take them (disk full, say),
        the reason: their files are then reported failed, each naming its batch, and
        no new file starts. The next run finds those batches by name and records them."""
        try:
            await self._append(batch)
        except JournalError as exc:
            self.halted = True
            return describe(exc)
        return None

    async def _append(self, batch: list[_Completion]) -> None:
        lines = [line for c in batch if c.line is not None for line in (c.line, *c.more_lines)]
        if lines:
            where = await anyio.to_thread.run_sync(self.journal.append, lines)
            self.journal.note_appended(lines, where)

    def _count(self, event: Event) -> None:
        if isinstance(event, FileDeferred):
            self.tally.deferred += 1
        elif isinstance(event, FileSubmitted):
            self.tally.submitted += 1
        elif isinstance(event, FileSkipped):
            self.tally.skipped += 1
        elif isinstance(event, FileFailed):
            self.tally.failed += 1

    # -- one file ------------------------------------------------------------
    async def _submit_file(
        self, item: InputFile, send: MemoryObjectSendStream[_Completion]
    ) -> None:
        # Claimed by identity, the key of the journal's skip decision: two processes
        # (or two spellings of one file) that read different contents still exclude
        # each other.
        async with send, self.journal.claim(item.identity):
            completion = await self._decide_and_submit(item, send)
            if completion is not None:
                await _deliver(send, completion)

    async def _decide_and_submit(
        self, item: InputFile, send: MemoryObjectSendStream[_Completion]
    ) -> _Completion | None:
        view = self.journal.refresh()
        latest = view.recorded(item.key, item.identity, item.part.of if item.part else None)
        async with self.limiter:
            if self.stop.is_set() or self.halted:
                return None  # counted as not started at the end
            try:
                narrowed = await self._unanswered(item, latest)
                if isinstance(narrowed, NothingToSend):
                    assert latest is not None, "only a recorded input is narrowed"
                    return _skipped(item, latest)
                if narrowed is not None:
                    item = narrowed  # a round: only the requests without an answer
                elif latest is not None and not await self._should_resubmit(latest):
                    return _skipped(item, latest)
            except ApiError as exc:
                return _failed(
                    item, f"cannot read the recorded batch's state: {describe(exc)}", None
                )
            sub = self._submission(item, view.history.get(item.key, 0))
            return await self._submit_when_admitted(sub, send)

    async def _submit_when_admitted(
        self, sub: Submission, send: MemoryObjectSendStream[_Completion]
    ) -> _Completion:
        """Upload and create once the service has room; at a limit, wait (run) or defer.

        The file's bytes count as held from admission until its upload is deleted
        (here, when no job was recorded; later, by whoever cleans up the job).
        """
        size = sub.item.size_bytes
        tokens = estimated_tokens(size)
        never = self.admission.never_fits(tokens)
        if never is not None:  # waiting would be forever: the file fails, plainly
            return _failed(sub.item, never, None)
        while True:
            limit = await self.admission.admit(size, self._on_wait(sub.item.label), tokens)
            if limit is not None:
                return _deferred(sub.item, limit, self.admission.reason(limit))
            completion = await self._submit(sub, send)
            if completion.line is not None:
                self.admission.created(batch_name_of(completion.line), tokens)
                return completion
            self.admission.not_created(tokens)
            if completion.left_behind is None:
                self.admission.release_bytes(size)
            if completion.deferred is None or not self.admission.waits:
                return completion

    def _on_wait(self, path: str) -> Callable[[Limit], None]:
        def report(limit: Limit) -> None:
            self.emit(WaitingForCapacity(path, self.admission.reason(limit), limit.key))

        return report

    def _submission(self, item: InputFile, generation: int) -> Submission:
        scope = self.journal.scope_id
        assert scope is not None, "the journal is open for writing"
        upload_id = upload_id_for(scope, item.key, item.sha256)
        token = submission_token(upload_id, self.settings.model_resource, generation)
        return Submission(item, upload_id, token, self.api.upload_name(upload_id))

    async def _unanswered(
        self, item: InputFile, latest: JobLine | None
    ) -> InputFile | NothingToSend | None:
        """With --retry-failed, the input narrowed to its requests without an answer
        (see ``_resubmit``); None when the whole file is decided as before."""
        if latest is None or self.settings.force or not self.settings.retry_failed:
            return None
        return await unanswered(
            self.api, self.settings.retry, item, latest, self.settings.resubmits
        )

    async def _should_resubmit(self, latest: JobLine) -> bool:
        if self.settings.force:
            return True
        if not self.settings.retry_failed:
            return False
        state = batch_state_of(latest)
        if state not in RETRYABLE_END_STATES:
            try:
                batch = await self._with_retries(
                    "status",
                    str(latest["input_file"]),
                    lambda: self.api.get_batch(batch_name_of(latest)),
                )
            except NotFoundApiError:
                return True  # the batch is gone (deleted): nothing will run for this file
            state = batch.state.value if batch.state is not None else ""
        return state in RETRYABLE_END_STATES

    async def _submit(
        self, sub: Submission, send: MemoryObjectSendStream[_Completion]
    ) -> _Completion:
        progress = _Progress()
        try:
            await self._upload_or_reuse(sub, progress)
            batch, adopted = await self._create_or_adopt(sub, progress)
            if progress.looked_up:
                await self._cancel_twins(sub, batch, fresh=not adopted)
            completion = self._submitted(sub, batch, adopted)
            if progress.looked_up and completion.line is not None:
                completion.line[LOOK_FOR_TWINS] = True  # run looks again while it watches
            return completion
        except anyio.get_cancelled_exc_class():
            await _deliver(send, await self._settle_in_time(sub, progress, "cancelled"))
            raise
        except CapacityApiError as exc:
            self.admission.refused(exc.limit)
            settled = await self._settle_in_time(sub, progress, describe(exc))
            if settled.line is not None or settled.left_behind is not None:
                return settled  # a batch after all, or an upload we could not delete
            if exc.limit is Limit.REFUSED:
                await self.admission.recount()  # how many jobs are unfinished, for the message
            return _deferred(sub.item, exc.limit, self.admission.reason(exc.limit))
        except (ApiError, InputChangedError) as exc:
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
            self.emit(CleanupFailed(sub.item.label, left, "cleanup timed out"))
        return _failed(sub.item, f"{reason}; cleanup timed out", left)

    # -- upload --------------------------------------------------------------
    async def _upload_or_reuse(self, sub: Submission, progress: _Progress) -> None:
        """Upload the file under its own name, or reuse an earlier upload of it."""
        await self._with_retries("upload", sub.item.label, lambda: self._upload_once(sub, progress))

    async def _upload_once(self, sub: Submission, progress: _Progress) -> None:
        progress.upload_may_exist = True
        try:
            async with self._source(sub.item) as source:
                remote = await self.api.upload_file(
                    source,
                    name=sub.upload_name,
                    display_name=utf8_text(sub.item.label),
                    mime_type=self.settings.mime_type,
                    sha256=sub.item.sha256,
                )
        except AlreadyExistsApiError:
            await self._reuse_or_replace(sub, progress)
            return
        except AmbiguousApiError:
            progress.upload_ambiguous = True
            raise
        except (PermanentApiError, CapacityApiError):
            # Refused, so this attempt stored nothing; an earlier lost one may have.
            progress.upload_may_exist = progress.upload_ambiguous
            raise
        if remote.sha256 not in (None, sub.item.sha256):
            await self.api.delete_file(sub.upload_name)
            raise TransientApiError("the server's sha256 differs from the file's; uploading again")
        progress.uploaded = sub.upload_name

    def _source(self, item: InputFile) -> AbstractAsyncContextManager[str]:
        """A path to the bytes to upload for ``item``, checked against what pre-flight read."""
        return open_as_checked(item)

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
        """Create the batch; while one may exist already, look it up before trying.

        A 429 on create is never the file's failure: one that outlasts the retries
        is capacity (the file is deferred, or waits)."""
        try:
            return await self._with_retries(
                "create", sub.item.label, lambda: self._create_once(sub, progress)
            )
        except TransientApiError as exc:
            limit = limit_after_retries(exc)
            if limit is None:
                raise
            raise CapacityApiError(
                str(exc), limit=limit, code=exc.code, status=exc.status, details=exc.details
            ) from exc

    async def _create_once(
        self, sub: Submission, progress: _Progress
    ) -> tuple[types.BatchJob, bool]:
        if progress.batch_unknown:  # an earlier attempt or run may have created it
            progress.looked_up = True
            found = await self._find_batch(sub)
            if found is not None:
                return found, True
        progress.batch_unknown = True
        try:
            batch = await self._create_shielded(sub, progress)
        except (AmbiguousApiError, UnansweredApiError):
            raise  # batch_unknown stays set: the next attempt (or the cleanup) looks first
        except ApiError:
            progress.batch_unknown = False
            raise
        return batch, False

    async def _create_shielded(self, sub: Submission, progress: _Progress) -> types.BatchJob:
        """Once sent, a create is waited for even under cancellation: its answer is the
        only quick way to know whether the batch exists (a look-up right after may not
        see a create the server is still finishing). The wait is bounded: by
        CREATE_WAIT_SECONDS, and by the stop bound (see _cancel_after_stop)."""
        with anyio.move_on_after(CREATE_WAIT_SECONDS, shield=True) as wait:
            self._create_waits.add(wait)
            try:
                progress.created = await self.api.create_batch(
                    model=self.settings.model_resource,
                    src=sub.upload_name,
                    display_name=sub.display_name,
                    kind=sub.item.kind,
                    webhook=dynamic_webhook(self.settings.webhook_url, sub.token),
                )
                return progress.created
            finally:
                self._create_waits.discard(wait)
        progress.create_unanswered = True
        raise UnansweredApiError("the batch create got no answer in time; it may still happen")

    async def _find_batch(self, sub: Submission) -> types.BatchJob | None:
        """The batch an earlier attempt created for this submission, if any."""
        return await self.batches.find(sub.token)

    async def _cancel_twins(self, sub: Submission, kept: types.BatchJob, fresh: bool) -> None:
        """Cancel the other jobs carrying this submission's token. After our own create
        the listing is a new one (a lost create may have landed while ours ran); after
        adopting, the look-up's own listing shows them. A listing that fails is no
        failure of the file: the batch stands, and run looks again while it watches."""
        try:
            found = await (self.batches.find_all if fresh else self.batches.known)(sub.token)
        except ApiError:
            return

        async def cancel(name: str) -> None:
            await self._with_retries("cancel", sub.item.label, lambda: self.api.cancel_batch(name))

        await cancel_twins(sub.item.label, found, kept, cancel, self.emit)

    # -- failure -------------------------------------------------------------
    async def _settle(self, sub: Submission, progress: _Progress, reason: str) -> _Completion:
        """After a failure: record the batch if one was created, else delete the upload."""
        if progress.created is not None:
            return self._submitted(sub, progress.created, adopted=False)
        if progress.batch_unknown:
            try:
                found = await self._with_retries(
                    "lookup", sub.item.label, lambda: self._find_batch(sub)
                )
            except ApiError as exc:
                why = f"{reason}; could not tell whether the batch was created ({describe(exc)})"
                left = sub.upload_name if progress.upload_may_exist else None
                return _failed(sub.item, why + "; run submit again to settle it", left)
            if found is not None:
                return self._submitted(sub, found, adopted=True)
        if progress.create_unanswered:
            why = f"{reason}; its batch may still be created: run submit again to settle it"
            return _failed(sub.item, why, sub.upload_name)
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
            deleted = await self._with_retries("cleanup", sub.item.label, delete)
            if not deleted and progress.uploaded is None:
                # Cut off mid-upload: the server may still be finishing the last
                # chunk it received. Look once more, a moment later.
                await anyio.sleep(LATE_UPLOAD_GRACE_SECONDS)
                await self._with_retries("cleanup", sub.item.label, delete)
        except ApiError as exc:
            self.emit(CleanupFailed(sub.item.label, sub.upload_name, describe(exc)))
            return sub.upload_name
        return None

    # -- helpers -------------------------------------------------------------
    def _submitted(self, sub: Submission, batch: types.BatchJob, adopted: bool) -> _Completion:
        line: JobLine = {
            "input_file": sub.item.path,
            "input_identity": sub.item.identity,
            **_part_fields(sub.item),
            **_selection_fields(sub.item),
            "journal_id": self.journal.scope_id,
            "count": sub.item.count,
            "uploaded_file_name": sub.upload_name,
            "sha256": sub.item.sha256,
            "size_bytes": sub.item.size_bytes,
            "model": self.settings.model_resource,
            "submitted_at": datetime.now(timezone.utc).isoformat(),
            "display_name": sub.display_name,
            "adopted": adopted,
            "batch": batch_to_dict(batch),
            **self.api.line_fields(),
        }
        name = batch.name or ""

        def event(n: int, total: int) -> Event:
            return FileSubmitted(sub.item.label, name, sub.upload_name, n, total, adopted)

        return _Completion(event, line)

    def _on_retry(self, path: str, step: str) -> OnRetry:
        def report(attempt: int, delay: float, error: BaseException) -> None:
            self.emit(Retrying(path, step, attempt, delay, describe(error)))

        return report

    async def _with_retries(self, step: str, path: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(self.settings.retry, call, self._on_retry(path, step))


def _part_fields(item: InputFile) -> JobLine:
    """A part's place in its input: the original tool ignores these fields."""
    if item.part is None:
        return {}
    fields: JobLine = {"part": item.part.number, "parts": item.part.of}
    if item.limits is not None:  # how it was cut, so a later run cuts it the same way
        fields["split"] = {
            "max_bytes": item.limits.max_bytes,
            "max_requests": item.limits.max_requests,
        }
    if item.input_sha256:
        fields["input_sha256"] = item.input_sha256
    return fields


def _selection_fields(item: InputFile) -> JobLine:
    """A round's line: which requests of the input its job carries (``_resubmit``)."""
    if item.selection is None:
        return {}
    return item.selection.line_fields(item.identity, item.input_sha256)


def _skipped(item: InputFile, latest: JobLine) -> _Completion:
    recorded = unit_sha256_of(latest)
    changed = isinstance(recorded, str) and recorded != item.sha256
    name, state = batch_name_of(latest), batch_state_of(latest)
    return _Completion(lambda n, total: FileSkipped(item.label, name, n, total, changed, state))


def _failed(item: InputFile, reason: str, left_behind: str | None) -> _Completion:
    return _Completion(
        lambda n, total: FileFailed(item.label, reason, n, total, left_behind),
        left_behind=left_behind,
    )


def _deferred(item: InputFile, limit: Limit, reason: str) -> _Completion:
    return _Completion(
        lambda n, total: FileDeferred(item.label, reason, n, total, limit.key), deferred=limit
    )


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
