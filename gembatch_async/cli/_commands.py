"""The commands: each reads its arguments, calls the library, and prints what happened
(``_render``); its return value is the exit code."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._events import Event, SubmitSummary
from .._names import (
    display_path,
    json_safe,
)
from .._results._show import Answer, one_line, read_answers
from .._settings import (
    RetrySettings,
    SubmitSettings,
    default_model,
)
from ._console import (
    EXIT_DEFERRED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    _print,
)
from ._endpoints import (
    _api_endpoint,
)
from ._render import (
    input_counts,
    render_cleaned,
    render_download_summary,
    render_json,
    render_result,
    render_run_summary,
    render_status,
    render_summary,
    render_text,
)
from ._webhook_args import poll_interval, webhook_settings

# Commands that call a service import the SDK when they run (see _startup_modules in
# tests/cli/test_startup.py): --version, --help and show start without it.
if TYPE_CHECKING:
    from .._jobs import JobsContext, JobStatus

T = TypeVar("T")


def _submit_settings(args: argparse.Namespace) -> SubmitSettings:
    cap = args.retry_max_delay
    retry = replace(
        RetrySettings(),
        attempts=args.retry_attempts,
        total_seconds=args.retry_seconds,
        initial_delay=min(RetrySettings.initial_delay, cap),
        max_delay=cap,
        retry_after_cap=min(RetrySettings.retry_after_cap, cap),
    )
    return SubmitSettings(
        model=args.model or default_model(),
        concurrency=args.concurrency,
        mime_type=args.mime_type,
        force=getattr(args, "force", False),
        retry_failed=args.retry_failed,
        resubmits=args.resubmits,
        dry_run=getattr(args, "dry_run", False),
        retry=retry,
        cleanup_seconds=args.grace,
        schema_check=not args.no_schema_check,
        max_requests_per_job=args.max_requests_per_job,
        max_bytes_per_job=args.max_bytes_per_job,
        pack=args.pack,
        job_window=args.job_window,
        enqueued_token_quota=args.enqueued_token_quota,
        capacity_probe_seconds=args.capacity_probe,
        capacity_probe_max_seconds=16 * args.capacity_probe,
        prices=args.price,
        count_tokens=args.count_tokens,
    )


async def _submit_command(args: argparse.Namespace) -> int:
    from .._submit import submit

    settings = _submit_settings(args)
    show = _event_printer(args.json)
    async with _api_endpoint(args) as endpoint:
        summary = await _stoppable(
            lambda stop: submit(
                args.files,
                settings=settings,
                job_info=args.job_info,
                api_key=endpoint.api_key,
                base_url=endpoint.base_url,
                on_event=show,
                stop=stop,
                vertex=endpoint.submit_target(args.backend),
            )
        )
    _print(
        render_json(summary) if args.json else render_summary(summary, settings.dry_run), sys.stdout
    )
    return _exit_code(summary)


async def _run_command(args: argparse.Namespace) -> int:
    if args.dry_run:  # nothing is submitted, so nothing to watch: submit's dry run
        return await _submit_command(args)
    from .._run import run

    settings = _submit_settings(args)
    live = sys.stdout.isatty() and not args.json
    with _run_output(args.json, live) as show:
        async with _api_endpoint(args) as endpoint:
            summary = await _stoppable(
                lambda stop: run(
                    args.files,
                    settings=settings,
                    job_info=args.job_info,
                    out_dir=args.out,
                    interval=poll_interval(args),
                    resubmits=args.resubmits,
                    api_key=endpoint.api_key,
                    base_url=endpoint.base_url,
                    on_event=show,
                    stop=stop,
                    vertex=endpoint.submit_target(args.backend),
                    webhooks=webhook_settings(args, endpoint.base_url),
                )
            )
    _print(render_json(summary) if args.json else render_run_summary(summary), sys.stdout)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.ok else EXIT_FAILED


@contextlib.contextmanager
def _run_output(as_json: bool, live: bool) -> Iterator[Callable[[Event], None]]:
    """A live table on a terminal; otherwise one line (or JSON event) per change."""
    if not live:
        yield _event_printer(as_json)
        return
    from rich.console import Console

    from ._live import LiveView

    with LiveView(Console()) as view:
        yield view.on_event


def _exit_code(summary: SubmitSummary) -> int:
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.failed:
        return EXIT_FAILED
    return EXIT_DEFERRED if summary.deferred else EXIT_OK


def _event_printer(as_json: bool) -> Callable[[Event], None]:
    def show(event: Event) -> None:
        if as_json:
            _print(render_json(event), sys.stdout)
            return
        text, to_stderr = render_text(event)
        _print(text, sys.stderr if to_stderr else sys.stdout)

    return show


async def _stoppable(work: Callable[[anyio.Event], Awaitable[T]]) -> T:
    """``work(stop)``, with the first Ctrl-C or SIGTERM setting ``stop``."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, stop)
        result = await work(stop)
        tg.cancel_scope.cancel()
    return result


