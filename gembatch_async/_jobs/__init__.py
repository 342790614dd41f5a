"""After submit: status, watch, result download, cancel and cleanup of recorded jobs.

Everything works from the journal: only jobs (and uploads) that it records are
ever touched, never the rest of the Google project (the original gembatch's
cleanup deleted every file and batch it could see).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .._backends import (
    END_STATES,
    RESULT_STATES,
    BatchDetail,
    JobsApi,
    VertexTarget,
    is_upload_name,
    output_of,
)
from .._backends._sessions import GenaiClient, every_target, jobs_session
from .._errors import ApiError, PermanentApiError, UsageError
from .._events import BatchStats, JournalProblem
from .._identity import base_identity_of_line, input_location, outside_reason
from .._journal import JobLine, Journal, JournalView, batch_name_of, batch_state_of, is_round_line
from .._names import display_path
from .._prices import Cost, PriceOverride, price_answers
from .._results import (
    ResultCounts,
    ResultFile,
    ResultTargets,
    fetch_results,
    plan_targets,
    result_targets,
    results_are_current,
)
from .._results._once import downloads_once
from .._results._remainder import completed_jobs, with_upload_deleted
from .._retry import call_with_retries, describe
from .._settings import DEFAULT_JOB_INFO, RetrySettings, checked_path
from ._listing import JobListing
from ._pace import Pace

T = TypeVar("T")
_CONCURRENCY = 8
#: The service's turnaround target, and the age at which it expires a job (USERS.md P7).
TARGET_HOURS = 24
EXPIRY_HOURS = 48
EXPIRY_WARNING_HOURS = 6
#: Results built at once: it is CPU work (the GIL serialises it anyway) and each
#: holds a few MiB, so downloads overlap but memory does not add up.
_BUILDS_AT_ONCE = 2


@dataclass(frozen=True)
class JobStatus:
    """One recorded job as the API sees it now (or why it could not be read)."""

    path: str
    batch_name: str
    state: str
    age_seconds: float | None
    output_file: str | None
    #: Why the state could not be refreshed (the API call failed).
    error: str | None = None
    #: What the last download of this job's results held (from the journal), if any.
    results: ResultCounts | None = None
    #: Request counts from the service's batchStats, when it gave them.
    stats: BatchStats | None = None
    #: The job's own error, as the service reports it (e.g. for a FAILED job).
    batch_error: str | None = None
    #: A warning about the job's age: past the 24 h target, or near the 48 h expiry.
    notice: str | None = None
    #: The refresh failed for good (the batch is gone, or not ours to see): asking
    #: again will not help.
    error_is_final: bool = False
    #: Where the input is, whatever folder the command runs in (see ``_identity``).
    location: str = ""
    #: For one part of a split input: which part, of how many.
    part: int | None = None
    parts: int | None = None
    #: What was submitted (of this part): its size and sha256, as the journal records them.
    submitted: tuple[int, str] | None = None
    #: For a job that sends an input's unanswered requests again (a round): the input's
    #: earlier jobs it completes, oldest first; their answers and its own are one result.
    completes: tuple[JobStatus, ...] = ()
    #: For a round: requests in the input, and how many earlier jobs answered.
    input_requests: int | None = None
    answered_before: int = 0
    #: The model the job runs (as the journal records it), to price its tokens.
    model: str = ""
    #: What the answers of the last download cost (None: no usage recorded).
    cost: Cost | None = None
    #: For one input of a packed job: the prefix its requests' keys were sent with.
    key_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.notice is None:
            object.__setattr__(self, "notice", _age_notice(self.state, self.age_seconds))
        if not self.location:
            object.__setattr__(self, "location", self.path)

    @property
    def done(self) -> bool:
        return self.state in END_STATES

    @property
    def input_counts(self) -> tuple[int, int, int] | None:
        """For a round: the input's requests answered, failed and pending across all its
        jobs (the last download's counts once there is one); None for any other job. A
        part's round counts the part's requests until a download counts the input's."""
        if not self.completes or self.input_requests is None:
            return None
        total = self.input_requests
        if self.results is not None:  # the whole input's results, also on a part's line
            total = self.results.requests if self.part is not None else total
            return self.results.responses, total - self.results.responses, 0
        stats = self.stats
        answered = self.answered_before + (stats.succeeded if stats is not None else 0)
        if self.done:
            pending = 0
        else:  # what this job carries and has not done yet
            pending = stats.pending if stats is not None else total - self.answered_before
        return answered, max(0, total - answered - pending), pending

    @property
    def created_at(self) -> float | None:
        """When the job was created (epoch seconds), if known."""
        return None if self.age_seconds is None else time.time() - self.age_seconds


def _age_notice(state: str, age_seconds: float | None) -> str | None:
    if state in END_STATES or age_seconds is None:
        return None
    hours = age_seconds / 3600
    if hours >= EXPIRY_HOURS - EXPIRY_WARNING_HOURS:
        left = max(0.0, EXPIRY_HOURS - hours)
        return f"expires in {left:.0f}h unless it finishes (the service ends jobs at 48 h)"
    if hours >= TARGET_HOURS:
        return f"stuck? unfinished after {hours:.0f}h (the service targets 24 h)"
    return None


@dataclass(frozen=True)
class JobsContext:
    """A journal and a client, opened together for one command."""

    journal: Journal
    api: JobsApi
    retry: RetrySettings
    #: Lines of the journal that could not be read, found on opening it.
    problems: tuple[JournalProblem, ...] = ()
    #: Rates to price tokens with instead of genai-prices' (``--price``).
    prices: PriceOverride | None = None

    def recorded(self, paths: Sequence[str] | None = None) -> list[JobLine]:
        """The latest job line of each input (of ``paths`` when given)."""
        view = self.journal.refresh()
        if not paths:
            return list(view.latest.values())
        checked = [checked_path(p, "paths") for p in paths]
        wanted = {_named_identity(view, p): p for p in checked}
        missing = [p for identity, p in wanted.items() if identity not in view.latest_by_base]
        if missing:
            shown = ", ".join(display_path(p) for p in missing)
            raise UsageError(f"not in {display_path(self.journal.given)}: {shown}")
        by_input: dict[str, list[JobLine]] = {}
        for line in view.latest.values():  # a split input's lines: every part's
            by_input.setdefault(base_identity_of_line(line, view.root), []).append(line)
        return [line for identity in wanted for line in by_input[identity]]

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(self.retry, call)


def _named_identity(view: JournalView, path: str) -> str:
    """A file named on the command line: its identity in the journal (``_identity``),
    by its content too when its name alone does not find it (a hard link)."""
    identity = view.identity_of(path)
    if identity in view.latest_by_base:
        return identity
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return identity
    return view.identity_of(path, digest.hexdigest())


@asynccontextmanager
async def open_jobs(
    job_info: str | os.PathLike[str] = DEFAULT_JOB_INFO,
    *,
    client: GenaiClient | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    retry: RetrySettings | None = None,
    vertex: VertexTarget | None = None,
    prices: PriceOverride | None = None,
) -> AsyncIterator[JobsContext]:
    """Open the journal and a client for the job commands; closes both. ``prices``
    overrides the rates that price the answers' tokens.

    Each job is asked of the backend its line records (Vertex with the line's
    project, location and bucket unless ``vertex`` gives them)."""
    job_info = checked_path(job_info, "job_info")
    targets = every_target(client, api_key=api_key, base_url=base_url, vertex=vertex)
    if not await anyio.Path(job_info).exists():
        raise UsageError(
            f"no journal at {display_path(job_info)}: nothing has been submitted from here"
        )
    journal = Journal(job_info)
    view = await anyio.to_thread.run_sync(journal.open)
    try:
        lines = list(view.latest.values())
        async with jobs_session(lines, targets) as api:
            yield JobsContext(journal, api, retry or RetrySettings(), tuple(view.problems), prices)
    finally:
        journal.close()


async def _for_each(items: Sequence[T], work: Callable[[T], Awaitable[None]]) -> None:
    """Run ``work`` on every item, a bounded number at once."""
    limiter = anyio.CapacityLimiter(_CONCURRENCY)

    async def one(item: T) -> None:
        async with limiter:
            await work(item)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)


