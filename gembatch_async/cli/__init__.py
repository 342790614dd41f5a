"""The command line: parse, run, render events, own the exit codes.

This is the only module that prints or exits. Exit codes: 0 all good, 1 some
file failed, 2 usage or pre-flight error (nothing was sent), 3 some files wait
for service capacity (run submit again later, or use run), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib.util
import io
import json
import math
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

import anyio

from .._backends import (
    BACKEND_ENV,
    BACKENDS,
    DEFAULT_BACKEND,
    VERTEX,
    VertexTarget,
    backend_of_line,
    stages_in_cloud_storage,
)
from .._errors import GembatchError, UsageError, leaf_errors
from .._events import Event, SubmitSummary
from .._journal import peek_lines
from .._names import (
    bucket_problem,
    display_path,
    json_safe,
    location_problem,
    mime_type_problem,
    model_problem,
    project_problem,
)
from .._prices import PriceOverride, parse_price_override
from .._results._show import Answer, one_line, read_answers
from .._settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_JOB_INFO,
    DEFAULT_MIME_TYPE,
    DEFAULT_RESUBMITS,
    ENQUEUED_TOKEN_QUOTA_ENV,
    JOB_WINDOW,
    JOB_WINDOW_ENV,
    MAX_INPUT_BYTES,
    MODEL_ENV,
    RetrySettings,
    SubmitSettings,
    api_key_from_env,
    default_model,
    redact,
)
from .._version import __version__
from ._render import (
    render_cleaned,
    render_download_summary,
    render_json,
    render_result,
    render_run_summary,
    render_status,
    render_summary,
    render_text,
)
from ._webhook_args import add_webhook_options, poll_interval, webhook_settings

# Commands that call a service import the SDK when they run (see _startup_modules in
# tests/cli/test_startup.py): --version, --help and show start without it.
if TYPE_CHECKING:
    from .._jobs import JobsContext

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEFERRED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
T = TypeVar("T")
EMULATOR_STATE_DIR = ".gembatch-emulator"
DEBUG_ENV = "GEMBATCH_DEBUG"
#: The emulated jobs' duration for both --emulator and the emulator command, so a script or
#: CI job can shorten every run at once (argparse converts and checks the string default).
PROCESSING_SECONDS_ENV = "GEMBATCH_EMULATOR_PROCESSING_SECONDS"


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number not below ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "number"
    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _price(text: str) -> PriceOverride:
    """An argparse type: ``input=USD,output=USD[,...]`` per million tokens."""
    try:
        return parse_price_override(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--price: ")) from None


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def _size(text: str) -> int:
    """An argparse type: a size in bytes, like 1500000, 500MB or 1.5GiB, at most 2 GB."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 500MB or 1GiB")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if not 1 <= value <= MAX_INPUT_BYTES:
        raise argparse.ArgumentTypeError(f"must be 1 byte to {MAX_INPUT_BYTES} (the API's limit)")
    return value


def _name(rule: Callable[[str], str | None], kind: str) -> Callable[[str], str]:
    """An argparse type from one of ``_names``' rules (the library applies the same)."""

    def parse(text: str) -> str:
        problem = rule(text)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return text

    parse.__name__ = kind
    return parse


_mime_type = _name(mime_type_problem, "MIME type")


def _port(text: str) -> int:
    value = _at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gembatch-async",
        description="Submit JSONL request files to the Gemini Batch API, many at once, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, after_command=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_submit(commands)
    _add_run(commands)
    _add_job_commands(commands)
    _add_emulator(commands)
    _add_show(commands)
    for name, sub in commands.choices.items():
        if name in GLOBAL_OPTION_COMMANDS:
            _add_global_options(sub, after_command=True)
    return parser


