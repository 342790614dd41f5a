"""The run of submit: one task group drives every file, under a limiter and admission.

Each file's worker claims its input against other processes, decides whether
the journal already covers it (or, with --retry-failed, which of its requests go
again), waits for admission, and hands the file to one file's submission
(``_one_file``: upload -> create -> settle). Every outcome goes to the single journal
writer (``_writer``). Setting ``stop`` starts no new file and bounds those in flight.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._admission import Admission, Limit, estimated_tokens
from .._backends import Backend, Job
from .._errors import ApiError, NotFoundApiError, single_error
from .._events import Event, EventHandler, WaitingForCapacity
from .._identity import submission_token, upload_id_for
from .._inputs import InputFile, open_as_checked
from .._journal import JobLine, Journal, batch_name_of, batch_state_of
from .._retry import describe
from .._settings import SubmitSettings
from ._lookup import BatchIndex
from ._one_file import FileSubmitter, Submission, submitted_line
from ._resubmit import NothingToSend, unanswered
from ._writer import Completion, JournalWriter, Tally, deferred, deliver, failed, skipped

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

T = TypeVar("T")

#: Recorded states after which --retry-failed submits the file again.
RETRYABLE_END_STATES = frozenset({"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})
_WRITER_BUFFER = 64


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
        #: The single writer: journal appends, then each file's ``[n/total]`` event.
        self.writer = JournalWriter(journal, self._emit, self._count)
        #: Who may start now: the service's job window and quotas.
        self.admission = admission or Admission(
            waits=settings.wait_for_capacity,
            storage_bytes=settings.storage_quota_bytes,
            probe_seconds=settings.capacity_probe_seconds,
            probe_max_seconds=settings.capacity_probe_max_seconds,
            token_quota=settings.enqueued_token_quota,
        )
        #: One file's submission: upload, create, and the shielded cleanup.
        self.files = FileSubmitter(
            api,
            journal,
            settings,
            self._emit,
            self.admission,
            BatchIndex(api.list_batches),
            source=self._source,
            submitted=self._submitted,
        )

    @property
    def halted(self) -> bool:
        """The run cannot go on as asked (the journal refuses appends, or the event
        handler failed): like a stop, no new file starts, but nobody interrupted it."""
        return self.writer.halted

    def _emit(self, event: Event) -> None:
        """Report through ``emit`` as it is now (a caller may replace it after building)."""
        self.emit(event)

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
        send, receive = anyio.create_memory_object_stream[Completion](_WRITER_BUFFER)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.writer.write, receive, len(items))
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
                    self.files.bound_create_waits(self.settings.cleanup_seconds)
                raise
            self.files.bound_create_waits(0.0)
            work.cancel()

    def _count(self, event: Event) -> None:
        self.tally.count(event)

    # -- one file ------------------------------------------------------------
    async def _submit_file(self, item: InputFile, send: MemoryObjectSendStream[Completion]) -> None:
        # Claimed by identity, the key of the journal's skip decision: two processes
        # (or two spellings of one file) that read different contents still exclude
        # each other.
        async with send, self.journal.claim(item.identity):
            completion = await self._decide_and_submit(item, send)
            if completion is not None:
                await deliver(send, completion)

    async def _decide_and_submit(
        self, item: InputFile, send: MemoryObjectSendStream[Completion]
    ) -> Completion | None:
        view = self.journal.refresh()
        latest = view.recorded(item.key, item.identity, item.part.of if item.part else None)
        async with self.limiter:
            if self.stop.is_set() or self.halted:
                return None  # counted as not started at the end
            try:
                narrowed = await self._unanswered(item, latest)
                if isinstance(narrowed, NothingToSend):
                    assert latest is not None, "only a recorded input is narrowed"
                    return skipped(item, latest)
                if narrowed is not None:
                    item = narrowed  # a round: only the requests without an answer
                elif latest is not None and not await self._should_resubmit(latest):
                    return skipped(item, latest)
            except ApiError as exc:
                return failed(
                    item, f"cannot read the recorded batch's state: {describe(exc)}", None
                )
            sub = self._submission(item, view.history.get(item.key, 0))
            return await self._submit_when_admitted(sub, send)

    async def _submit_when_admitted(
        self, sub: Submission, send: MemoryObjectSendStream[Completion]
    ) -> Completion:
        """Upload and create once the service has room; at a limit, wait (run) or defer.

        The file's bytes count as held from admission until its upload is deleted
        (here, when no job was recorded; later, by whoever cleans up the job).
        """
        size = sub.item.size_bytes
        tokens = estimated_tokens(size)
        never = self.admission.never_fits(tokens)
        if never is not None:  # waiting would be forever: the file fails, plainly
            return failed(sub.item, never, None)
        while True:
            limit = await self.admission.admit(size, self._on_wait(sub.item.label), tokens)
            if limit is not None:
                return deferred(sub.item, limit, self.admission.reason(limit))
            completion = await self.files.submit(sub, send)
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
                batch = await self.files.with_retries(
                    "status",
                    str(latest["input_file"]),
                    lambda: self.api.get_batch(batch_name_of(latest)),
                )
            except NotFoundApiError:
                return True  # the batch is gone (deleted): nothing will run for this file
            state = batch.state if batch.state is not None else ""
        return state in RETRYABLE_END_STATES

    # -- what PackRun varies -------------------------------------------------
    def _source(self, item: InputFile) -> AbstractAsyncContextManager[str]:
        """A path to the bytes to upload for ``item``, checked against what pre-flight read."""
        return open_as_checked(item)

    def _submitted(self, sub: Submission, batch: Job, adopted: bool) -> Completion:
        return submitted_line(
            sub,
            batch,
            adopted,
            journal_id=self.journal.scope_id,
            model=self.settings.model_resource,
            backend_fields=self.api.line_fields(),
        )

    async def _with_retries(self, step: str, path: str, call: Callable[[], Awaitable[T]]) -> T:
        return await self.files.with_retries(step, path, call)