# -- status -----------------------------------------------------------------------------
async def refresh_status(jobs: JobsContext, paths: Sequence[str] | None = None) -> list[JobStatus]:
    """Ask the API for each recorded job's state and write it back to the journal."""
    return await refresh_lines(jobs, jobs.recorded(paths))


async def refresh_lines(
    jobs: JobsContext, lines: list[JobLine], listing: JobListing | None = None
) -> list[JobStatus]:
    """The status of each line, in the same order (ended jobs from the journal alone).
    One request per job, however many lines record it (a packed job has one per input).

    With ``listing``, unfinished jobs are read from the job listing first
    (``_listing``) and only those it cannot answer for are asked one by one."""
    roots = jobs.journal.roots
    unfinished = list(
        dict.fromkeys(batch_name_of(ln) for ln in lines if batch_state_of(ln) not in END_STATES)
    )
    listed = await listing.find(unfinished) if listing is not None and unfinished else {}
    answers: dict[str, BatchDetail | ApiError] = dict(listed)

    async def ask(name: str) -> None:
        try:
            answers[name] = await jobs.call(lambda: jobs.api.get_batch_detail(name))
        except ApiError as exc:
            answers[name] = exc

    await _for_each([name for name in unfinished if name not in listed], ask)
    fresh = {name: a for name, a in answers.items() if not isinstance(a, ApiError)}
    if fresh:
        await anyio.to_thread.run_sync(jobs.journal.rewrite, _with_fresh_batches(fresh))
    statuses = [_status_of(line, roots, answers.get(batch_name_of(line))) for line in lines]
    return [_priced(status, jobs.prices) for status in statuses]


