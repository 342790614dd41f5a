"""Submit's single writer: every file's outcome, appended to the journal and reported.

Workers hand a :class:`Completion` to the one writer task; it appends the waiting
lines with one fsync, then emits each file's event numbered ``[n/total]`` in the order
they were written, and counts them. A worker waits until its line is on disk
(:func:`deliver`) before it lets go of its claim on the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import JournalError, Limit
from .._events import (
    Event,
    EventHandler,
    FileDeferred,
    FileFailed,
    FileSkipped,
    FileSubmitted,
)
from .._inputs import InputFile
from .._journal import JobLine, Journal, batch_name_of, batch_state_of, unit_sha256_of
from .._retry import describe


@dataclass
class Completion:
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
class Tally:
    submitted: int = 0
    skipped: int = 0
    failed: int = 0
    not_started: int = 0
    deferred: int = 0

    def count(self, event: Event) -> None:
        """One file's outcome, by its event."""
        if isinstance(event, FileDeferred):
            self.deferred += 1
        elif isinstance(event, FileSubmitted):
            self.submitted += 1
        elif isinstance(event, FileSkipped):
            self.skipped += 1
        elif isinstance(event, FileFailed):
            self.failed += 1


class JournalWriter:
    """The one task that appends to the journal and reports files, in that order."""

    def __init__(
        self, journal: Journal, emit: EventHandler, count: Callable[[Event], None]
    ) -> None:
        self.journal = journal
        #: The run's event handler, looked up on each event (a caller may swap it).
        self.emit = emit
        self.count = count
        #: Set when the run cannot go on as asked (the journal refuses appends, or the
        #: caller's event handler failed): like a stop, no new file starts.
        self.halted = False

    async def write(self, receive: MemoryObjectReceiveStream[Completion], total: int) -> None:
        """Append waiting lines with one fsync, then report them in order.

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
                        self.count(event)
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

    async def _append_or_why_not(self, batch: list[Completion]) -> str | None:
        """Append the batch's lines; if the journal cannot take them (disk full, say),
        the reason: their files are then reported failed, each naming its batch, and
        no new file starts. The next run finds those batches by name and records them."""
        try:
            await self._append(batch)
        except JournalError as exc:
            self.halted = True
            return describe(exc)
        return None

    async def _append(self, batch: list[Completion]) -> None:
        lines = [line for c in batch if c.line is not None for line in (c.line, *c.more_lines)]
        if lines:
            where = await anyio.to_thread.run_sync(self.journal.append, lines)
            self.journal.note_appended(lines, where)


def skipped(item: InputFile, latest: JobLine) -> Completion:
    recorded = unit_sha256_of(latest)
    changed = isinstance(recorded, str) and recorded != item.sha256
    name, state = batch_name_of(latest), batch_state_of(latest)
    return Completion(lambda n, total: FileSkipped(item.label, name, n, total, changed, state))


def failed(item: InputFile, reason: str, left_behind: str | None) -> Completion:
    return Completion(
        lambda n, total: FileFailed(item.label, reason, n, total, left_behind),
        left_behind=left_behind,
    )


def deferred(item: InputFile, limit: Limit, reason: str) -> Completion:
    return Completion(
        lambda n, total: FileDeferred(item.label, reason, n, total, limit.key), deferred=limit
    )


def _drain(receive: MemoryObjectReceiveStream[Completion]) -> list[Completion]:
    """Everything already waiting, so one fsync covers it all."""
    waiting: list[Completion] = []
    while True:
        try:
            waiting.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return waiting


async def deliver(send: MemoryObjectSendStream[Completion], completion: Completion) -> None:
    """Hand the outcome to the writer and wait until it is on disk (the claim is held till then)."""
    with anyio.CancelScope(shield=True):
        try:
            await send.send(completion)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        await completion.written.wait()