#: The commands that use the journal or the API, so accept the global options after their
#: name too (``emulator`` serves its own; ``show`` reads one results file).
GLOBAL_OPTION_COMMANDS = ("submit", "run", "status", "download", "cancel", "cleanup")


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options of every journal or API command, before or after the command's name.

    After it, they default to SUPPRESS: argparse copies a subcommand's values over the
    top level's, so a real default there would undo a value given before the command.
    Given in both places, the one after the command wins.
    """
    group = parser.add_argument_group(
        "global options (before or after the command)"
        if after_command
        else f"global options (before the command, or after {', '.join(GLOBAL_OPTION_COMMANDS)})"
    )

    def default(value: object) -> object:
        return argparse.SUPPRESS if after_command else value

    group.add_argument(
        "--job-info",
        default=default(DEFAULT_JOB_INFO),
        metavar="PATH",
        help=f"the journal of submitted jobs (default: {DEFAULT_JOB_INFO})",
    )
    group.add_argument(
        "--emulator",
        action="store_true",
        default=default(False),
        help="run against a built-in Gemini API emulator (offline, no API key needed)",
    )
    group.add_argument(
        "--emulator-processing-seconds",
        type=_seconds,
        default=default(os.environ.get(PROCESSING_SECONDS_ENV) or "30"),
        metavar="S",
        help="with --emulator: how long each emulated job takes from PENDING to SUCCEEDED "
        f"(default: ${PROCESSING_SECONDS_ENV} or 30)",
    )
    group.add_argument(
        "--price",
        type=_price,
        default=default(None),
        metavar="input=USD,output=USD[,cached=USD]",
        help="batch rates in USD per million tokens, instead of genai-prices' (also "
        "interactive-input=, interactive-output=, interactive-cached= for the comparison)",
    )
    _add_backend_options(group, default)


def _add_backend_options(
    parser: argparse._ArgumentGroup, default: Callable[[object], object]
) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=default(os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND),
        help=f"where submit and run send jobs (default: ${BACKEND_ENV} or {DEFAULT_BACKEND}); the job "
        "commands use the backend each journal line records",
    )
    parser.add_argument(
        "--project",
        type=_name(project_problem, "project"),
        default=default(None),
        metavar="ID",
        help="Vertex: the Google Cloud project ($GOOGLE_CLOUD_PROJECT)",
    )
    parser.add_argument(
        "--location",
        type=_name(location_problem, "location"),
        default=default(None),
        metavar="REGION",
        help="Vertex: the region, e.g. us-central1 ($GOOGLE_CLOUD_LOCATION)",
    )
    parser.add_argument(
        "--bucket",
        type=_name(bucket_problem, "bucket"),
        default=default(None),
        metavar="gs://BUCKET[/PREFIX]",
        help="Vertex: where inputs and outputs go ($GEMBATCH_BUCKET)",
    )


def _add_submit(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = commands.add_parser("submit", help="upload files and create one batch job per file")
    _add_submit_options(sub)
    sub.add_argument("--force", action="store_true", help="submit files already recorded again")
    sub.add_argument("--dry-run", action="store_true", help="only run the pre-flight checks")


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run", help="submit, watch, download and clean up, until every file's results are in"
    )
    _add_submit_options(run)
    run.add_argument(
        "--interval",
        type=_positive_seconds,
        default=None,
        metavar="S",
        help="longest wait between polls, shorter while jobs are finishing (default: 30); "
        "with --webhook-url, of the fallback poll (default there: 300)",
    )
    add_webhook_options(run)
    run.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="mirror the inputs' paths under DIR (default: <input dir>/results/<input name>)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="only run the pre-flight checks and estimate the cost (as submit --dry-run)",
    )


def _add_submit_options(sub: argparse.ArgumentParser) -> None:
    """What submit and run share: inputs, model, concurrency, retries, output."""
    sub.add_argument("files", nargs="+", metavar="FILE", help="JSONL request files")
    sub.add_argument(
        "-m",
        "--model",
        type=_name(model_problem, "model"),
        default=None,
        metavar="NAME",
        help=f"model name (default: $GEMBATCH_MODEL or {default_model()})",
    )
    sub.add_argument(
        "-c",
        "--concurrency",
        type=_at_least(1),
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"files in flight at once (default: {DEFAULT_CONCURRENCY})",
    )
    sub.add_argument(
        "--retry-failed",
        action="store_true",
        help="send again the requests without an answer: of jobs that ended FAILED, "
        "CANCELLED or EXPIRED, and those a job answered with an error",
    )
    sub.add_argument(
        "--resubmits",
        type=_at_least(0),
        default=DEFAULT_RESUBMITS,
        metavar="N",
        help="with --retry-failed: times an input's unanswered requests may be sent again, "
        "counted in the journal (and, for run, times a file is submitted again in one run) "
        f"(default {DEFAULT_RESUBMITS})",
    )
    sub.add_argument(
        "--count-tokens",
        action="store_true",
        help="with --dry-run: count input tokens with the API's countTokens, one call per "
        "request (at most 10,000), instead of estimating them locally",
    )
    sub.add_argument(
        "--max-requests-per-job",
        type=_at_least(1),
        default=None,
        metavar="N",
        help="split an input with more requests into parts, each its own job (default: "
        "none on Gemini; 200,000, Vertex's limit, on Vertex)",
    )
    sub.add_argument(
        "--max-bytes-per-job",
        type=_size,
        default=None,
        metavar="SIZE",
        help="split a larger input into parts (e.g. 500MB; default and most: the API's 2GB, "
        "on Vertex 1GB)",
    )
    sub.add_argument(
        "--pack",
        action="store_true",
        help="pack small inputs into shared jobs, as few as the per-job limits allow "
        "(results still go to each input's own file)",
    )
    sub.add_argument(
        "--no-schema-check",
        action="store_true",
        help="do not check requests against the API's request schema (for fields newer "
        "than this tool)",
    )
    sub.add_argument("--json", action="store_true", help="print one JSON event per line")
    sub.add_argument(
        "--grace",
        type=_seconds,
        default=SubmitSettings.cleanup_seconds,
        metavar="S",
        help="after Ctrl-C, seconds files in flight get to finish, and again to clean up "
        "(default: %(default)s)",
    )
    sub.add_argument(
        "--mime-type",
        type=_mime_type,
        default=DEFAULT_MIME_TYPE,
        metavar="TYPE",
        help=f"MIME type sent with uploads (default: {DEFAULT_MIME_TYPE})",
    )
    sub.add_argument(
        "--retry-attempts",
        type=_at_least(1),
        default=RetrySettings.attempts,
        metavar="N",
        help="attempts per step before giving up (default: %(default)s)",
    )
    sub.add_argument(
        "--retry-max-delay",
        type=_seconds,
        default=RetrySettings.max_delay,
        metavar="S",
        help="longest wait between attempts, server-requested delays included (default: %(default)s)",
    )
    sub.add_argument(
        "--retry-seconds",
        type=_positive_seconds,
        default=RetrySettings.total_seconds,
        metavar="S",
        help="time budget per step for retries (default: %(default)s)",
    )
    _add_capacity_options(sub)


def _add_capacity_options(sub: argparse.ArgumentParser) -> None:
    """The service's limits the tool counts ahead (argparse converts the $ defaults too)."""
    sub.add_argument(
        "--job-window",
        type=_at_least(1),
        default=os.environ.get(JOB_WINDOW_ENV) or JOB_WINDOW,
        metavar="N",
        help=f"unfinished jobs the project may have; no file starts whose job would not "
        f"fit (default: ${JOB_WINDOW_ENV} or {JOB_WINDOW}, the Gemini API's)",
    )
    sub.add_argument(
        "--enqueued-token-quota",
        type=_at_least(1),
        default=os.environ.get(ENQUEUED_TOKEN_QUOTA_ENV) or None,
        metavar="TOKENS",
        help="your tier's enqueued-token quota for the model; no file starts that would "
        "take our unfinished jobs past it (tokens estimated as bytes / 4), a larger file "
        f"fails (default: ${ENQUEUED_TOKEN_QUOTA_ENV}, else not counted)",
    )
    sub.add_argument(
        "--capacity-probe",
        type=_positive_seconds,
        default=SubmitSettings.capacity_probe_seconds,
        metavar="S",
        help="run, at a limit it cannot see end: first wait before one file tries again "
        "(or the jobs are counted again), doubling to 16 x S (default: %(default)s)",
    )