def _priced(status: JobStatus, prices: PriceOverride | None) -> JobStatus:
    """The status with what its last download's answers cost, when it recorded usage."""
    usage = status.results.usage if status.results is not None else None
    cost = price_answers(usage, status.model, status.created_at, prices)
    return status if cost is None else replace(status, cost=cost)


def _status_of(
    line: JobLine, roots: Sequence[str], answer: BatchDetail | ApiError | None
) -> JobStatus:
    """A line's status from the service's answer (None: settled, from the journal)."""
    if answer is None or batch_state_of(line) in END_STATES:  # settled: nothing can change
        return _status_from_line(line, roots)
    if isinstance(answer, ApiError):
        return replace(
            _status_from_line(line, roots, error=describe(answer)),
            error_is_final=isinstance(answer, PermanentApiError),
        )
    return _status_from_batch(line, roots, answer)


def _with_fresh_batches(fresh: dict[str, BatchDetail]) -> Callable[[JobLine], JobLine]:
    checked = datetime.now(timezone.utc).isoformat()

    def update(line: JobLine) -> JobLine:
        detail = fresh.get(batch_name_of(line))
        if detail is None:
            return line
        updated = {**line, "batch": detail.job.journal_form(), "status_checked_at": checked}
        if detail.stats is not None:
            updated["batch_stats"] = dataclasses.asdict(detail.stats)
        if detail.error is not None:
            updated["batch_error"] = detail.error
        return updated

    return update


def _recorded_results(line: JobLine) -> ResultCounts | None:
    counts = ResultCounts.from_dict(line.get("results"))
    return counts if counts is not None and counts.batch_name == batch_name_of(line) else None


def _status_from_batch(line: JobLine, roots: Sequence[str], detail: BatchDetail) -> JobStatus:
    batch = detail.job
    state = batch.state if batch.state is not None else "JOB_STATE_UNSPECIFIED"
    age = (
        (datetime.now(timezone.utc) - batch.create_time).total_seconds()
        if batch.create_time
        else None
    )
    output = batch.output
    return JobStatus(
        str(line["input_file"]),
        batch.name or "",
        state,
        age,
        output,
        results=_recorded_results(line),
        stats=detail.stats,
        batch_error=detail.error,
        location=input_location(line, roots),
        part=_part_of(line)[0],
        parts=_part_of(line)[1],
        submitted=_submitted(line),
        **_round_fields(line, roots),
        model=_model_of(line),
        key_prefix=_key_prefix(line),
    )


