"""The library entry point: pre-flight, then the pipeline, then a summary.

Pre-flight runs local checks first (files, API key, journal: nothing is sent),
then one ``models.get``; any problem stops the run before the first upload.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import TypeVar

import anyio
import anyio.to_thread

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .._admission import Admission, Load, bytes_held, load_of
from .._backends import Backend, Target, VertexTarget
from .._backends._sessions import GenaiClient, chosen_target, open_target
from .._errors import (
    ApiError,
    NotFoundApiError,
    PreflightError,
    Problem,
    UsageError,
    single_error,
)
from .._events import EventHandler, FileSkipped, SubmitSummary, ignore_events
from .._inputs import InputFile, JobLimits, Part, check_regular_file, scan_inputs, unique_paths
from .._journal import (
    JobLine,
    Journal,
    JournalView,
    batch_name_of,
    batch_state_of,
    unit_sha256_of,
)
from .._names import path_problem
from .._retry import call_with_retries, describe
from .._schema import BATCH_METHODS
from .._settings import (
    DEFAULT_JOB_INFO,
    SubmitSettings,
    checked_path,
)
from ._estimate import (
    InputEstimate,
    count_items,
    dry_run_summary,
    estimate_items,
    would_submit,
)
from ._pack import submit_run_for

_SCAN_THREADS = 4
T = TypeVar("T")


async def submit(
    paths: Sequence[str | os.PathLike[str]],
    *,
    settings: SubmitSettings | None = None,
    job_info: str | os.PathLike[str] = DEFAULT_JOB_INFO,
    client: GenaiClient | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    on_event: EventHandler = ignore_events,
    stop: anyio.Event | None = None,
    vertex: VertexTarget | None = None,
) -> SubmitSummary:
    """Upload each JSONL file and create one batch job per file, recording each in ``job_info``.

    Pass a ``genai.Client``, or let one be built from ``api_key`` (else
    GEMINI_API_KEY / GOOGLE_API_KEY) and ``base_url``; with ``vertex``, submit to
    Vertex AI batch prediction instead (inputs staged in its Cloud Storage bucket). Each file's outcome is
    reported to ``on_event``. Setting ``stop`` starts no new file and gives those
    in flight ``settings.cleanup_seconds`` to finish; cancelling the caller's
    scope cleans up the same way, then re-raises.

    Raises :class:`PreflightError` (nothing was sent) or another
    :class:`GembatchError` for setup failures; per-file API failures are events.
    """
    settings = settings or SubmitSettings()
    started = time.monotonic()
    target = chosen_target(client, api_key=api_key, base_url=base_url, vertex=vertex)
    async with prepared(paths, settings, job_info, target, on_event) as (journal, view, items):
        if not settings.dry_run and all(_recorded(item, view, settings) for item in items):
            # Nothing to upload: no client, no model check, no request at all.
            return _report_without_api(items, view, settings, on_event, started)
        async with open_target(target) as api:
            if not await check_model(api, settings, _to_submit(items, view, settings), stop):
                return SubmitSummary(
                    0,
                    0,
                    0,
                    time.monotonic() - started,
                    interrupted=True,
                    not_started=len(items),
                )
            if settings.dry_run:
                wanted = _to_submit(items, view, settings)
                estimates = await (
                    count_items(api, wanted, settings)
                    if settings.count_tokens
                    else estimate_items(wanted)
                )
                return _report_without_api(items, view, settings, on_event, started, estimates)
            run = submit_run_for(
                target,
                api,
                journal,
                settings,
                on_event,
                stop or anyio.Event(),
                admission_for(journal, view, settings, api),
            )
            tally = await run.run(items)
    return SubmitSummary(
        submitted=tally.submitted,
        skipped=tally.skipped,
        failed=tally.failed,
        elapsed=time.monotonic() - started,
        interrupted=run.interrupted,
        not_started=tally.not_started,
        deferred=tally.deferred,
    )


@contextlib.asynccontextmanager
async def prepared(
    paths: Sequence[str | os.PathLike[str]],
    settings: SubmitSettings,
    job_info: str | os.PathLike[str],
    target: Target,
    on_event: EventHandler,
) -> AsyncIterator[tuple[Journal, JournalView, list[InputFile]]]:
    """The journal, open, and the inputs that passed the local pre-flight (nothing sent):
    split at the target's job limits, checked by its rules."""
    journal = Journal(checked_path(job_info, "job_info"))
    _refuse_unnameable(paths)
    wanted = _without_journal(unique_paths(paths), journal)
    try:
        # A dry run writes nothing: no lock file, no repair, no scope id.
        view = await anyio.to_thread.run_sync(
            functools.partial(journal.open, read_only=settings.dry_run)
        )
        for problem in view.problems:
            on_event(problem)
        items = await _check_locally(wanted, journal, view, settings, target)
        yield journal, view, items
    finally:
        journal.close()


