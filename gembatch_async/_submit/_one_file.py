"""One file's way to a job: upload (or reuse) -> create (or adopt) -> settle.

Whatever fails, and also under cancellation, a shielded and bounded cleanup either
records the batch that was created or deletes the upload that no batch uses. A sent
create is waited for even under cancellation (bounded), since its answer is the only
quick way to know whether the batch exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._admission import Admission
from .._backends import Backend, Job
from .._backends._quota import limit_after_retries
from .._errors import (
    AlreadyExistsApiError,
    AmbiguousApiError,
    ApiError,
    CapacityApiError,
    InputChangedError,
    Limit,
    NotFoundApiError,
    PermanentApiError,
    TransientApiError,
    UnansweredApiError,
)
from .._events import CleanupFailed, Event, EventHandler, FileSubmitted, Retrying
from .._identity import display_name_for
from .._inputs import InputFile
from .._journal import JobLine, Journal
from .._names import utf8_text
from .._retry import OnRetry, call_with_retries, describe
from .._settings import SubmitSettings
from .._webhooks import dynamic_webhook
from ._lookup import BatchIndex
from ._twins import LOOK_FOR_TWINS, cancel_twins
from ._writer import Completion, deferred, deliver, failed

T = TypeVar("T")

#: An upload this close to its 48 h expiry is replaced rather than reused.
MIN_REUSE_LIFETIME_S = 3600.0
#: The longest a sent create is waited for, even under cancellation.
CREATE_WAIT_SECONDS = 60.0
#: How long after a cut-off upload the cleanup looks again for a late-finishing file.
LATE_UPLOAD_GRACE_SECONDS = 0.5


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
class _Progress:
    """What a worker knows about what may exist on the server, for cleanup."""

    upload_may_exist: bool = False
    #: An upload attempt got no answer: the file may exist whatever came after.
    upload_ambiguous: bool = False
    batch_unknown: bool = False
    uploaded: str | None = None
    #: The batch, once a create answered (it may answer inside a shield while
    #: the run is being cancelled).
    created: Job | None = None
    #: A create was sent and we stopped waiting for its answer: the batch may
    #: still appear, reading our upload, so the upload must stay.
    create_unanswered: bool = False
    #: The batch was looked up (an earlier attempt may have created it): a create of
    #: that attempt may still land late, beside the one we keep (see ``_twins``).
    looked_up: bool = False


#: The bytes to upload for an input, checked against what pre-flight read.
Source = Callable[[InputFile], AbstractAsyncContextManager[str]]
#: The completion of a file whose batch exists: its journal line and event.
Submitted = Callable[[Submission, Job, bool], Completion]


class FileSubmitter:
    """Submits one file at a time for a run: its calls, its cleanup, its bounds."""

    def __init__(
        self,
        api: Backend,
        journal: Journal,
        settings: SubmitSettings,
        emit: EventHandler,
        admission: Admission,
        batches: BatchIndex,
        *,
        source: Source,
        submitted: Submitted,
    ) -> None:
        self.api = api
        self.journal = journal
        self.settings = settings
        #: The run's event handler, looked up on each event (a caller may swap it).
        self.emit = emit
        self.admission = admission
        #: Batches earlier attempts made, found by one shared listing.
        self.batches = batches
        self._source = source
        self._submitted = submitted
        #: The shielded scopes of creates waiting for their answer.
        self._create_waits: set[anyio.CancelScope] = set()

    def bound_create_waits(self, seconds: float) -> None:
        """Stop waiting for sent creates after ``seconds`` (their shields ignore cancellation)."""
        deadline = anyio.current_time() + seconds
        for scope in self._create_waits:
            scope.deadline = min(scope.deadline, deadline)

    async def submit(self, sub: Submission, send: MemoryObjectSendStream[Completion]) -> Completion:
        """Upload and create; on any failure settle (record the batch, or delete the
        upload). Cancelled, or failing with a bug, the settled outcome is delivered to
        the writer before the error goes on."""
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
            await deliver(send, await self._settle_in_time(sub, progress, "cancelled"))
            raise
        except CapacityApiError as exc:
            self.admission.refused(exc.limit)
            settled = await self._settle_in_time(sub, progress, describe(exc))
            if settled.line is not None or settled.left_behind is not None:
                return settled  # a batch after all, or an upload we could not delete
            if exc.limit is Limit.REFUSED:
                await self.admission.recount()  # how many jobs are unfinished, for the message
            return deferred(sub.item, exc.limit, self.admission.reason(exc.limit))
        except (ApiError, InputChangedError) as exc:
            return await self._settle_in_time(sub, progress, describe(exc))
        except BaseException as exc:  # a bug or a local failure: clean up, then let it out
            await deliver(send, await self._settle_in_time(sub, progress, describe(exc)))
            raise

    async def _settle_in_time(
        self, sub: Submission, progress: _Progress, reason: str
    ) -> Completion:
        """_settle, shielded from cancellation but bounded by cleanup_seconds."""
        with anyio.move_on_after(self.settings.cleanup_seconds, shield=True):
            return await self._settle(sub, progress, reason)
        left = sub.upload_name if progress.upload_may_exist else None
        if left:
            self.emit(CleanupFailed(sub.item.label, left, "cleanup timed out"))
        return failed(sub.item, f"{reason}; cleanup timed out", left)

    # -- upload --------------------------------------------------------------
    async def _upload_or_reuse(self, sub: Submission, progress: _Progress) -> None:
        """Upload the file under its own name, or reuse an earlier upload of it."""
        await self.with_retries("upload", sub.item.label, lambda: self._upload_once(sub, progress))

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
    async def _create_or_adopt(self, sub: Submission, progress: _Progress) -> tuple[Job, bool]:
        """Create the batch; while one may exist already, look it up before trying.

        A 429 on create is never the file's failure: one that outlasts the retries
        is capacity (the file is deferred, or waits)."""
        try:
            return await self.with_retries(
                "create", sub.item.label, lambda: self._create_once(sub, progress)
            )
        except TransientApiError as exc:
            limit = limit_after_retries(exc)
            if limit is None:
                raise
            raise CapacityApiError(
                str(exc), limit=limit, code=exc.code, status=exc.status, details=exc.details
            ) from exc

    async def _create_once(self, sub: Submission, progress: _Progress) -> tuple[Job, bool]:
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

    async def _create_shielded(self, sub: Submission, progress: _Progress) -> Job:
        """Once sent, a create is waited for even under cancellation: its answer is the
        only quick way to know whether the batch exists (a look-up right after may not
        see a create the server is still finishing). The wait is bounded: by
        CREATE_WAIT_SECONDS, and by the stop bound (see SubmitRun._cancel_after_stop)."""
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

    async def _find_batch(self, sub: Submission) -> Job | None:
        """The batch an earlier attempt created for this submission, if any."""
        return await self.batches.find(sub.token)

    async def _cancel_twins(self, sub: Submission, kept: Job, fresh: bool) -> None:
        """Cancel the other jobs carrying this submission's token. After our own create
        the listing is a new one (a lost create may have landed while ours ran); after
        adopting, the look-up's own listing shows them. A listing that fails is no
        failure of the file: the batch stands, and run looks again while it watches."""
        try:
            found = await (self.batches.find_all if fresh else self.batches.known)(sub.token)
        except ApiError:
            return

        async def cancel(name: str) -> None:
            await self.with_retries("cancel", sub.item.label, lambda: self.api.cancel_batch(name))

        await cancel_twins(sub.item.label, found, kept, cancel, self.emit)

    # -- failure -------------------------------------------------------------
    async def _settle(self, sub: Submission, progress: _Progress, reason: str) -> Completion:
        """After a failure: record the batch if one was created, else delete the upload."""
        if progress.created is not None:
            return self._submitted(sub, progress.created, False)
        if progress.batch_unknown:
            try:
                found = await self.with_retries(
                    "lookup", sub.item.label, lambda: self._find_batch(sub)
                )
            except ApiError as exc:
                why = f"{reason}; could not tell whether the batch was created ({describe(exc)})"
                left = sub.upload_name if progress.upload_may_exist else None
                return failed(sub.item, why + "; run submit again to settle it", left)
            if found is not None:
                return self._submitted(sub, found, True)
        if progress.create_unanswered:
            why = f"{reason}; its batch may still be created: run submit again to settle it"
            return failed(sub.item, why, sub.upload_name)
        if progress.upload_may_exist:
            left = await self._delete_upload(sub, progress)
            return failed(sub.item, reason, left)
        return failed(sub.item, reason, None)

    async def _delete_upload(self, sub: Submission, progress: _Progress) -> str | None:
        """Delete our upload unless a recorded job uses it; the name if it stayed behind."""
        if sub.upload_name in self.journal.refresh().uploads_in_use:
            return None

        async def delete() -> bool:
            return await self.api.delete_file(sub.upload_name)

        try:
            deleted = await self.with_retries("cleanup", sub.item.label, delete)
            if not deleted and progress.uploaded is None:
                # Cut off mid-upload: the server may still be finishing the last
                # chunk it received. Look once more, a moment later.
                await anyio.sleep(LATE_UPLOAD_GRACE_SECONDS)
                await self.with_retries("cleanup", sub.item.label, delete)
        except ApiError as exc:
            self.emit(CleanupFailed(sub.item.label, sub.upload_name, describe(exc)))
            return sub.upload_name
        return None

    # -- helpers -------------------------------------------------------------
    def _on_retry(self, path: str, step: str) -> OnRetry:
        def report(attempt: int, delay: float, error: BaseException) -> None:
            self.emit(Retrying(path, step, attempt, delay, describe(error)))

        return report

    async def with_retries(self, step: str, path: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(self.settings.retry, call, self._on_retry(path, step))


def submitted_line(
    sub: Submission,
    batch: Job,
    adopted: bool,
    *,
    journal_id: str | None,
    model: str,
    backend_fields: JobLine,
) -> Completion:
    """The completion of a file whose batch exists: its journal line (with the full
    batch object the service returned) and its FileSubmitted event."""
    line: JobLine = {
        "input_file": sub.item.path,
        "input_identity": sub.item.identity,
        **_part_fields(sub.item),
        **_selection_fields(sub.item),
        "journal_id": journal_id,
        "count": sub.item.count,
        "uploaded_file_name": sub.upload_name,
        "sha256": sub.item.sha256,
        "size_bytes": sub.item.size_bytes,
        "model": model,
        "submitted_at": datetime.now(timezone.utc).isoformat(),
        "display_name": sub.display_name,
        "adopted": adopted,
        "batch": batch.journal_form(),
        **backend_fields,
    }
    name = batch.name or ""

    def event(n: int, total: int) -> Event:
        return FileSubmitted(sub.item.label, name, sub.upload_name, n, total, adopted)

    return Completion(event, line)


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
