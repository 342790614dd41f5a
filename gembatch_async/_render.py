"""Events -> the lines a person (or a script, with --json) reads."""

from __future__ import annotations

import json

from ._events import (
    BatchStats,
    CleanupFailed,
    Event,
    FileDeferred,
    FileFailed,
    FileSkipped,
    FileSubmitted,
    JobChanged,
    JobEnded,
    JournalProblem,
    ResultsSaved,
    Retrying,
    RunSummary,
    SubmitSummary,
    WaitingForCapacity,
    WouldSubmit,
    event_to_dict,
)
from ._jobs import Cleaned, JobStatus, ResultFile


def render_text(event: Event) -> tuple[str, bool]:
    """The text line for an event, and whether it belongs on stderr."""
    if isinstance(event, FileSubmitted):
        note = " (created by an earlier attempt, adopted)" if event.adopted else ""
        return (
            f"[{event.n}/{event.total}] submitted {event.path} -> {event.batch_name}{note}",
            False,
        )
    if isinstance(event, FileSkipped):
        line = f"[{event.n}/{event.total}] skipped {event.path} (already submitted as {event.batch_name})"
        if event.changed:
            line += "; its content has changed since: use --force to submit it again"
        return line, False
    if isinstance(event, FileFailed):
        line = f"[{event.n}/{event.total}] error {event.path}: {event.reason}"
        if event.left_behind:
            line += f" (upload {event.left_behind} left on the server)"
        return line, False
    if isinstance(event, FileDeferred):
        return f"[{event.n}/{event.total}] deferred {event.path} ({event.reason})", False
    if isinstance(event, WaitingForCapacity):
        return f"waiting {event.path} ({event.reason})", True
    if isinstance(event, JobChanged):
        return (
            f"job {_short_state(event.state).lower()} {event.path} ({_counts(event.stats)})",
            False,
        )
    if isinstance(event, ResultsSaved) and event.already:
        return f"results {event.path} already in {event.output_path}", False
    if isinstance(event, ResultsSaved):
        return (
            f"results {event.path} -> {event.output_path} "
            f"({event.responses} responses, {event.errors} errors)",
            False,
        )
    if isinstance(event, JobEnded):
        again = "; submitting it again" if event.resubmitted else ""
        return (
            f"job {_short_state(event.state).lower()} {event.path}: {event.reason}{again}",
            False,
        )
    if isinstance(event, Retrying):
        return (
            f"retrying {event.step} of {event.path} in {event.delay:.1f}s "
            f"(attempt {event.attempt} failed: {event.reason})",
            True,
        )
    if isinstance(event, CleanupFailed):
        return f"warning: could not delete {event.file_name} for {event.path}: {event.reason}", True
    if isinstance(event, JournalProblem):
        return f"warning: {event.journal}:{event.line}: {event.message}", True
    if isinstance(event, WouldSubmit):
        return (
            f"would submit {event.path} ({event.count} requests, {event.size_bytes} bytes)",
            False,
        )
    raise TypeError(f"unknown event {event!r}")  # pragma: no cover


def render_summary(summary: SubmitSummary, dry_run: bool = False) -> str:
    if dry_run:
        return (
            f"dry run: nothing was sent beyond the model check; {summary.skipped} already submitted"
        )
    deferred = f", deferred {summary.deferred}" if summary.deferred else ""
    text = (
        f"submitted {summary.submitted}, skipped {summary.skipped}{deferred}, "
        f"failed {summary.failed} in {summary.elapsed:.2f}s"
    )
    if summary.deferred:
        text += "; deferred files wait for service capacity: run submit again later, or use run"
    if summary.interrupted:
        text += f"; interrupted, {summary.not_started} not started (run again to finish)"
    elif summary.not_started:
        text += f"; {summary.not_started} not started (run again to finish)"
    return text


def _counts(stats: BatchStats | None) -> str:
    if stats is None or not stats.requests:
        return "no counts yet"
    text = f"{stats.succeeded + stats.failed}/{stats.requests} done"
    return text + (f", {stats.failed} failed" if stats.failed else "")


def render_run_summary(summary: RunSummary) -> str:
    text = (
        f"results for {summary.downloaded}, failed {summary.failed} "
        f"(submitted {summary.submitted}, already recorded {summary.skipped}) "
        f"in {summary.elapsed:.1f}s"
    )
    if summary.interrupted:
        text += "; interrupted: run the same command again to continue"
    return text


def _short_state(state: str) -> str:
    return state.removeprefix("JOB_STATE_")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def render_status(status: JobStatus) -> str:
    line = f"{_short_state(status.state):<10} {_age(status.age_seconds):>7}  {status.path} -> {status.batch_name}"
    stats = status.stats
    if stats is not None and stats.requests:
        line += f"  {stats.succeeded + stats.failed}/{stats.requests} done"
        if stats.failed:
            line += f", {stats.failed} failed"
    if status.batch_error:
        line += f" ({status.batch_error})"
    if status.notice:
        line += f"  [{status.notice}]"
    if status.error:
        line += f" (could not refresh: {status.error})"
    return line


def render_result(result: ResultFile) -> str:
    if result.error:
        return f"error {result.path}: {result.error}"
    if result.skipped:
        return f"skipped {result.path}: {result.output_path} exists (--force to download again)"
    line = (
        f"downloaded {result.path} -> {result.output_path} "
        f"({result.responses} responses, {result.errors} errors"
    )
    if result.missing_count:
        shown = ", ".join(result.missing_keys[:5])
        more = f" and {result.missing_count - 5} more" if result.missing_count > 5 else ""
        line += f", {result.missing_count} keys missing: {shown}{more}"
    if result.unexpected_keys:
        line += f", {result.unexpected_keys} unexpected keys"
    return line + ")"


def render_cleaned(item: Cleaned) -> str:
    if item.error and item.error != "already gone":
        return f"error {item.file_name} ({item.path}): {item.error}"
    verb = "deleted" if item.deleted else ("already gone" if item.error else "would delete")
    return f"{verb} {item.file_name} ({item.path})"


def render_json(event: Event | SubmitSummary | RunSummary) -> str:
    return json.dumps(event_to_dict(event), ensure_ascii=False)