def _refuse_unnameable(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Paths no file can have (a NUL, not a path): every one at once, nothing sent."""
    if isinstance(paths, (str, bytes, os.PathLike)):  # one path, whose letters would be files
        raise UsageError("paths: give a list of paths, not a single path")
    problems = [
        Problem("(arguments)", problem)
        for path in paths
        if (problem := path_problem(path)) is not None
    ]
    if problems:
        raise PreflightError(problems)


def admission_for(
    journal: Journal, view: JournalView, settings: SubmitSettings, api: Backend
) -> Admission:
    """The gate for a run, counting the storage the journal's uploads still hold, and
    the project's unfinished jobs (and our jobs' tokens) from one listing."""

    async def recount() -> Load:
        batches = await call_with_retries(settings.retry, api.list_batches)
        return load_of(batches, journal.refresh().latest.values(), settings.model_resource)

    return Admission(
        waits=settings.wait_for_capacity,
        storage_bytes=api.storage_quota(settings.storage_quota_bytes),
        held_bytes=bytes_held(view.latest.values(), datetime.now(timezone.utc)),
        probe_seconds=settings.capacity_probe_seconds,
        probe_max_seconds=settings.capacity_probe_max_seconds,
        job_window=api.job_window(settings.job_window),
        token_quota=settings.enqueued_token_quota,
        recount=recount,
    )


def _without_journal(paths: list[str], journal: Journal) -> list[str]:
    """``*.jsonl`` in the project folder matches the journal itself: never submit it."""
    own = {os.path.realpath(journal.path), os.path.realpath(journal.lock_path)}
    return [p for p in paths if os.path.realpath(p) not in own]


def _one_path_per_file(paths: list[str], view: JournalView) -> dict[str, str]:
    """Path -> identity, keeping the first name of each file named twice: another
    spelling, a symlink, or a hard link (one device and inode are one file)."""
    chosen: dict[str, str] = {}
    seen_identities: set[str] = set()
    seen_files: set[tuple[int, int]] = set()
    for path in paths:
        identity = view.identity_of(path)
        try:
            info = os.stat(path)
        except OSError:  # gone since it was checked: the scan reports it
            file = (-1, len(chosen))
        else:
            file = (info.st_dev, info.st_ino)
        if identity not in seen_identities and file not in seen_files:
            seen_identities.add(identity)
            seen_files.add(file)
            chosen[path] = identity
    return chosen


def _by_content(
    identities: dict[str, str], found: dict[str, InputFile], view: JournalView
) -> dict[str, str]:
    """Each input's identity, now that its content is known: a file the journal
    recorded under another name (a hard link made since) is found by its sha256."""
    return {
        path: identity
        if identity in view.latest_by_base or path not in found
        else view.identity_of(path, found[path].sha256)
        for path, identity in identities.items()
    }


def recorded_limits(line: JobLine) -> JobLimits | None:
    """The limits a recorded input was cut by: one job for a whole input's line, the
    recorded ones for a part's, None when a part's line does not say (older lines)."""
    if "part" not in line:
        return JobLimits(max_bytes=sys.maxsize)
    split = line.get("split")
    if not isinstance(split, dict):
        return None
    max_bytes, max_requests = split.get("max_bytes"), split.get("max_requests")
    if not isinstance(max_bytes, int) or not _positive_int(max_bytes):
        return None
    if not (max_requests is None or _positive_int(max_requests)):
        return None
    return JobLimits(max_bytes=max_bytes, max_requests=max_requests)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


async def _in_recorded_split(
    found: dict[str, InputFile],
    identities: dict[str, str],
    view: JournalView,
    settings: SubmitSettings,
    limits: JobLimits,
) -> tuple[dict[str, InputFile], list[Problem]]:
    """A recorded input keeps the split it was recorded with, whatever this run's
    --max-*-per-job: its units are its recorded jobs (skipped, or resubmitted by
    --retry-failed), never new ones for the same requests. Only --force cuts anew.

    A file whose recorded limits differ from this run's is read once more and cut by
    them. When that does not give its recorded parts (its content changed), its
    units are the recorded parts as they are, to be skipped (and said changed). Part
    lines that do not say how they were cut (older ones), for a file this run cuts
    otherwise, are a problem: nothing to skip by, nothing to submit safely.
    """
    if settings.force:
        return found, []
    kept = dict(found)
    problems: list[Problem] = []
    for path, item in found.items():
        line = view.latest_by_base.get(identities[path])
        if line is None:
            continue
        if "part" not in line:  # recorded whole: one job, as then
            kept[path] = replace(item, parts=(), limits=None) if item.parts else item
            continue
        of = line.get("parts")
        recorded = recorded_limits(line)
        if recorded is not None and recorded != limits:
            again, _ = await scan_inputs(
                [path], anyio.CapacityLimiter(1), schema_check=False, limits=recorded
            )
            item = again.get(path, item)
        if len(item.parts) == of:
            kept[path] = item
        elif recorded is None:
            problems.append(Problem(path, _UNKNOWN_SPLIT.format(parts=of)))
        else:
            kept[path] = _as_recorded(item, of)
    return kept, problems


_UNKNOWN_SPLIT = (
    "recorded in {parts} parts by an older version, which did not record the limits it "
    "cut them by: run it with the --max-requests-per-job / --max-bytes-per-job it was "
    "submitted with (status and download need neither)"
)


def _as_recorded(item: InputFile, of: object) -> InputFile:
    """The input as the recorded parts it can no longer be cut into: units that only
    carry their keys, so they are skipped (as changed) and ``run`` follows their jobs.
    Submitting one again fails at upload (its bytes do not match), never sends others."""
    if not isinstance(of, int) or of < 2:
        return replace(item, parts=(), limits=None)
    parts = tuple(Part(n, of, 0, 0, 0, "") for n in range(1, of + 1))
    return replace(item, parts=parts, limits=None)


async def _check_locally(
    paths: list[str],
    journal: Journal,
    view: JournalView,
    settings: SubmitSettings,
    target: Target,
) -> list[InputFile]:
    """Every local problem at once: files, their content, the target's own (an API
    key). Sends nothing."""
    limits = target.job_limits(settings.max_bytes_per_job, settings.max_requests_per_job)
    checks = {path: check_regular_file(path) for path in paths}
    problems = [p for p in checks.values() if p is not None]
    identities = _one_path_per_file(
        [path for path, problem in checks.items() if problem is None], view
    )
    readable = list(identities)
    found, content_problems = await scan_inputs(
        readable,
        anyio.CapacityLimiter(_SCAN_THREADS),
        schema_check=settings.schema_check,
        limits=limits,
        table_import=target.table_import,
    )
    identities = _by_content(identities, found, view)
    found, split_problems = await _in_recorded_split(found, identities, view, settings, limits)
    problems += split_problems
    # A file the journal already covers (whole or in parts) is skipped: its content does not matter.
    problems += [
        p
        for p in content_problems
        if not (identities[p.path] in view.latest_by_base and _recorded_at_all(settings))
    ]
    if not paths:
        problems.append(Problem("(arguments)", "no input files given"))
    problems += target.problems()
    if problems:
        raise PreflightError(problems)
    items = [
        replace(found[p], identity=identities[p])
        if p in found
        else _unreadable(p, identities[p], view)
        for p in readable
    ]
    return [unit for item in items for unit in item.units()]


def _unreadable(path: str, identity: str, view: JournalView) -> InputFile:
    """A recorded file whose content no longer passes pre-flight: it is skipped (and said
    to have changed), never submitted, so it only needs its identity, and the parts it
    was recorded in (so ``run`` follows the recorded jobs)."""
    item = InputFile(path, 0, "", 0, identity=identity)
    line = view.latest_by_base.get(identity)
    return _as_recorded(item, line.get("parts")) if line is not None else item


def _to_submit(
    items: list[InputFile], view: JournalView, settings: SubmitSettings
) -> list[InputFile]:
    """The items this run may submit (not skipped as already recorded)."""
    return [item for item in items if not _recorded(item, view, settings)]


async def check_model(
    api: Backend,
    settings: SubmitSettings,
    items: list[InputFile],
    stop: anyio.Event | None = None,
) -> bool:
    """One models.get, so a typo, a retired model or one that cannot run these
    requests (generate or embed) fails once, before any upload. False when a stop cut
    it short (cleanup_seconds after ``stop``, the same bound as the files in flight)."""
    model = settings.model_resource
    try:
        info = await cut_after_stop(
            stop or anyio.Event(),
            settings.cleanup_seconds,
            lambda: call_with_retries(settings.retry, lambda: api.get_model(model)),
        )
    except NotFoundApiError as exc:
        raise PreflightError(
            [
                Problem(
                    model, f"model not found (misspelled, or retired by Google?): {describe(exc)}"
                )
            ]
        ) from exc
    except ApiError as exc:
        raise PreflightError([Problem(model, f"cannot check the model: {describe(exc)}")]) from exc
    if info is None:
        return False
    problems = []
    for kind in sorted({item.kind for item in items}):
        if not api.model_supports(info, kind):
            files = [item.path for item in items if item.kind == kind]
            named = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            problems.append(
                Problem(
                    model,
                    f"model does not support {BATCH_METHODS[kind]}, which the {kind} "
                    f"requests of {named} need",
                )
            )
    if problems:
        raise PreflightError(problems)
    return True


async def cut_after_stop(
    stop: anyio.Event, seconds: float, call: Callable[[], Awaitable[T]]
) -> T | None:
    """``call()``, cut ``seconds`` after ``stop`` is set (None then): the stop bound for
    a wait outside the pipeline's own (which has the same rule, see SubmitRun)."""
    outcome: list[T] = []

    async def cut(scope: anyio.CancelScope) -> None:
        await stop.wait()
        await anyio.sleep(seconds)
        scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cut, tg.cancel_scope)
            outcome.append(await call())
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the call's own error, as itself
        error = single_error(group)
        if error is group:
            raise
        raise error from None
    return outcome[0] if outcome else None


