"""Capacity: the service's job window and quotas, and who may start now.

The Batch API allows 100 unfinished ("concurrent") batch jobs per project, 20 GB
of stored uploads and a per-model enqueued-token quota that depends on the
project's tier (Source: ai.google.dev/gemini-api/docs/rate-limits, "Batch API"
section; ai.google.dev/gemini-api/docs/batch-mode), and answers 429
RESOURCE_EXHAUSTED past them. Such a refusal is not a failure of the file: it
**waits for capacity** (``run``) or is **deferred** to a later run (``submit``,
exit code 3). Only a rate limit on another call is retried and, when it outlasts
the retries, fails the file.

Which 429 is which is decided where the service's errors are translated, in
``_backends/_quota.py`` (:func:`limit_of`); this module counts ahead so that the
service's 429 stays rare: the window and (when the user gives it) the token quota
are counted like storage, and no upload starts that cannot fit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import anyio

from ._backends import Job
from ._errors import ApiError
from ._errors import Limit as Limit  # re-exported: the gate speaks in limits
from ._settings import UPLOAD_LIFETIME_S


def estimated_tokens(size_bytes: int) -> int:
    """Enqueued tokens a job of this many bytes of JSONL counts, estimated: one per
    4 bytes. The service counts the requests' input tokens, which no API reports
    before the job runs; the JSON around the text makes this an overestimate, so
    counting with it errs on the side of waiting."""
    return max(1, -(-size_bytes // 4))


@dataclass(frozen=True)
class Load:
    """The project's unfinished jobs (by name) and the estimated tokens of ours among
    them, for the run's model, from one listing."""

    jobs: frozenset[str]
    tokens: Mapping[str, int] = field(default_factory=dict)


#: Lists the project's jobs and counts them (None when the listing failed).
Recount = Callable[[], Awaitable[Load]]


def load_of(batches: Iterable[Job], lines: Iterable[Mapping[str, Any]], model: str) -> Load:
    """The load a listing shows. A job in a state the SDK does not know counts as
    unfinished (``done`` is False for it): counting one too many only waits."""
    unfinished = frozenset(b.name for b in batches if b.name and not b.done)
    tokens: dict[str, int] = {}
    for line in lines:
        batch = line.get("batch")
        name = batch.get("name") if isinstance(batch, dict) else None
        pack = line.get("pack")  # a packed job's lines each name one input: count the job
        size = pack.get("size_bytes") if isinstance(pack, dict) else line.get("size_bytes")
        if name in unfinished and line.get("model") == model and isinstance(size, int):
            tokens[str(name)] = estimated_tokens(size)
    return Load(unfinished, tokens)


