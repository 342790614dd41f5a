"""After submit: status, watch, result download, cancel and cleanup of recorded jobs.

Everything works from the journal: only jobs (and uploads) that it records are
ever touched, never the rest of the Google project (the original gembatch's
cleanup deleted every file and batch it could see).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

import anyio
import anyio.to_thread
from google import genai
from google.genai import types

from ._client import GeminiApi, api_session, batch_to_dict
from ._errors import ApiError, UsageError
from ._inputs import normalise_path
from ._journal import JobLine, Journal, batch_name_of, batch_state_of
from ._results import (
    ResultCounts,
    ResultFile,
    ResultTargets,
    fetch_results,
    plan_targets,
    result_targets,
    results_are_current,
)
from ._retry import call_with_retries, describe
from ._settings import DEFAULT_JOB_INFO, RetrySettings

T = TypeVar("T")
#: Job states after which nothing more happens to a batch (USERS.md P5, P7).
END_STATES = frozenset(
    {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
)
_CONCURRENCY = 8
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
    error: str | None = None
    #: What the last download of this job's results held (from the journal), if any.
    results: ResultCounts | None = None

    @property
    def done(self) -> bool:
        return self.state in END_STATES

    @property
    def created_at(self) -> float | None:
        """When the job was created (epoch seconds), if known."""
        return None if self.age_seconds is None else time.time() - self.age_seconds


@dataclass(frozen=True)
class JobsContext:
    """A journal and a client, opened together for one command."""

    journal: Journal
    api: GeminiApi
    retry: RetrySettings

    def recorded(self, paths: Sequence[str] | None = None) -> list[JobLine]:
        """The latest job line of each input (of ``paths`` when given)."""
        view = self.journal.refresh()
        if not paths:
            return list(view.latest.values())
        wanted = [normalise_path(p) for p in paths]
        missing = [p for p in wanted if p not in view.latest]
        if missing:
            raise UsageError(f"not in {self.journal.path}: {', '.join(missing)}")
        return [view.latest[p] for p in wanted]

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(self.retry, call)


@asynccontextmanager
async def open_jobs(
    job_info: str | os.PathLike[str] = DEFAULT_JOB_INFO,
    *,
    client: genai.Client | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    retry: RetrySettings | None = None,
) -> AsyncIterator[JobsContext]:
    """Open the journal and a client for the job commands; closes both."""
    if not await anyio.Path(job_info).exists():
        raise UsageError(f"no journal at {job_info}: nothing has been submitted from here")
    journal = Journal(job_info)
    await anyio.to_thread.run_sync(journal.open)
    try:
        async with api_session(client, api_key=api_key, base_url=base_url) as api:
            yield JobsContext(journal, api, retry or RetrySettings())
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
    lines = jobs.recorded(paths)
    fresh: dict[str, types.BatchJob] = {}
    statuses: dict[str, JobStatus] = {}

    async def check(line: JobLine) -> None:
        path, name = str(line["input_file"]), batch_name_of(line)
        if batch_state_of(line) in END_STATES:  # settled: nothing can change any more
            statuses[path] = _status_from_line(line)
            return
        try:
            batch = await jobs.call(lambda: jobs.api.get_batch(name))
        except ApiError as exc:
            statuses[path] = _status_from_line(line, error=describe(exc))
            return
        fresh[name] = batch
        statuses[path] = _status_from_batch(path, batch, _recorded_results(line))

    await _for_each(lines, check)
    if fresh:
        await anyio.to_thread.run_sync(jobs.journal.rewrite, _with_fresh_batches(fresh))
    return [statuses[str(line["input_file"])] for line in lines]


def _with_fresh_batches(fresh: dict[str, types.BatchJob]) -> Callable[[JobLine], JobLine]:
    checked = datetime.now(timezone.utc).isoformat()

    def update(line: JobLine) -> JobLine:
        batch = fresh.get(batch_name_of(line))
        if batch is None:
            return line
        return {**line, "batch": batch_to_dict(batch), "status_checked_at": checked}

    return update


def _recorded_results(line: JobLine) -> ResultCounts | None:
    counts = ResultCounts.from_dict(line.get("results"))
    return counts if counts is not None and counts.batch_name == batch_name_of(line) else None


def _status_from_batch(
    path: str, batch: types.BatchJob, results: ResultCounts | None = None
) -> JobStatus:
    state = batch.state.value if batch.state is not None else "JOB_STATE_UNSPECIFIED"
    age = (
        (datetime.now(timezone.utc) - batch.create_time).total_seconds()
        if batch.create_time
        else None
    )
    output = batch.dest.file_name if batch.dest is not None else None
    return JobStatus(path, batch.name or "", state, age, output, results=results)


def _status_from_line(line: JobLine, error: str | None = None) -> JobStatus:
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
    dest = batch.get("dest")
    output = dest.get("file_name") if isinstance(dest, dict) else None
    return JobStatus(
        str(line["input_file"]),
        batch_name_of(line),
        batch_state_of(line),
        age,
        output,
        error,
        _recorded_results(line),
    )


async def watch_status(
    jobs: JobsContext,
    on_change: Callable[[JobStatus], None],
    *,
    paths: Sequence[str] | None = None,
    interval: float = 30.0,
) -> list[JobStatus]:
    """Refresh until every job has ended, reporting each state change once."""
    seen: dict[str, str] = {}
    while True:
        statuses = await refresh_status(jobs, paths)
        for status in statuses:
            if seen.get(status.path) != status.state:
                seen[status.path] = status.state
                on_change(status)
        if all(s.done for s in statuses):
            return statuses
        await anyio.sleep(interval)


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
    if out_dir is not None and await _exists_but_not_folder(out_dir):
        raise UsageError(f"--out {os.fspath(out_dir)} exists and is not a folder")
    statuses = await refresh_status(jobs, paths)
    ready = [s for s in statuses if s.state == "JOB_STATE_SUCCEEDED" and s.output_file]
    plan = plan_targets(
        [s.path for s in ready],
        out_dir,
        inputs=[str(line["input_file"]) for line in jobs.recorded()],
        keep_raw=keep_raw,
    )
    limiter = anyio.CapacityLimiter(_BUILDS_AT_ONCE)
    results: list[ResultFile] = []

    async def fetch(status: JobStatus) -> None:
        targets = plan[status.path]
        if isinstance(targets, str):
            where = str(result_targets(status.path, out_dir).results)
            result = ResultFile(status.path, status.batch_name, where, error=targets)
        elif not force and await anyio.to_thread.run_sync(
            results_are_current, targets, status.created_at
        ):
            result = _skipped(status, targets)
        else:
            result = await fetch_results(
                jobs.api, status, targets, retry=jobs.retry, keep_raw=keep_raw, limiter=limiter
            )
        results.append(result)
        on_result(result)

    await _for_each(ready, fetch)
    written = {r.batch_name: r.counts() for r in results if not r.skipped and r.error is None}
    if written:
        await anyio.to_thread.run_sync(jobs.journal.rewrite, _with_result_counts(written))
    order = {s.path: i for i, s in enumerate(ready)}
    return sorted(results, key=lambda r: order[r.path])


async def _exists_but_not_folder(path: str | os.PathLike[str]) -> bool:
    folder = anyio.Path(path)
    return await folder.exists() and not await folder.is_dir()


def _skipped(status: JobStatus, targets: ResultTargets) -> ResultFile:
    """Results already there: what the journal recorded of them, when it did."""
    counts = status.results
    if counts is None or counts.results_path != str(targets.results):
        return ResultFile(status.path, status.batch_name, str(targets.results), skipped=True)
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
    )


def _with_result_counts(written: dict[str, ResultCounts]) -> Callable[[JobLine], JobLine]:
    def update(line: JobLine) -> JobLine:
        counts = written.get(batch_name_of(line))
        return line if counts is None else {**line, "results": counts.to_dict()}

    return update


# -- cancel ------------------------------------------------------------------------------
async def cancel_jobs(jobs: JobsContext, paths: Sequence[str] | None = None) -> list[JobStatus]:
    """Cancel every recorded job that has not ended (of ``paths`` when given)."""
    statuses = await refresh_status(jobs, paths)
    targets = [s for s in statuses if not s.done and s.error is None]

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


async def cleanup_files(
    jobs: JobsContext, *, outputs: bool = False, dry_run: bool = False
) -> list[Cleaned]:
    """Delete the uploads of recorded jobs that have ended (and their outputs, if asked).

    Storage counts against the project's 20 GB quota for 48 h (USERS.md P2); a
    finished job no longer needs its input. Output files cannot always be
    deleted (USERS.md P3): failures are reported and the rest carries on.
    """
    statuses = {s.path: s for s in await refresh_status(jobs)}
    targets: list[tuple[str, str]] = []
    for line in jobs.recorded():
        status = statuses.get(str(line["input_file"]))
        if status is None or not status.done:
            continue
        upload = line.get("uploaded_file_name")
        if isinstance(upload, str) and upload.startswith("files/"):
            targets.append((status.path, upload))
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
            cleaned.append(Cleaned(path, name, deleted=False, error=describe(exc)))
            return
        cleaned.append(Cleaned(path, name, deleted=gone, error=None if gone else "already gone"))

    await _for_each(targets, delete)
    return sorted(cleaned, key=lambda c: (c.path, c.file_name))