def _round_fields(line: JobLine, roots: Sequence[str]) -> dict[str, Any]:
    """What a round's line adds to its status: the jobs it completes, and the counts."""
    refs = completed_jobs(line)
    if not refs:
        return {}
    location = input_location(line, roots)
    total, before = line.get("input_requests"), line.get("answered_before")
    return {
        "completes": tuple(
            JobStatus(
                str(line["input_file"]),
                ref.batch,
                ref.state,
                None,
                ref.output,
                location=location,
                key_prefix=ref.key_prefix,
            )
            for ref in refs
        ),
        "input_requests": total if isinstance(total, int) else None,
        "answered_before": before if isinstance(before, int) else 0,
    }


def _model_of(line: JobLine) -> str:
    model = line.get("model")
    return model if isinstance(model, str) else ""


def _key_prefix(line: JobLine) -> str | None:
    """The key prefix of a packed job's input (``_submit/_pack``), else None."""
    pack = line.get("pack")
    prefix = pack.get("key_prefix") if isinstance(pack, dict) else None
    return prefix if isinstance(prefix, str) and prefix else None


def _submitted(line: JobLine) -> tuple[int, str] | None:
    """(size, sha256) of the input the line's job was made from; None when not recorded.
    A round's line records its own file's and, beside them, the whole input's (a part's
    round, the part's)."""
    if is_round_line(line) and "part" in line:
        size, sha = line.get("part_size_bytes"), line.get("part_sha256")
    elif is_round_line(line):
        size, sha = line.get("input_size_bytes"), line.get("input_sha256")
    else:
        size, sha = line.get("size_bytes"), line.get("sha256")
    if isinstance(size, int) and not isinstance(size, bool) and isinstance(sha, str):
        return size, sha
    return None


def _part_of(line: JobLine) -> tuple[int | None, int | None]:
    """(part, parts) of a split input's line, else (None, None)."""
    part, parts = line.get("part"), line.get("parts")
    if isinstance(part, int) and isinstance(parts, int) and parts > 1:
        return part, parts
    return None, None


def _status_from_line(line: JobLine, roots: Sequence[str], error: str | None = None) -> JobStatus:
    batch = line.get("batch") if isinstance(line.get("batch"), dict) else {}
    assert isinstance(batch, dict)
    created = batch.get("create_time")
    age = None
    if isinstance(created, str):
        try:
            age = (
                datetime.now(timezone.utc) - datetime.fromisoformat(created.replace("Z", "+00:00"))
            ).total_seconds()
        except ValueError:
            age = None
    output = output_of(batch)
    recorded_error = line.get("batch_error")
    return JobStatus(
        str(line["input_file"]),
        batch_name_of(line),
        batch_state_of(line),
        age,
        output,
        error,
        _recorded_results(line),
        _recorded_stats(line.get("batch_stats")),
        recorded_error if isinstance(recorded_error, str) else None,
        location=input_location(line, roots),
        part=_part_of(line)[0],
        parts=_part_of(line)[1],
        submitted=_submitted(line),
        **_round_fields(line, roots),
        model=_model_of(line),
        key_prefix=_key_prefix(line),
    )


def _recorded_stats(value: object) -> BatchStats | None:
    """The counts a refresh wrote to the journal line, if they are whole."""
    if not isinstance(value, dict):
        return None
    counts = [value.get(name) for name in ("requests", "succeeded", "failed", "pending")]
    if not all(isinstance(count, int) for count in counts):
        return None
    return BatchStats(*counts)  # type: ignore[arg-type]