def _add_job_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    files_help = "input files whose jobs to act on (default: every recorded job)"
    status = commands.add_parser("status", help="show (and record) the state of submitted jobs")
    status.add_argument("files", nargs="*", metavar="FILE", help=files_help)
    status.add_argument("--watch", action="store_true", help="refresh until every job has ended")
    status.add_argument(
        "--interval",
        type=_positive_seconds,
        default=30.0,
        metavar="S",
        help="with --watch: longest wait between refreshes, shorter while jobs are finishing "
        "(default: %(default)g)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object per job")
    download = commands.add_parser(
        "download", help="write the results of succeeded jobs, in input order"
    )
    download.add_argument("files", nargs="*", metavar="FILE", help=files_help)
    download.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="put results under DIR, mirroring the inputs' paths "
        "(default: a results/ folder beside each input)",
    )
    download.add_argument("--force", action="store_true", help="download again what is there")
    download.add_argument(
        "--keep-raw",
        action="store_true",
        help="also keep the job's output as the service wrote it (STEM.raw.jsonl beside the results)",
    )
    download.add_argument("--json", action="store_true", help="print one JSON object per file")
    cancel = commands.add_parser("cancel", help="cancel submitted jobs that have not ended")
    cancel.add_argument("files", nargs="*", metavar="FILE", help=files_help)
    cancel.add_argument("--json", action="store_true", help="print one JSON object per job")
    cleanup = commands.add_parser(
        "cleanup", help="delete the uploads of ended jobs (only those this journal records)"
    )
    cleanup.add_argument(
        "--outputs",
        action="store_true",
        help="also delete the output files the service wrote for those jobs "
        "(on the service; downloaded results are never touched)",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    cleanup.add_argument("--json", action="store_true", help="print one JSON object per file")


def _add_show(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    show = commands.add_parser(
        "show", help="print a results file's answers as key and text, one per line"
    )
    show.add_argument(
        "results",
        metavar="RESULTS_FILE",
        help="a results file of download or run (results/q.jsonl)",
    )
    show.add_argument(
        "--csv",
        action="store_true",
        help="write CSV with a header (key,text,error) instead; newlines stay inside quotes",
    )


def _add_emulator(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    emu = commands.add_parser("emulator", help="serve a local Gemini API emulator")
    emu.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="address to listen on (default: %(default)s)",
    )
    emu.add_argument(
        "--port",
        type=_port,
        default=8089,
        metavar="PORT",
        help="0 picks a free port (default: 8089)",
    )
    emu.add_argument(
        "--state-dir", type=Path, default=None, metavar="DIR", help="keep state on disk here"
    )
    emu.add_argument(
        "--latency-ms", type=_seconds, default=0.0, metavar="MS", help="delay every request"
    )
    emu.add_argument(
        "--processing-seconds",
        type=_seconds,
        default=os.environ.get(PROCESSING_SECONDS_ENV) or "30",
        metavar="S",
        help=f"time from PENDING to SUCCEEDED (default: ${PROCESSING_SECONDS_ENV} or 30)",
    )
    emu.add_argument(
        "--faults", default="", metavar="SPEC", help="ENDPOINT:PROBABILITY:KIND,... to inject"
    )
    emu.add_argument(
        "--fault-seed", type=int, default=None, metavar="N", help="make faults repeatable"
    )
    emu.add_argument(
        "--webhook-faults",
        default="",
        metavar="KINDS",
        help="every webhook delivery: duplicate, late=SECONDS, lost, bad-signature (any, comma-separated)",
    )
    emu.add_argument(
        "--request-errors",
        type=float,
        default=0.0,
        metavar="P",
        help="share of requests (0-1) answered with a per-request error line, "
        "chosen by a hash of --fault-seed, the job and the request's key (default: 0)",
    )
    emu.add_argument(
        "--max-unfinished-batches",
        type=_at_least(0),
        default=100,
        metavar="N",
        help="unfinished batch jobs allowed at once, as the real service (default: %(default)s)",
    )
    emu.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="NAME",
        help="serve one more model beside the built-in catalogue (repeatable); a name with "
        "'embedding' in it supports batch embeddings, any other batch generation",
    )
    emu.add_argument(
        "--enqueued-token-quota",
        type=_at_least(1),
        default=None,
        metavar="TOKENS",
        help="enqueued tokens allowed per model across unfinished jobs, counted as one per "
        "4 bytes of request JSON (default: none)",
    )
    emu.add_argument(
        "--expire-after",
        type=_positive_seconds,
        default=48 * 3600.0,
        metavar="S",
        help="unfinished jobs end EXPIRED this long after creation (default: 48 h, as the service)",
    )
    emu.add_argument(
        "--storage-quota-bytes",
        type=_at_least(0),
        default=20 * 2**30,  # EmulatorConfig's (the emulator is imported only to serve)
        metavar="BYTES",
        help="total size of uploaded files allowed (default: %(default)s, 20 GiB as the service)",
    )
    emu.add_argument(
        "--answer-invalid-lines",
        action="store_true",
        help="answer input lines the service cannot parse with an error line each, instead "
        "of refusing the whole batch create with 400 as the service does",
    )
    emu.add_argument(
        "--refuse-field",
        dest="refused_fields",
        action="append",
        default=[],
        metavar="NAME",
        help="refuse (400) a batch create whose input file uses this request field, as the "
        "service refused responseSchema (repeatable)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend not in BACKENDS:  # argparse checks the flag, not the env default
        parser.error(f"{BACKEND_ENV}={args.backend!r}: choose one of {', '.join(BACKENDS)}")
    if args.command in ("submit", "run") and args.model is None:
        problem = model_problem(default_model())  # the env default, checked as -m is
        if problem is not None:
            parser.error(f"{MODEL_ENV}: {problem}")
    # Beside the journal, so each project folder keeps its own offline state.
    args.emulator_state_dir = Path(os.path.abspath(args.job_info)).parent / EMULATOR_STATE_DIR
    command = {
        "emulator": _serve_emulator,
        "submit": _submit_command,
        "run": _run_command,
        "show": _show_command,
    }.get(args.command, _jobs_command)
    try:
        return anyio.run(command, args, backend="asyncio")
    except KeyboardInterrupt:
        _print("interrupted", sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:
        # Jobs run side by side, so errors come out as a (nested) group: each error
        # in it is one clear line (the same line once); the exit code is the gravest.
        errors = leaf_errors(exc)
        if any(isinstance(error, (SystemExit, KeyboardInterrupt)) for error in errors):
            raise
        shown: dict[str, int] = {}
        for error in errors:
            if isinstance(error, GembatchError):
                text, code = str(error), error.exit_code
            else:
                text, code = _unexpected(error), EXIT_FAILED
            if text not in shown:
                shown[text] = code
                _print(f"error: {text}", sys.stderr)
        return max(shown.values())


def _unexpected(error: BaseException) -> str:
    """The line for an error not of ours: still one line, no traceback (unless
    asked), never the key."""
    if os.environ.get(DEBUG_ENV):
        raise error
    if isinstance(error, OSError) and error.strerror:
        where = f"{display_path(error.filename)}: " if isinstance(error.filename, str) else ""
        text = f"{where}{error.strerror}"
    else:
        text = f"unexpected {type(error).__name__}: {error}"
    return f"{redact(text, api_key_from_env())} (set {DEBUG_ENV}=1 for the traceback)"


def _print(text: str, stream: TextIO) -> None:
    try:
        try:
            print(text, file=stream, flush=True)
        except UnicodeEncodeError:  # a name the stream's encoding cannot hold: escaped
            encoding = stream.encoding or "utf-8"
            print(
                text.encode(encoding, "backslashreplace").decode(encoding), file=stream, flush=True
            )
    except BrokenPipeError:
        # The reader went away (`| head`): keep working and recording, silently.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


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


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """Where the commands send their calls: the Gemini API (key, base URL) and Vertex."""

    api_key: str | None = None
    base_url: str | None = None
    #: Vertex overrides (flags, an emulator); gaps come from journal lines and the env.
    vertex: VertexTarget = dataclasses.field(default_factory=VertexTarget)

    def submit_target(self, backend: str) -> VertexTarget | None:
        """The Vertex target for submit and run, None for the Gemini API."""
        return self.vertex if backend == VERTEX else None


#: The project, location and bucket of ``--emulator --backend vertex``.
EMULATOR_PROJECT = "gembatch-emulator"
EMULATOR_LOCATION = "us-central1"
EMULATOR_BUCKET = "gs://gembatch-emulator"


def _vertex_flags(args: argparse.Namespace) -> VertexTarget:
    return VertexTarget(project=args.project, location=args.location, bucket=args.bucket)


@contextlib.asynccontextmanager
async def _api_endpoint(args: argparse.Namespace) -> AsyncIterator[_Endpoint]:
    """The real APIs from the environment, or in-process emulators (Gemini and Vertex
    routes, and Cloud Storage when Vertex may be used)."""
    flags = _vertex_flags(args)
    if not args.emulator:
        yield _Endpoint(vertex=flags)
        return
    from .._backends._genai import EMULATOR_API_KEY
    from ..emulator import EmulatorConfig, serve_emulator

    state_dir: Path | None = args.emulator_state_dir
    if getattr(args, "dry_run", False) and not args.emulator_state_dir.is_dir():
        state_dir = None  # a dry run writes nothing, not even the emulator's folder
    elif state_dir is not None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--emulator keeps its state in {state_dir}, which cannot be created: "
                f"{exc.strerror}"
            ) from exc
    async with contextlib.AsyncExitStack() as stack:
        storage_url = None
        vertex = flags
        if _may_use_cloud_storage(args):
            vertex = VertexTarget(
                project=flags.project or EMULATOR_PROJECT,
                location=flags.location or EMULATOR_LOCATION,
                bucket=flags.bucket or EMULATOR_BUCKET,
            )
            storage_url = await stack.enter_async_context(_storage_emulator(state_dir, vertex))
        config = EmulatorConfig(
            host="127.0.0.1",
            port=0,
            state_dir=state_dir,
            storage_emulator_host=storage_url,
            processing_seconds=args.emulator_processing_seconds,
        )
        running = await stack.enter_async_context(serve_emulator(config))
        _print(
            f"using the built-in {'Vertex AI and ' if storage_url else ''}Gemini API emulator "
            f"at {running.base_url} (state {f'in {display_path(state_dir)}' if state_dir else 'in memory'})",
            sys.stderr,
        )
        vertex = dataclasses.replace(vertex, base_url=running.base_url, storage_host=storage_url)
        yield _Endpoint(EMULATOR_API_KEY, running.base_url, vertex)


def _may_use_cloud_storage(args: argparse.Namespace) -> bool:
    """The backend asked for, or one a job command's journal lines were submitted to,
    keeps its files in Cloud Storage."""
    if stages_in_cloud_storage(args.backend):
        return True
    if args.command in ("submit", "run"):
        return False
    lines = peek_lines(args.job_info)
    return any(stages_in_cloud_storage(backend_of_line(line)) for line in lines)


@contextlib.asynccontextmanager
async def _storage_emulator(state_dir: Path | None, vertex: VertexTarget) -> AsyncIterator[str]:
    """The in-process Cloud Storage emulator, its bucket created, objects kept beside the
    journal; yields its URL."""
    from ..emulator import serve_storage_emulator

    bucket = (vertex.bucket or EMULATOR_BUCKET).removeprefix("gs://").split("/", 1)[0]
    data_dir = state_dir / "storage" if state_dir is not None else None
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        raise UsageError(
            "--emulator --backend vertex needs the vertex extra: "
            "pip install 'gembatch-async[vertex]'"
        )
    with serve_storage_emulator(data_dir=data_dir, buckets=[bucket]) as running:
        yield running.url


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

    show = _printer(args.json, render_status)
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
    show = _printer(args.json, render_status)
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


_JOB_COMMANDS: dict[str, Callable[[JobsContext, argparse.Namespace], Awaitable[int]]] = {
    "status": _status,
    "download": _download,
    "cancel": _cancel,
    "cleanup": _cleanup,
}


def _printer(as_json: bool, render: Callable[[T], str]) -> Callable[[T], None]:
    def show(item: T) -> None:
        if not as_json:
            _print(render(item), sys.stdout)
            return
        fields = dataclasses.asdict(item)  # type: ignore[call-overload]
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