async def _stop_on_signals(stop: anyio.Event) -> None:
    """First Ctrl-C: start nothing new, let in-flight files settle. Second: leave at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stop.is_set():
                _print("interrupted again: exiting now; run submit again to settle", sys.stderr)
                sys.stdout.flush()
                os._exit(EXIT_INTERRUPTED)
            _print(
                "stopping: no new files; waiting for those in flight (Ctrl-C again to abort)",
                sys.stderr,
            )
            stop.set()


async def _jobs_command(args: argparse.Namespace) -> int:
    """status, download, cancel, cleanup: each from the journal, each job against the
    backend its line records."""
    from .._jobs import open_jobs

    async with (
        _api_endpoint(args) as endpoint,
        open_jobs(
            args.job_info,
            api_key=endpoint.api_key,
            base_url=endpoint.base_url,
            vertex=endpoint.vertex,
            prices=args.price,
        ) as jobs,
    ):
        for problem in jobs.problems:
            _print(render_text(problem)[0], sys.stderr)
        return await _JOB_COMMANDS[args.command](jobs, args)


async def _status(jobs: JobsContext, args: argparse.Namespace) -> int:
    from .._jobs import refresh_status, watch_status

    show = _printer(args.json, render_status, _status_computed)
    if args.watch:
        statuses = await watch_status(jobs, show, paths=args.files, interval=args.interval)
    else:
        statuses = await refresh_status(jobs, args.files)
        for status in statuses:
            show(status)
    if not statuses:
        _print(f"no jobs recorded in {display_path(args.job_info)}", sys.stderr)
    return EXIT_FAILED if any(s.error for s in statuses) else EXIT_OK


async def _download(jobs: JobsContext, args: argparse.Namespace) -> int:
    from .._jobs import download_results

    results = await download_results(
        jobs,
        args.out,
        paths=args.files,
        force=args.force,
        keep_raw=args.keep_raw,
        on_result=_printer(args.json, render_result),
    )
    if not results:
        _print("no succeeded jobs to download yet (see: gembatch-async status)", sys.stderr)
    elif not args.json:
        _print(render_download_summary(results), sys.stdout)
    # Requests the service answered with an error are results (the failed file holds
    # them); a file not written, or results missing answers, is a failure.
    return EXIT_OK if all(r.complete for r in results) else EXIT_FAILED


async def _cancel(jobs: JobsContext, args: argparse.Namespace) -> int:
    from .._jobs import cancel_jobs

    statuses = await cancel_jobs(jobs, args.files)
    show = _printer(args.json, render_status, _status_computed)
    for status in statuses:
        show(status)
    return EXIT_FAILED if any(s.error for s in statuses) else EXIT_OK


async def _cleanup(jobs: JobsContext, args: argparse.Namespace) -> int:
    from .._jobs import cleanup_files

    cleaned = await cleanup_files(jobs, outputs=args.outputs, dry_run=args.dry_run)
    show = _printer(args.json, render_cleaned)
    for item in cleaned:
        show(item)
    if not cleaned:
        _print("nothing to clean up: no ended job has files left", sys.stderr)
    return EXIT_FAILED if any(c.error and c.error != "already gone" for c in cleaned) else EXIT_OK


def _status_computed(status: JobStatus) -> dict[str, Any]:
    return {"input_counts": input_counts(status)}


_JOB_COMMANDS: dict[str, Callable[[JobsContext, argparse.Namespace], Awaitable[int]]] = {
    "status": _status,
    "download": _download,
    "cancel": _cancel,
    "cleanup": _cleanup,
}


def _printer(
    as_json: bool,
    render: Callable[[T], str],
    computed: Callable[[T], dict[str, Any]] | None = None,
) -> Callable[[T], None]:
    """Each item as its text line, or as one JSON object: its fields, plus the figures
    ``computed`` derives from them (what the text line shows but no field holds)."""

    def show(item: T) -> None:
        if not as_json:
            _print(render(item), sys.stdout)
            return
        fields = dataclasses.asdict(item)  # type: ignore[call-overload]
        if computed is not None:
            fields.update(computed(item))
        _print(json_safe(json.dumps(fields)), sys.stdout)

    return show


async def _show_command(args: argparse.Namespace) -> int:
    """Each answer as ``KEY<tab>TEXT`` (newlines and other controls escaped, so one line
    each), or as CSV rows; a line that is no results line is named on stderr (exit 1)."""
    bad = 0
    if args.csv:
        _print(_csv_row(["key", "text", "error"]), sys.stdout)
    for answer in read_answers(args.results):
        if answer.problem is not None:
            bad += 1
            where = f"{display_path(args.results)}:{answer.line}"
            _print(f"error: {where}: not a results line: {answer.problem}", sys.stderr)
        elif args.csv:
            _print(_csv_row([answer.key, answer.text or "", answer.error or ""]), sys.stdout)
        else:
            _print(f"{one_line(answer.key)}\t{one_line(_plain_text(answer))}", sys.stdout)
    return EXIT_FAILED if bad else EXIT_OK


def _plain_text(answer: Answer) -> str:
    return f"[error {answer.error}]" if answer.error is not None else answer.text or ""


def _csv_row(fields: list[str]) -> str:
    """One CSV record (RFC 4180 quoting by the csv module), without its line end. The
    writer's own "\r\n" ending stays, so that a field with a lone \r is quoted too."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(fields)
    return buffer.getvalue().removesuffix("\r\n")