async def watch_status(
    jobs: JobsContext,
    on_change: Callable[[JobStatus], None],
    *,
    paths: Sequence[str] | None = None,
    interval: float = 30.0,
) -> list[JobStatus]:
    """Refresh until every job has ended, reporting each state change once.

    The jobs are read from the job listing (``_listing``), and the wait between
    refreshes adapts (``_pace``): short after a change, up to ``interval``."""
    seen: dict[str, str] = {}
    listing = JobListing(jobs.api, jobs.call)
    pace = Pace(interval)
    while True:
        statuses = await refresh_lines(jobs, jobs.recorded(paths), listing)
        changed = False
        for status in statuses:
            if seen.get(status.location) != status.state:
                changed = changed or status.location in seen
                seen[status.location] = status.state
                on_change(status)
        if all(s.done for s in statuses):
            return statuses
        await anyio.sleep(pace.next_wait(changed))


# -- download --------------------------------------------------------------------------
async def download_results(
    jobs: JobsContext,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    paths: Sequence[str] | None = None,
    force: bool = False,
    keep_raw: bool = False,
    on_result: Callable[[ResultFile], None] = lambda result: None,
) -> list[ResultFile]:
    """Write the results of each succeeded job, in input order (``_results``).

    Results go to ``<input dir>/results/<input name>``, or with ``out_dir`` to the
    input's path mirrored under it. Results already there (and newer than their
    job) are skipped unless ``force``. What each holds is recorded in the journal.
    """
    if out_dir is not None and await _exists_but_not_folder(checked_path(out_dir, "out_dir")):
        raise UsageError(f"--out {display_path(out_dir)} exists and is not a folder")
    statuses = await refresh_status(jobs, paths)
    ready = ready_inputs(statuses)
    refused: list[ResultFile] = []
    if not paths:  # files named in this command are the user's; the journal's lines are not
        ready, refused = _within_journal_folder(jobs, ready)
    refused = ended_inputs(statuses) + refused
    roots = jobs.journal.roots
    recorded = jobs.recorded()
    plan = plan_targets(
        [group[0].location for group in ready],
        out_dir,
        inputs=[input_location(line, roots) for line in recorded],
        written=_written_by(recorded, roots),
    )
    limiter = anyio.CapacityLimiter(_BUILDS_AT_ONCE)
    results: list[ResultFile | None] = [None] * len(ready)

    async def fetch(index: int) -> None:
        group = ready[index]
        choice = _Choice(out_dir, force, keep_raw, limiter)
        source = shared if reads_a_pack(group) else jobs  # a packed job's output: once
        result = await _results_of(source, group, plan[group[0].location], choice)
        written.update(_counts_by_batch(group, result))
        results[index] = result
        on_result(result)

    written: dict[tuple[str, str], ResultCounts] = {}
    for result in refused:
        on_result(result)
    async with downloads_once(jobs.api) as api:
        shared = replace(jobs, api=api)
        await _for_each(range(len(ready)), fetch)
    await _record_counts(jobs, written)  # one rewrite for the whole download
    return refused + [result for result in results if result is not None]


def _within_journal_folder(
    jobs: JobsContext, ready: list[list[JobStatus]]
) -> tuple[list[list[JobStatus]], list[ResultFile]]:
    """A journal never steers where we read or write (see ``_identity.outside_reason``):
    an input its line locates outside the journal's folder is not read and gets no
    results there; it is reported once, with its line, until the user names it."""
    view = jobs.journal.refresh()
    roots = jobs.journal.roots
    numbers = {
        input_location(line, roots): view.line_numbers.get(base_identity_of_line(line, view.root))
        for line in view.latest_by_base.values()
    }
    inside: list[list[JobStatus]] = []
    refused: list[ResultFile] = []
    for group in ready:
        status = group[0]
        reason = outside_reason(status.location, roots)
        if reason is None:
            inside.append(group)
            continue
        number = numbers.get(status.location)
        where = f"{jobs.journal.given} line {number}" if number else jobs.journal.given
        error = (
            f"not downloaded: {where}: {reason} ({status.location!r}); nothing was read or "
            "written for it; name the file to download its results: "
            "gembatch-async download PATH"
        )
        refused.append(ResultFile(status.path, status.batch_name, "", error=error))
    return inside, refused


