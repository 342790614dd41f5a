"""Capacity: the service's job window and quotas, and who may start now.

The Batch API allows about 100 unfinished batch jobs per project, 20 GB of stored
uploads and a per-model enqueued-token quota, and answers 429 RESOURCE_EXHAUSTED
past them. Such a refusal is not a failure of the file: it **waits for capacity**
(``run``) or is **deferred** to a later run (``submit``, exit code 3). Only a rate
limit is retried on its own timer.

Which 429 is which is read from the error body: the ``QuotaFailure`` detail's
``quotaMetric``/``quotaId`` when present, else the message. Google does not
document these strings for the Batch API; the words matched here are the ones its
quota names and messages use (``EnqueuedTokens``, ``batch jobs``, ``storage``), and
anything unrecognised is treated as a rate limit, the one 429 that is retried.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import anyio

from ._errors import ApiError
from ._settings import UPLOAD_LIFETIME_S


class Limit(enum.Enum):
    """What a 429 says is exhausted."""

    RATE = "rate limit"
    JOBS = "the job window is full"
    TOKENS = "the enqueued-token quota is full"
    STORAGE = "the storage quota is full"


_PATTERNS: tuple[tuple[Limit, re.Pattern[str]], ...] = (
    (Limit.TOKENS, re.compile(r"enqueued[\s_-]*tokens?", re.IGNORECASE)),
    (Limit.STORAGE, re.compile(r"storage|bytes", re.IGNORECASE)),
    (
        Limit.JOBS,
        re.compile(r"(unfinished|concurrent|active|running)[\s_-]*batch|batch[\s_-]*jobs", re.I),
    ),
)


def limit_of(error: ApiError) -> Limit | None:
    """The limit a 429 names, RATE for any other 429, None for other errors."""
    if error.code != 429:
        return None
    for text in (*_quota_names(error.details), error.message):
        for limit, pattern in _PATTERNS:
            if pattern.search(text):
                return limit
    return Limit.RATE


def _quota_names(details: tuple[dict[str, Any], ...]) -> list[str]:
    names: list[str] = []
    for detail in details:
        if not str(detail.get("@type", "")).endswith("QuotaFailure"):
            continue
        for violation in detail.get("violations") or []:
            if isinstance(violation, dict):
                names += [str(violation.get(k, "")) for k in ("quotaMetric", "quotaId")]
    return [name for name in names if name]


class Admission:
    """The gate every file passes before it uploads.

    A refusal for capacity closes it; it opens again when :meth:`capacity_returned`
    is called (a job of ours ended, or uploads were deleted), or, while waiting,
    after ``probe_seconds`` (the window may be full of jobs we do not own, whose
    end we cannot see: then one file tries again, not every file). Storage is
    counted ahead: a file whose upload would take the bytes held by our unfinished
    uploads past ``storage_bytes`` does not start.
    """

    def __init__(
        self,
        *,
        waits: bool,
        storage_bytes: int,
        held_bytes: int = 0,
        probe_seconds: float = 60.0,
    ) -> None:
        self.waits = waits
        self.storage_bytes = storage_bytes
        self.held_bytes = held_bytes
        self.probe_seconds = probe_seconds
        #: Why the gate is closed, or None while it is open.
        self.closed_by: Limit | None = None
        self._probing = False
        self._changed = anyio.Event()

    def refused(self, limit: Limit) -> None:
        """The service refused a file for ``limit``: no new file starts until capacity returns."""
        self.closed_by = limit
        self._probing = False

    def capacity_returned(self) -> None:
        """A job ended, or a create went through: let files try again."""
        self.closed_by = None
        self._probing = False
        self._wake_waiters()

    def release_bytes(self, size: int) -> None:
        """An upload we counted was deleted (or never made): storage is free again."""
        self.held_bytes = max(0, self.held_bytes - size)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def admit(
        self, size: int, on_wait: Callable[[Limit], None] = lambda limit: None
    ) -> Limit | None:
        """None once the file may upload (its bytes now counted as held); else, when
        not waiting, the limit that defers it. ``on_wait`` hears each new reason to wait."""
        waited_for: Limit | None = None
        while True:
            limit = self._limit_for(size)
            if limit is None:
                self.held_bytes += size
                return None
            if not self.waits:
                return limit
            if limit is not waited_for:
                waited_for = limit
                on_wait(limit)
            with anyio.move_on_after(self.probe_seconds) as timer:
                await self._changed.wait()
            if timer.cancelled_caught and limit is not Limit.STORAGE and not self._probing:
                # Nothing we can see reopened it: this one file tries; its create
                # either reopens the gate for all or closes it again.
                self._probing = True
                self.held_bytes += size
                return None

    def _limit_for(self, size: int) -> Limit | None:
        if self.closed_by is not None:
            return self.closed_by
        if self.held_bytes and self.held_bytes + size > self.storage_bytes:
            return Limit.STORAGE
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
