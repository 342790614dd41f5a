"""One job per submission, even when a create we stopped waiting for lands late.

Neither service makes a batch create idempotent: "a repeated create makes a second
job" (docs/PROTOCOL.md, section 5), and neither documents a request id for it. A
create whose answer was lost (the process was killed, the connection dropped, the
wait timed out) may still be finishing on the server, so a look-up that finds nothing
does not prove that no job will appear: the SDK even tells the server how long the
request may run (``X-Server-Timeout``, google/genai/_api_client.py
``_populate_server_timeout_header``), and our requests allow up to 120 s. Waiting out
that bound before every recovery would cost minutes, and a server is not known to
stop work it has accepted when the deadline passes.

So the tool stays safe under every answer by looking again: every job that carries a
submission's token (its display name, see ``_names``) beside the one we keep is a
twin, and a twin that has not ended is cancelled, before it runs where we can. Which
job is kept: the one the journal records, when it records one (its results are the
ones the tool collects); else the oldest live one (it is the furthest on).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from .._backends import END_STATES, Job
from .._errors import ApiError
from .._events import EventHandler, TwinFound
from .._identity import token_of
from .._journal import JobLine, batch_name_of, batch_state_of
from .._retry import describe

#: A journal line's field: its job was created or adopted after a look-up, so a create
#: of an earlier attempt may still land beside it; run looks for twins while it watches.
LOOK_FOR_TWINS = "look_for_twins"


def job_id(name: str | None) -> str:
    """A job's id: Vertex names a job by project number or id alike, so compare ids."""
    return (name or "").rsplit("/", 1)[-1]


def _state(batch: Job) -> str:
    return batch.state if batch.state is not None else ""


def _age_order(batch: Job) -> tuple[float, str]:
    created = batch.create_time.timestamp() if batch.create_time else 0.0
    return created, job_id(batch.name)


def keeper(batches: Sequence[Job], recorded: str | None = None) -> Job:
    """The job to keep of ``batches`` (all carrying one token; not empty)."""
    if recorded is not None:
        for batch in batches:
            if job_id(batch.name) == job_id(recorded):
                return batch
    live = [b for b in batches if _state(b) not in END_STATES]
    return min(live or batches, key=_age_order)


def twins_to_cancel(batches: Sequence[Job], kept: Job) -> list[Job]:
    """The jobs beside ``kept`` that may still run (an ended one costs nothing more)."""
    return [
        b for b in batches if job_id(b.name) != job_id(kept.name) and _state(b) not in END_STATES
    ]


async def cancel_twins(
    path: str,
    batches: Sequence[Job],
    kept: Job,
    cancel: Callable[[str], Awaitable[None]],
    emit: EventHandler,
) -> list[str]:
    """Cancel every twin of ``kept`` that may still run; the names cancelled.

    A cancel that fails is reported, not raised: the kept job is sound either way, and
    the next look (a later poll, a later run) tries again.
    """
    cancelled: list[str] = []
    for twin in twins_to_cancel(batches, kept):
        name = twin.name or ""
        try:
            await cancel(name)
        except ApiError as exc:
            emit(TwinFound(path, kept.name or "", name, cancelled=False, reason=describe(exc)))
            continue
        cancelled.append(name)
        emit(TwinFound(path, kept.name or "", name, cancelled=True))
    return cancelled


async def cancel_recorded_twins(
    lines: Sequence[JobLine],
    list_batches: Callable[[], Awaitable[list[Job]]],
    cancel: Callable[[str], Awaitable[None]],
    emit: EventHandler,
) -> None:
    """One listing for the unfinished jobs marked LOOK_FOR_TWINS; the twins of each are
    cancelled. Only when the listing shows the recorded job itself: a listing that lags
    behind never makes us cancel the job the journal records."""
    marked = [ln for ln in lines if ln.get(LOOK_FOR_TWINS) and batch_state_of(ln) not in END_STATES]
    if not marked:
        return
    try:
        grouped = by_token(await list_batches())
    except ApiError:
        return  # the next poll looks again
    for line in marked:
        found = grouped.get(token_of(str(line.get("display_name", ""))) or "", [])
        recorded = batch_name_of(line)
        if len(found) > 1 and any(job_id(b.name) == job_id(recorded) for b in found):
            kept = keeper(found, recorded)
            await cancel_twins(str(line.get("input_file", "")), found, kept, cancel, emit)


def by_token(batches: Sequence[Job]) -> dict[str, list[Job]]:
    """Our batches grouped by the token their display name carries."""
    found: dict[str, list[Job]] = {}
    for batch in batches:
        token = token_of(batch.display_name)
        if token is not None:
            found.setdefault(token, []).append(batch)
    return found