def ended_inputs(statuses: Sequence[JobStatus]) -> list[ResultFile]:
    """Inputs whose job (or a part's) ended without results: one each, so none goes
    quietly; ``submit --retry-failed`` runs it again."""
    ended: dict[str, ResultFile] = {}
    for status in statuses:
        if status.completes:  # a round: its earlier jobs' answers are results
            continue
        if status.state in END_STATES - RESULT_STATES and status.location not in ended:
            ended[status.location] = ResultFile(
                status.path,
                status.batch_name,
                "",
                ended=status.state,
            )
    return list(ended.values())


def ready_inputs(statuses: Sequence[JobStatus]) -> list[list[JobStatus]]:
    """Succeeded jobs by input: a whole file alone; a split input's parts together, in
    part order, once every one of them has succeeded (results are one file per input)."""
    groups: dict[tuple[str, int | None], list[JobStatus]] = {}
    ready: list[list[JobStatus]] = []
    for status in statuses:
        ended_round = bool(status.completes) and status.done
        if ended_round and status.parts is None:  # a round: ready once it ended, however
            ready.append([status])
        elif ended_round or (status.state in RESULT_STATES and status.output_file):
            # a part (or a part's round): with its siblings
            groups.setdefault((status.location, status.parts), []).append(status)
    for (_, parts), members in groups.items():
        members.sort(key=lambda s: s.part or 0)
        if parts is None or [s.part for s in members] == list(range(1, parts + 1)):
            ready.append(members)
    return ready


async def collect_results(
    jobs: JobsContext,
    group: Sequence[JobStatus],
    out_dir: str | os.PathLike[str] | None,
    limiter: anyio.CapacityLimiter,
    together: Sequence[str] = (),
    *,
    record: bool = True,
    known: RecordedTargets | None = None,
) -> ResultFile:
    """One input's results (for ``run``; the jobs of all its parts, in order): written
    where ``download`` puts them, skipped when already current, refused on a
    collision (with the other inputs of the run, ``together``, too), recorded in the
    journal. ``known``: what the journal says now (:func:`recorded_targets`), when the
    caller collects many inputs' results before recording any."""
    location = group[0].location
    known = known or recorded_targets(jobs)
    plan = plan_targets(
        [location],
        out_dir,
        inputs=known.inputs,
        together=together,
        written=known.written,
    )
    result = await _results_of(jobs, group, plan[location], _Choice(out_dir, False, False, limiter))
    if record:
        await _record_counts(jobs, _counts_by_batch(group, result))
    return result


@dataclass(frozen=True)
class RecordedTargets:
    """What result targets must respect, from the journal: every recorded input's
    location, and the files each input's last download wrote (see plan_targets)."""

    inputs: list[str]
    written: dict[str, str]


def recorded_targets(jobs: JobsContext) -> RecordedTargets:
    roots = jobs.journal.roots
    recorded = jobs.recorded()
    return RecordedTargets(
        [input_location(line, roots) for line in recorded], _written_by(recorded, roots)
    )


async def record_results(
    jobs: JobsContext, collected: Sequence[tuple[Sequence[JobStatus], ResultFile]]
) -> None:
    """Record what several inputs' fresh results hold in one journal rewrite (results
    collected with ``record=False``: a packed job's inputs, which end together)."""
    written: dict[tuple[str, str], ResultCounts] = {}
    for group, result in collected:
        written.update(_counts_by_batch(group, result))
    await _record_counts(jobs, written)


def _written_by(lines: Sequence[JobLine], roots: Sequence[str]) -> dict[str, str]:
    """The files each input's last download wrote (path -> that input), as the journal
    records them: a later download of another input must not overwrite or remove them."""
    written: dict[str, str] = {}
    for line in lines:
        counts = ResultCounts.from_dict(line.get("results"))
        if counts is not None:
            owner = input_location(line, roots)
            for path in (counts.results_path, counts.failed_path):
                if path:
                    written[path] = owner
    return written


@dataclass(frozen=True)
class _Choice:
    """How a command wants results written."""

    out_dir: str | os.PathLike[str] | None
    force: bool
    keep_raw: bool
    limiter: anyio.CapacityLimiter


