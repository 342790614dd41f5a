"""Events -> the lines a person (or a script, with --json) reads."""

from __future__ import annotations

import json

from ._events import (
    CleanupFailed,
    Event,
    FileFailed,
    FileSkipped,
    FileSubmitted,
    JournalProblem,
    Retrying,
    SubmitSummary,
    WouldSubmit,
    event_to_dict,
)


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
    text = (
        f"submitted {summary.submitted}, skipped {summary.skipped}, failed {summary.failed} "
        f"in {summary.elapsed:.2f}s"
    )
    if summary.interrupted:
        text += f"; interrupted, {summary.not_started} not started (run again to finish)"
    return text


def render_json(event: Event | SubmitSummary) -> str:
    return json.dumps(event_to_dict(event), ensure_ascii=False)
