"""The command line's grammar: every command, option, default and help text, and the
types that check option values (a bad value is a usage error, exit 2)."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from .._backends import (
    BACKEND_ENV,
    BACKENDS,
    DEFAULT_BACKEND,
)
from .._errors import UsageError
from .._names import (
    bucket_problem,
    location_problem,
    mime_type_problem,
    model_problem,
    project_problem,
)
from .._prices import PriceOverride, parse_price_override
from .._settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_JOB_INFO,
    DEFAULT_MIME_TYPE,
    DEFAULT_RESUBMITS,
    ENQUEUED_TOKEN_QUOTA_ENV,
    JOB_WINDOW,
    JOB_WINDOW_ENV,
    MAX_INPUT_BYTES,
    RetrySettings,
    SubmitSettings,
    default_model,
)
from .._version import __version__
from ._webhook_args import add_webhook_options

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
        help="share of requests (0-1) answered with a per-request error line (on Vertex, "
        "a row with an error status), chosen by a hash of --fault-seed, the job and the "
        "request's key (default: 0)",
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