async def _results_of(
    jobs: JobsContext, group: Sequence[JobStatus], targets: ResultTargets | str, choice: _Choice
) -> ResultFile:
    status = group[0]
    if isinstance(targets, str):  # refused: it would collide
        where = str(result_targets(status.location, choice.out_dir).results)
        return ResultFile(status.path, status.batch_name, where, error=targets)
    created = [s.created_at for s in group]
    newest = None if None in created else max(c for c in created if c is not None)
    if not choice.force and await anyio.to_thread.run_sync(results_are_current, targets, newest):
        return _skipped(status, targets)
    submitted = [s.submitted for s in group]
    rounds = any(s.completes for s in group)
    result = await fetch_results(
        jobs.api,
        [job for s in group for job in (_newest_first(s) or [s])] if rounds else list(group),
        targets,
        retry=jobs.retry,
        keep_raw=choice.keep_raw,
        limiter=choice.limiter,
        submitted=None if None in submitted else [s for s in submitted if s is not None],
        superseding=rounds,
        key_prefix=status.key_prefix,
    )
    cost = price_answers(result.usage, status.model, newest, jobs.prices)
    return replace(result, model=status.model, created_at=newest, cost=cost)


def reads_a_pack(group: Sequence[JobStatus]) -> bool:
    """Whether an input's results read a packed job's output (its own job, or the first
    job of its rounds): shared by every input of the pack, it is downloaded once."""
    return any(job.key_prefix for status in group for job in (status, *status.completes))


def _newest_first(status: JobStatus) -> list[JobStatus]:
    """A round's job and the jobs it completes, newest first, those with an output: a
    request's newest answer is the one its results keep (see ``fetch_results``). The
    parts of a split input each have their own, in part order: a key is in one part."""
    return [s for s in (status, *reversed(status.completes)) if s.output_file]


def _counts_by_batch(
    group: Sequence[JobStatus], result: ResultFile
) -> dict[tuple[str, str], ResultCounts]:
    """What fresh results hold, for the line of each job they came from (by batch and
    input: a packed job has one line per input, each with its own results)."""
    if result.skipped or result.error is not None:
        return {}
    counts = result.counts()
    return {(status.batch_name, status.path): counts for status in group}


async def _record_counts(jobs: JobsContext, written: dict[tuple[str, str], ResultCounts]) -> None:
    if written:
        await anyio.to_thread.run_sync(jobs.journal.rewrite, _with_result_counts(written))


async def _exists_but_not_folder(path: str | os.PathLike[str]) -> bool:
    folder = anyio.Path(path)
    return await folder.exists() and not await folder.is_dir()


def _skipped(status: JobStatus, targets: ResultTargets) -> ResultFile:
    """Results already there: what the journal recorded of them, when it did."""
    counts = status.results
    if counts is None or counts.results_path != str(targets.results):
        return ResultFile(
            status.path, status.batch_name, str(targets.results), skipped=True, model=status.model
        )
    return ResultFile(
        status.path,
        status.batch_name,
        str(targets.results),
        responses=counts.responses,
        skipped=True,
        requests=counts.requests,
        failed_path=counts.failed_path,
        failed_by_code=counts.failed_by_code,
        missing_count=counts.missing,
        unexpected_keys=counts.unknown,
        usage=counts.usage,
        model=status.model,
        created_at=status.created_at,
        cost=status.cost,
    )


def _with_result_counts(
    written: dict[tuple[str, str], ResultCounts],
) -> Callable[[JobLine], JobLine]:
    def update(line: JobLine) -> JobLine:
        counts = written.get((batch_name_of(line), str(line["input_file"])))
        return line if counts is None else {**line, "results": counts.to_dict()}

    return update


# -- cancel ------------------------------------------------------------------------------
async def cancel_jobs(jobs: JobsContext, paths: Sequence[str] | None = None) -> list[JobStatus]:
    """Cancel every recorded job that has not ended (of ``paths`` when given)."""
    statuses = await refresh_status(jobs, paths)
    # One cancel per job, however many inputs it carries (a packed job has one line each).
    targets = list({s.batch_name: s for s in statuses if not s.done and s.error is None}.values())

    async def cancel(status: JobStatus) -> None:
        await jobs.call(lambda: jobs.api.cancel_batch(status.batch_name))

    await _for_each(targets, cancel)
    return await refresh_status(jobs, paths) if targets else statuses


