"""Events -> the lines a person (or a script, with --json) reads."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .._backends import END_STATES, RESULT_STATES
from .._events import (
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
    TwinFound,
    WaitingForCapacity,
    WouldSubmit,
    event_to_dict,
)
from .._names import display_path, json_safe
from .._prices import total_cost
from .._results import ResultFile
from .._results._usage import TokenUsage
from ._cost import COUNT_METHOD, ESTIMATE_METHOD, cost_text, file_usage_text, short_cost, usage_line
from ._words import agreeing, count_of

if TYPE_CHECKING:  # _jobs imports the SDK, which --version and show do without
    from .._jobs import Cleaned, JobStatus


def render_text(event: Event) -> tuple[str, bool]:
    """The text line for an event, and whether it belongs on stderr."""
    if isinstance(event, FileSubmitted):
        note = " (created by an earlier attempt, adopted)" if event.adopted else ""
        return (
            f"[{event.n}/{event.total}] submitted {_shown(event.path)} -> {event.batch_name}{note}",
            False,
        )
    if isinstance(event, FileSkipped):
        line = f"[{event.n}/{event.total}] skipped {_shown(event.path)} (already submitted as {event.batch_name})"
        if event.state in END_STATES - RESULT_STATES:  # FAILED, CANCELLED, EXPIRED
            line = (
                f"[{event.n}/{event.total}] skipped {_shown(event.path)} (its batch "
                f"{event.batch_name} ended {_short_state(event.state)}: no results will come; "
                "--retry-failed submits it again)"
            )
        if event.changed:
            line += "; its content has changed since: use --force to submit it again"
        return line, False
    if isinstance(event, FileFailed):
        line = f"[{event.n}/{event.total}] error {_shown(event.path)}: {event.reason}"
        if event.left_behind:
            line += f" (upload {event.left_behind} left on the server)"
        return line, False
    if isinstance(event, FileDeferred):
        return f"[{event.n}/{event.total}] deferred {_shown(event.path)} ({event.reason})", False
    if isinstance(event, WaitingForCapacity):
        return f"waiting {_shown(event.path)} ({event.reason})", True
    if isinstance(event, JobChanged):
        return (
            f"job {_short_state(event.state).lower()} {_shown(event.path)} ({_counts(event.stats)})",
            False,
        )
    if isinstance(event, ResultsSaved) and event.already:
        return f"results {_shown(event.path)} already in {_shown(event.output_path)}", False
    if isinstance(event, ResultsSaved):
        whole = "" if event.complete else "; answers missing or unknown: see download"
        if event.failed_path:
            whole += f"; {count_of(event.failed, 'failed request')} -> {_shown(event.failed_path)}"
        return (
            f"results {_shown(event.path)} -> {_shown(event.output_path)} "
            f"({count_of(event.responses, 'response')}, {count_of(event.errors, 'error')}{whole}"
            f"{file_usage_text(event.usage, event.cost)})",
            False,
        )
    if isinstance(event, JobEnded):
        again = "; submitting it again" if event.resubmitted else ""
        return (
            f"job {_short_state(event.state).lower()} {_shown(event.path)}: {event.reason}{again}",
            False,
        )
    if isinstance(event, Retrying):
        return (
            f"retrying {event.step} of {_shown(event.path)} in {event.delay:.1f}s "
            f"(attempt {event.attempt} failed: {event.reason})",
            True,
        )
    if isinstance(event, CleanupFailed):
        return (
            f"warning: could not delete {_shown(event.file_name)} for {_shown(event.path)}: {event.reason}",
            True,
        )
    if isinstance(event, TwinFound):
        done = "cancelled" if event.cancelled else f"could not cancel ({event.reason})"
        return (
            f"warning: {done} {_shown(event.twin)}, a second job for {_shown(event.path)} "
            f"(a create whose answer was lost landed late); kept {_shown(event.kept)}",
            True,
        )
    if isinstance(event, JournalProblem):
        return f"warning: {_shown(event.journal)}:{event.line}: {event.message}", True
    if isinstance(event, WouldSubmit):
        return (
            f"would submit {_shown(event.path)} ({count_of(event.count, 'request')}, "
            f"{count_of(event.size_bytes, 'byte')}"
            f"{_estimate_phrase(event.input_tokens, event.with_media, event.tokens_counted)}"
            f"{', input ' + short_cost(event.cost) if event.cost else ''})",
            False,
        )
    raise TypeError(f"unknown event {event!r}")  # pragma: no cover


def _estimate_phrase(tokens: int | None, with_media: int, counted: bool = False) -> str:
    if tokens is None:
        return ""
    media = f" + media in {count_of(with_media, 'request')}, not estimated" if with_media else ""
    return f"; {'' if counted else '~'}{tokens:,} input tokens{media}"


def render_summary(summary: SubmitSummary, dry_run: bool = False) -> str:
    if dry_run:
        sent = "the model check and countTokens" if summary.tokens_counted else "the model check"
        text = f"dry run: nothing was sent beyond {sent}; {summary.skipped} already submitted"
        if summary.input_tokens is not None and summary.cost is not None:
            # Before the summary, which stays the last line.
            about, method = ("", COUNT_METHOD) if summary.tokens_counted else ("~", ESTIMATE_METHOD)
            text = (
                f"estimate: {about}{summary.input_tokens:,} input tokens, "
                f"{cost_text(summary.cost)}; {method}\n{text}"
            )
        return text
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
    incomplete = f" ({summary.incomplete} incomplete)" if summary.incomplete else ""
    text = (
        f"results for {summary.downloaded}{incomplete}, failed {summary.failed} "
        f"(submitted {summary.submitted}, already recorded {summary.skipped}) "
        f"in {summary.elapsed:.1f}s"
    )
    if summary.requests:
        text += (
            f"; {count_of(summary.requests, 'request')}: {summary.answered} answered, "
            f"{summary.failed_requests} failed"
        )
    if summary.interrupted:
        text += "; interrupted: run the same command again to continue"
    spent = usage_line(summary.usage, summary.cost)
    return "\n".join([*([spent] if spent else []), text, *_failed_requests_note(summary)])


def _failed_requests_note(summary: RunSummary, shown: int = 5) -> list[str]:
    """Where a run's failed requests are and how to send them again: ``--retry-failed``
    sends only the requests without an answer and merges their answers into the same
    results files (``_submit._resubmit``); an input whose ``--resubmits`` rounds are used
    up needs a higher ``--resubmits``, or ``--retry-failed`` sends nothing for it."""
    paths = [_shown(path) for path in summary.failed_paths]
    if not summary.failed_requests or not paths:
        return []
    n = summary.failed_requests
    head = (
        f"{count_of(n, 'failed request')} {agreeing(n, 'has', 'have')} no response; "
        f"{agreeing(n, 'its input line is', 'their input lines are')} in {_listed_paths(paths, shown)}"
    )
    used_up = [_shown(path) for path in summary.used_up_paths]
    them = agreeing(n, "it", "them")
    rounds = f"--resubmits rounds ({count_of(summary.rounds_used, 'round')} so far)"
    higher = f"--retry-failed --resubmits {summary.rounds_used + 1}"
    if len(used_up) == len(paths):  # --retry-failed alone would send nothing
        whose = agreeing(len(paths), "input has used up its", "inputs have used up their")
        advice = (
            f"{agreeing(n, 'its', 'their')} {whose} {rounds}: "
            f"to send {them} again, the same command with {higher}"
        )
    else:
        advice = (
            f"to send only {them} again: the same command with --retry-failed "
            "(each input gets --resubmits rounds, default 1)"
        )
        if used_up:
            advice += (
                f"; the inputs of {_listed_paths(used_up, shown)} used up their {rounds}: "
                f"for those, {higher}"
            )
    return [f"{head}; {advice}"]


def _listed_paths(paths: Sequence[str], shown: int) -> str:
    return ", ".join(paths[:shown]) + (
        f" and {len(paths) - shown} more" if len(paths) > shown else ""
    )


def _short_state(state: str) -> str:
    return state.removeprefix("JOB_STATE_")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def render_status(status: JobStatus) -> str:
    line = f"{_short_state(status.state):<10} {_age(status.age_seconds):>7}  {_shown(status.path)} -> {status.batch_name}"
    stats = status.stats
    if stats is not None and stats.requests:
        line += f"  {stats.succeeded + stats.failed}/{stats.requests} done"
        if stats.failed:
            line += f", {stats.failed} failed"
    if status.batch_error:
        line += f" ({status.batch_error})"
    across = input_counts(status)
    if across is not None:  # a round: the whole input (or part), across its jobs
        whole = status.part is None or status.results is not None
        scope = "input" if whole else f"part {status.part}/{status.parts}"
        line += f"  [{scope}: {across['answered']} answered, {across['failed']} failed,"
        line += f" {across['pending']} pending; {across['jobs']} jobs]"
    if status.notice:
        line += f"  [{status.notice}]"
    if status.error:
        line += f" (could not refresh: {status.error})"
    if status.results is not None:
        counts = status.results
        line += f" (results: {counts.responses} answered, {counts.failed} failed"
        line += f", {counts.unknown} unknown answers" if counts.unknown else ""
        line += file_usage_text(counts.usage, status.cost) + ")"
    return line


def input_counts(status: JobStatus) -> dict[str, int] | None:
    """For a round: the input's requests answered, failed and pending across all its
    jobs, and how many jobs; what plain ``status`` shows and ``status --json`` carries
    as ``input_counts`` (None for any other job)."""
    across = status.input_counts
    if across is None:
        return None
    answered, failed, pending = across
    return {
        "answered": answered,
        "failed": failed,
        "pending": pending,
        "jobs": len(status.completes) + 1,
    }


def _by_code(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} × {label}" for label, n in sorted(counts.items(), key=lambda c: -c[1]))


def _listed(keys: Sequence[str], total: int, shown: int = 5) -> str:
    names = ", ".join(repr(k) if k else "(no key)" for k in keys[:shown])
    return names + (f" and {total - min(shown, len(keys))} more" if total > shown else "")


def render_result(result: ResultFile) -> str:
    if result.ended:
        return (
            f"skipped {_shown(result.path)}: its job {result.batch_name} ended "
            f"{_short_state(result.ended)}; nothing to download "
            "(submit --retry-failed to run it again)"
        )
    if result.error:
        lines = [f"error {_shown(result.path)}: {result.error}"]
        return "\n".join(lines + [f"  {problem}" for problem in result.problems])
    if result.skipped:
        line = f"skipped {_shown(result.path)}: {_shown(result.output_path)} is there (--force to download again)"
    else:
        line = (
            f"downloaded {_shown(result.path)} -> {_shown(result.output_path)}: "
            f"{count_of(result.requests, 'request')}"
        )
        line += ", matched by position (no keys)" if result.keyless else ""
    if result.requests or not result.skipped:
        line += f", {result.responses} answered, {result.failed} failed"
    if result.failed:
        line += f" ({_by_code(result.failed_by_code)})"
        if result.failed_path:
            line += f" -> {_shown(result.failed_path)}"
    line += file_usage_text(result.usage, result.cost)
    notes = _incomplete_notes(result)
    return line + ("; " + "; ".join(notes) if notes else "")


def _incomplete_notes(result: ResultFile) -> list[str]:
    notes = []
    if result.missing_count:
        notes.append(
            f"{result.missing_count} never answered: "
            f"{_listed(result.missing_keys, result.missing_count)}"
            if result.missing_keys
            else f"{result.missing_count} never answered"
        )
    if result.unmatched:
        notes.append(f"{result.unmatched} without a key in a job with keys")
    if result.unexpected_keys:
        named = [k for k in result.unknown_keys if k]
        notes.append(
            f"{count_of(result.unexpected_keys, 'answer')} for no request"
            + (f": {_listed(named, result.unexpected_keys)}" if named else "")
        )
    if result.ambiguous_keys:
        notes.append(
            f"{result.ambiguous_keys} of them with a key the service wrote as a number that "
            "several request keys read as (not matched, never guessed; --keep-raw keeps them)"
        )
    if result.duplicates:
        notes.append(
            f"{count_of(result.duplicates, 'extra answer')} to an answered key (the first kept)"
        )
    if result.raw_path:
        notes.append(f"raw output in {_shown(result.raw_path)}")
    return notes


def render_download_summary(results: Sequence[ResultFile]) -> str:
    written = sum(1 for r in results if not (r.skipped or r.error or r.ended))
    skipped = sum(1 for r in results if r.skipped)
    ended = sum(1 for r in results if r.ended)
    errors = sum(1 for r in results if r.error)
    incomplete = sum(1 for r in results if not r.error and not r.complete)
    failed: Counter[str] = Counter()
    for result in results:
        failed.update(result.failed_by_code)
    line = f"downloaded {written}, skipped {skipped}, errors {errors}"
    if incomplete:
        line += f", incomplete {incomplete}"
    if ended:
        line += f", jobs ended without results {ended}"
    total = sum(failed.values())
    if total:
        line += (
            f"; {count_of(total, 'failed request')} ({_by_code(failed)}), "
            "listed in the .failed.jsonl files"
        )
    spent = _download_spent(results)
    return (f"{spent}\n" if spent else "") + line  # the summary stays the last line


def _download_spent(results: Sequence[ResultFile]) -> str | None:
    """Tokens and cost of the results whose answers' usage is known."""
    read = [r for r in results if r.usage is not None and r.cost is not None and not r.error]
    if not read:
        return None
    usage = sum((r.usage for r in read if r.usage is not None), TokenUsage())
    return usage_line(usage, total_cost([r.cost for r in read if r.cost is not None]))


def render_cleaned(item: Cleaned) -> str:
    from .._jobs import KEPT_BY_SERVICE  # loaded already: cleanup ran

    if item.kept:
        return f"kept by the service: {_shown(item.file_name)} ({_shown(item.path)}) ({KEPT_BY_SERVICE})"
    if item.error and item.error != "already gone":
        return f"error {_shown(item.file_name)} ({_shown(item.path)}): {item.error}"
    verb = "deleted" if item.deleted else ("already gone" if item.error else "would delete")
    return f"{verb} {_shown(item.file_name)} ({_shown(item.path)})"


def render_json(event: Event | SubmitSummary | RunSummary) -> str:
    """One JSON line; a file name that is not UTF-8 as JSON ``\\udcNN`` escapes."""
    return json_safe(json.dumps(event_to_dict(event), ensure_ascii=False))


def _shown(path: str | None) -> str:
    """Every path a line shows, one way: quoted when it could break or forge a line."""
    return display_path(path) if path is not None else "?"