def _emulator_hints(base_url: str) -> str:
    """How to point this tool and the google-genai SDK at a standalone emulator (any key
    works; the SDK reads GOOGLE_GEMINI_BASE_URL and takes ``http_options.base_url``)."""
    return (
        "point gembatch-async at it (in another shell):\n"
        f"  export GOOGLE_GEMINI_BASE_URL={base_url} GEMINI_API_KEY=any-key\n"
        "or the google-genai SDK:\n"
        f'  client = genai.Client(api_key="any-key", http_options={{"base_url": "{base_url}"}})'
    )


async def _serve_emulator(args: argparse.Namespace) -> int:
    from ..emulator import EmulatorConfig, FaultSpecError, serve_emulator

    try:
        config = EmulatorConfig(
            host=args.host,
            port=args.port,
            state_dir=args.state_dir,
            latency_ms=args.latency_ms,
            processing_seconds=args.processing_seconds,
            faults=args.faults,
            fault_seed=args.fault_seed,
            max_unfinished_batches=args.max_unfinished_batches,
            enqueued_token_quota=args.enqueued_token_quota,
            expire_after_seconds=args.expire_after,
            storage_quota_bytes=args.storage_quota_bytes,
            answer_invalid_lines=args.answer_invalid_lines,
            refused_fields=tuple(args.refused_fields),
            extra_models=tuple(args.models),
            request_errors=args.request_errors,
            webhook_faults=args.webhook_faults,
        )
        server = serve_emulator(config)
    except FaultSpecError as exc:
        _print(f"error: --faults: {exc}", sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        _print(f"error: {exc}", sys.stderr)
        return EXIT_USAGE
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server as running:
            _print(f"Gemini API emulator listening on {running.base_url}", sys.stdout)
            _print(_emulator_hints(running.base_url), sys.stderr)
            async for _ in signals:
                break
    return EXIT_OK