class Admission:
    """The gate every file passes before it uploads.

    Counted ahead, so a file that cannot fit does not upload: storage (the bytes of
    our unfinished uploads against ``storage_bytes``), the job window (the project's
    unfinished jobs, from a listing, against ``job_window``) and, when the user gives
    it, the enqueued-token quota (our unfinished jobs' estimated tokens against
    ``token_quota``; other tools' jobs in the project are invisible to it).

    A refusal by the service closes the gate; it opens again when a job of ours ends
    or a create goes through, or, while waiting, after a probe delay that doubles
    from ``probe_seconds`` to ``probe_max_seconds``: then one file tries (the window
    may be full of jobs we cannot see end), not every file. A counted limit is
    re-counted (one listing) at each probe instead.
    """

    def __init__(
        self,
        *,
        waits: bool,
        storage_bytes: int,
        held_bytes: int = 0,
        probe_seconds: float = 60.0,
        probe_max_seconds: float = 960.0,
        job_window: int | None = None,
        token_quota: int | None = None,
        recount: Recount | None = None,
    ) -> None:
        self.waits = waits
        self.storage_bytes = storage_bytes
        self.held_bytes = held_bytes
        self.probe_seconds = probe_seconds
        self.probe_max_seconds = max(probe_seconds, probe_max_seconds)
        self.job_window = job_window
        self.token_quota = token_quota
        self._recount = recount
        #: Why the gate is closed, or None while it is open.
        self.closed_by: Limit | None = None
        #: The project's unfinished jobs, None until a listing counted them.
        self._jobs: set[str] | None = None
        #: Estimated tokens of our unfinished jobs, by job name.
        self._tokens: dict[str, int] = {}
        #: Files admitted whose create has not answered yet, and their tokens.
        self._reserved_jobs = 0
        self._reserved_tokens = 0
        self._probing = False
        self._probe_delay = probe_seconds
        self._counted = False
        self._first_count = anyio.Lock()
        self._counting: anyio.Event | None = None
        self._changed = anyio.Event()

    # -- what is known ---------------------------------------------------------------
    @property
    def unfinished_jobs(self) -> int | None:
        """The project's unfinished jobs as last counted (None: never counted)."""
        return None if self._jobs is None else len(self._jobs)

    @property
    def enqueued_tokens(self) -> int:
        return sum(self._tokens.values()) + self._reserved_tokens

    def reason(self, limit: Limit) -> str:
        """What to tell the user: the limit and what we know of it, never a guessed name."""
        jobs = self.unfinished_jobs
        if limit is Limit.REFUSED:
            known = "" if jobs is None else f"; {jobs} of the project's jobs are unfinished"
            return f"the service refused new jobs (429 without a reason{known})"
        if limit is Limit.JOBS and jobs is not None and self.job_window is not None:
            held = jobs + self._reserved_jobs
            return (
                f"the job window is full: {held} of {self.job_window} jobs unfinished or starting"
            )
        if limit is Limit.TOKENS and self.token_quota is not None:
            return (
                f"the enqueued-token quota is full: about {self.enqueued_tokens} of "
                f"{self.token_quota} tokens enqueued by our jobs"
            )
        return str(limit.value)

    def never_fits(self, tokens: int) -> str | None:
        """Why a job of ``tokens`` can never be admitted, or None."""
        if self.token_quota is None or tokens <= self.token_quota:
            return None
        return (
            f"can never fit the enqueued-token quota: about {tokens} tokens (estimated as "
            f"bytes / 4) against a quota of {self.token_quota}; split the file into smaller "
            "jobs (--max-bytes-per-job)"
        )

    # -- what happened ---------------------------------------------------------------
    def refused(self, limit: Limit) -> None:
        """The service refused a file for ``limit``: no new file starts until capacity returns."""
        self.closed_by = limit
        self._probing = False

    def capacity_returned(self) -> None:
        """Capacity is back (a job ended, a create went through): let files try again."""
        self.closed_by = None
        self._probing = False
        self._probe_delay = self.probe_seconds
        self._wake_waiters()

    def created(self, name: str, tokens: int) -> None:
        """An admitted file's job exists: it holds a place in the window and its tokens."""
        self._unreserve(tokens)
        if self._jobs is not None:
            self._jobs.add(name)
        self._tokens[name] = tokens
        if self.closed_by is not None and self.closed_by is not Limit.STORAGE:
            self.capacity_returned()  # the service took a job: there is room again

    def not_created(self, tokens: int) -> None:
        """An admitted file made no job (failed or deferred): its reservation goes."""
        self._unreserve(tokens)
        self._probing = False  # if it was the probe, the next wait probes again
        self._wake_waiters()

    def job_ended(self, name: str) -> None:
        """A job ended: its place in the window and its tokens are free (once per job)."""
        if self._jobs is not None:
            self._jobs.discard(name)
        self._tokens.pop(name, None)
        self.capacity_returned()

    def release_bytes(self, size: int) -> None:
        """An upload we counted was deleted (or never made): storage is free again."""
        self.held_bytes = max(0, self.held_bytes - size)
        if self.closed_by is Limit.STORAGE:
            self.closed_by = None
        self._wake_waiters()

    def _unreserve(self, tokens: int) -> None:
        self._reserved_jobs = max(0, self._reserved_jobs - 1)
        self._reserved_tokens = max(0, self._reserved_tokens - tokens)

    def _wake_waiters(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- counting --------------------------------------------------------------------
    async def recount(self) -> None:
        """List the project's jobs and count them again; callers arriving while a
        listing runs share it. A listing that fails keeps the old count."""
        if self._recount is None:
            return
        if self._counting is not None:
            await self._counting.wait()
            return
        done = self._counting = anyio.Event()
        try:
            load = await self._recount()
        except ApiError:
            return  # unknown: the service's own 429 is the limit then
        finally:
            self._counting = None
            done.set()
        self._jobs = set(load.jobs)
        self._tokens = dict(load.tokens)
        self._wake_waiters()

    async def _count_once(self) -> None:
        """The first listing, before any file is admitted (every file waits for it)."""
        if self._counted or (self.job_window is None and self.token_quota is None):
            return
        async with self._first_count:
            if not self._counted:
                await self.recount()
                self._counted = True

    # -- the gate --------------------------------------------------------------------
    async def admit(
        self,
        size: int,
        on_wait: Callable[[Limit], None] = lambda limit: None,
        tokens: int = 0,
    ) -> Limit | None:
        """None once the file may upload (its bytes, place and tokens now reserved);
        else, when not waiting, the limit that defers it. ``on_wait`` hears each new
        reason to wait."""
        await self._count_once()
        waited_for: Limit | None = None
        while True:
            limit = self._limit_for(size, tokens)
            if limit is None:
                self._reserve(size, tokens)
                return None
            if not self.waits:
                return limit
            if limit is not waited_for:
                waited_for = limit
                on_wait(limit)
            with anyio.move_on_after(self._probe_delay) as timer:
                await self._changed.wait()
            if not timer.cancelled_caught:
                continue
            # Nothing we can see changed: jobs we do not own may have ended.
            self._probe_delay = min(self._probe_delay * 2, self.probe_max_seconds)
            if self.closed_by is None and limit in (Limit.JOBS, Limit.TOKENS):
                await self.recount()
            elif limit is not Limit.STORAGE and not self._probing:
                # This one file tries; its create reopens the gate for all or closes it again.
                self._probing = True
                self._reserve(size, tokens)
                return None

    def _reserve(self, size: int, tokens: int) -> None:
        self.held_bytes += size
        self._reserved_jobs += 1
        self._reserved_tokens += tokens

    def _limit_for(self, size: int, tokens: int) -> Limit | None:
        if self.closed_by is not None:
            return self.closed_by
        if self.held_bytes and self.held_bytes + size > self.storage_bytes:
            return Limit.STORAGE
        jobs = self.unfinished_jobs
        if (
            self.job_window is not None
            and jobs is not None
            and jobs + self._reserved_jobs >= self.job_window
        ):
            return Limit.JOBS
        if self.token_quota is not None and self.enqueued_tokens + tokens > self.token_quota:
            return Limit.TOKENS
        return None


def bytes_held(lines: Iterable[Mapping[str, Any]], now: datetime) -> int:
    """Storage our recorded uploads still take: those not deleted and not yet expired."""
    held = 0
    for line in lines:
        size = line.get("size_bytes")
        if not isinstance(size, int) or line.get("upload_deleted_at"):
            continue
        submitted = _parse_time(line.get("submitted_at"))
        if submitted is not None and (now - submitted).total_seconds() > UPLOAD_LIFETIME_S:
            continue
        held += size
    return held


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