def _recorded_at_all(settings: SubmitSettings) -> bool:
    """Whether a recorded file is skipped (neither --force nor --retry-failed)."""
    return not settings.force and not settings.retry_failed


def _recorded(item: InputFile, view: JournalView, settings: SubmitSettings) -> bool:
    """The journal covers the file (or part) and nothing asks to submit it again."""
    return _recorded_line(item, view) is not None and _recorded_at_all(settings)


def _recorded_line(item: InputFile, view: JournalView) -> JobLine | None:
    return view.recorded(item.key, item.identity, item.part.of if item.part else None)


def _report_without_api(
    items: list[InputFile],
    view: JournalView,
    settings: SubmitSettings,
    on_event: EventHandler,
    started: float,
    estimates: Mapping[str, InputEstimate] | None = None,
) -> SubmitSummary:
    """Skips, and for a dry run what would be submitted (with ``estimates``, its
    tokens and cost): all known without the API."""
    estimates = estimates or {}
    skipped = 0
    for n, item in enumerate(items, start=1):
        latest = _recorded_line(item, view)
        if latest is not None and _recorded(item, view, settings):
            changed = unit_sha256_of(latest) not in (None, item.sha256)
            name, state = batch_name_of(latest), batch_state_of(latest)
            on_event(FileSkipped(item.label, name, n, len(items), changed, state))
            skipped += 1
        else:
            on_event(would_submit(item, estimates.get(item.key), settings))
    summary = SubmitSummary(0, skipped, 0, time.monotonic() - started)
    return dry_run_summary(summary, list(estimates.values()), settings)