# -- cleanup -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Cleaned:
    """A file cleanup deleted (or would delete), or could not."""

    path: str
    file_name: str
    deleted: bool
    error: str | None = None
    #: The service refused to delete it, as it does every output file: nothing to fix.
    kept: bool = False


#: Why a Gemini output file stays. The service checks a file id's length (at most 40
#: characters) before it deletes, and output files are named ``files/batch-`` and the
#: 36-character batch id: every delete of one answers 400 INVALID_ARGUMENT (python-genai#1759,
#: python-genai#1613, go-genai#436; USERS.md P3).
KEPT_BY_SERVICE = "the Gemini API does not let output files be deleted"


def kept_by_service(name: str, error: ApiError) -> bool:
    """Whether a refused delete is the service keeping one of its output files (reported
    as kept, not as a failure), rather than a delete that went wrong."""
    return (
        name.startswith("files/batch-")
        and isinstance(error, PermanentApiError)
        and error.code == 400
    )


async def cleanup_files(
    jobs: JobsContext, *, outputs: bool = False, dry_run: bool = False
) -> list[Cleaned]:
    """Delete the uploads of recorded jobs that have ended (and their outputs, if asked).

    Storage counts against the project's 20 GB quota for 48 h (USERS.md P2); a
    finished job no longer needs its input. The Gemini API refuses to delete its
    output files (USERS.md P3): each is reported kept (``Cleaned.kept``), which is
    no failure; other failures are reported and the rest carries on.
    """
    lines = jobs.recorded()
    targets: list[tuple[str, str]] = []
    for line, status in zip(lines, await refresh_lines(jobs, lines), strict=True):
        if not status.done:
            continue
        upload = line.get("uploaded_file_name")
        # An upload the journal records as deleted (by run, or found gone by an
        # earlier cleanup) is not listed again, nor asked for again.
        if isinstance(upload, str) and is_upload_name(upload) and not line.get("upload_deleted_at"):
            targets.append((status.path, upload))
        targets += [(status.path, name) for name in earlier_uploads(line) if name != upload]
        if outputs and status.output_file:
            targets.append((status.path, status.output_file))
    cleaned: list[Cleaned] = []

    async def delete(target: tuple[str, str]) -> None:
        path, name = target
        if dry_run:
            cleaned.append(Cleaned(path, name, deleted=False))
            return
        try:
            gone = await jobs.call(lambda: jobs.api.delete_file(name))
        except ApiError as exc:
            kept = kept_by_service(name, exc)
            error = None if kept else describe(exc)
            cleaned.append(Cleaned(path, name, deleted=False, error=error, kept=kept))
            return
        cleaned.append(Cleaned(path, name, deleted=gone, error=None if gone else "already gone"))

    await _for_each(targets, delete)
    gone = {c.file_name for c in cleaned if c.deleted or c.error == "already gone"}
    if gone:
        await anyio.to_thread.run_sync(jobs.journal.rewrite, with_uploads_deleted(gone))
    return sorted(cleaned, key=lambda c: (c.path, c.file_name))


def earlier_uploads(line: JobLine) -> list[str]:
    """The uploads, not yet deleted, of the ended jobs a round's line completes."""
    return [ref.upload for ref in completed_jobs(line) if ref.upload and is_upload_name(ref.upload)]


def with_uploads_deleted(names: set[str]) -> Callable[[JobLine], JobLine]:
    """Record on each line that its upload is gone: it holds no storage any more."""
    when = datetime.now(timezone.utc).isoformat()

    def update(line: JobLine) -> JobLine:
        if "completes" in line:  # a round: the uploads of the jobs it completes
            line = with_upload_deleted(line, names, when)
        if line.get("uploaded_file_name") in names and not line.get("upload_deleted_at"):
            return {**line, "upload_deleted_at": when}
        return line

    return update
