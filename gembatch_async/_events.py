"""Frozen records the library emits; the CLI decides how to show them.

Completion events (:class:`FileSubmitted`, :class:`FileSkipped`,
:class:`FileFailed`, :class:`FileDeferred`) carry ``n`` and ``total``: ``n`` counts completions in the
order they happened, 1..total, each exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, Union

if TYPE_CHECKING:  # records only: importing them here would make an import circle
    from ._prices import Cost
    from ._results._usage import TokenUsage


@dataclass(frozen=True)
class BatchStats:
    """A job's request counts, as the service reports them in ``batchStats``."""

    requests: int
    succeeded: int
    failed: int
    pending: int


@dataclass(frozen=True)
class FileSubmitted:
    """A batch job exists for the file and is recorded in the journal."""

    path: str
    batch_name: str
    uploaded_file_name: str
    n: int
    total: int
    #: True when the batch was created by an earlier attempt or run and found again.
    adopted: bool = False
    kind: Literal["submitted"] = field(default="submitted", init=False)


@dataclass(frozen=True)
class FileSkipped:
    """The journal already records a batch for the file."""

    path: str
    batch_name: str
    n: int
    total: int
    #: The file's content differs from what was submitted then.
    changed: bool = False
    #: The batch's state as last recorded ("" when none was): a skipped file whose
    #: batch ended FAILED, CANCELLED or EXPIRED has no results coming (``--retry-failed``).
    state: str = ""
    kind: Literal["skipped"] = field(default="skipped", init=False)


@dataclass(frozen=True)
class FileFailed:
    """No batch was created for the file."""

    path: str
    reason: str
    n: int
    total: int
    #: An upload that could not be cleaned up, or None.
    left_behind: str | None = None
    #: A batch that was created but could not be recorded (the journal refused
    #: the line); the next submit finds it by name and records it.
    unrecorded_batch: str | None = None
    kind: Literal["error"] = field(default="error", init=False)


@dataclass(frozen=True)
class FileDeferred:
    """The service had no capacity for the file (job window or a quota): nothing was
    left on the server, and a later ``submit`` (or ``run``, which waits) picks it up."""

    path: str
    reason: str
    n: int
    total: int
    #: Which limit: "jobs", "tokens", "storage", "refused" (an unnamed 429 on create), "rate".
    limit: str = ""
    kind: Literal["deferred"] = field(default="deferred", init=False)


@dataclass(frozen=True)
class WaitingForCapacity:
    """``run``: the file waits until the service has room for it (reported once per wait)."""

    path: str
    reason: str
    #: Which limit, as in :class:`FileDeferred`.
    limit: str = ""
    kind: Literal["waiting"] = field(default="waiting", init=False)


@dataclass(frozen=True)
class JobChanged:
    """``run``: a job of this run changed state (reported once per change)."""

    path: str
    batch_name: str
    state: str
    #: Request counts when the service gave them.
    stats: BatchStats | None = None
    kind: Literal["job"] = field(default="job", init=False)


@dataclass(frozen=True)
class ResultsSaved:
    """``run``: a succeeded job's results are on disk and its upload is deleted."""

    path: str
    batch_name: str
    output_path: str
    responses: int
    errors: int
    #: The results were already there (an earlier run downloaded them).
    already: bool = False
    #: Every request has exactly one answer (else see ``download`` for which).
    complete: bool = True
    #: Requests in the input, and those without a response (an error answer, or none).
    requests: int = 0
    failed: int = 0
    #: Where the failed requests' input lines are (to send them again), if any failed.
    failed_path: str | None = None
    #: Tokens the answers used, and what they cost (None: not known).
    usage: TokenUsage | None = None
    cost: Cost | None = None
    kind: Literal["results"] = field(default="results", init=False)


@dataclass(frozen=True)
class JobEnded:
    """``run``: a job ended without results (or they could not be fetched)."""

    path: str
    batch_name: str
    state: str
    reason: str
    #: The file is submitted again (``--retry-failed``).
    resubmitted: bool
    kind: Literal["job_ended"] = field(default="job_ended", init=False)


@dataclass(frozen=True)
class Retrying:
    """A step failed transiently and will be tried again after ``delay`` seconds."""

    path: str
    step: str
    attempt: int
    delay: float
    reason: str
    kind: Literal["retrying"] = field(default="retrying", init=False)


@dataclass(frozen=True)
class CleanupFailed:
    """An upload we made could not be deleted; it is left on the server."""

    path: str
    file_name: str
    reason: str
    kind: Literal["cleanup_failed"] = field(default="cleanup_failed", init=False)


@dataclass(frozen=True)
class TwinFound:
    """A second job for one submission (a create whose answer was lost, landed late):
    it is cancelled so the input is paid for once; ``kept`` is the job the journal
    records. ``reason`` says why the cancel failed, when it did."""

    path: str
    kept: str
    twin: str
    cancelled: bool
    reason: str = ""
    kind: Literal["twin_found"] = field(default="twin_found", init=False)


@dataclass(frozen=True)
class JournalProblem:
    """A line of the journal could not be read (and what was done about it)."""

    journal: str
    line: int
    message: str
    kind: Literal["journal_problem"] = field(default="journal_problem", init=False)


@dataclass(frozen=True)
class WouldSubmit:
    """Dry run: the file passed pre-flight and would be submitted."""

    path: str
    count: int
    size_bytes: int
    #: Estimated prompt tokens (characters / 4; see ``_submit._estimate``), and
    #: requests with media whose tokens that leaves out (a lower bound then).
    input_tokens: int | None = None
    with_media: int = 0
    #: ``input_tokens`` were counted by the API's countTokens (``--count-tokens``).
    tokens_counted: bool = False
    #: The estimated input cost at batch (and interactive) prices.
    cost: Cost | None = None
    kind: Literal["would_submit"] = field(default="would_submit", init=False)


Event: TypeAlias = Union[  # noqa: UP007 (a runtime alias must work on Python 3.10 too)
    FileSubmitted,
    FileSkipped,
    FileFailed,
    FileDeferred,
    WaitingForCapacity,
    Retrying,
    CleanupFailed,
    TwinFound,
    JournalProblem,
    WouldSubmit,
    JobChanged,
    ResultsSaved,
    JobEnded,
]
EventHandler = Callable[[Event], None]


@dataclass(frozen=True)
class SubmitSummary:
    """What one submit run did."""

    submitted: int
    skipped: int
    failed: int
    elapsed: float
    #: The run was stopped (stop request or cancellation) before every file was done.
    interrupted: bool = False
    #: Files that were neither submitted, skipped nor failed because the run stopped.
    not_started: int = 0
    #: Files the service had no capacity for; a later run picks them up.
    deferred: int = 0
    #: Dry run: the estimated prompt tokens of what would be submitted, and their cost.
    input_tokens: int | None = None
    cost: Cost | None = None
    #: ... counted by the API's countTokens rather than estimated.
    tokens_counted: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing was left undone."""
        return self.failed == 0 and self.deferred == 0 and not self.interrupted


@dataclass(frozen=True)
class RunSummary:
    """What one ``run`` did."""

    submitted: int
    skipped: int
    #: Files that failed: at submit, as a job (FAILED, EXPIRED, CANCELLED, not
    #: resubmitted), or whose results could not be fetched.
    failed: int
    #: Files whose results are on disk.
    downloaded: int
    elapsed: float
    interrupted: bool = False
    #: Of those, files whose output lacked answers or had unknown ones.
    incomplete: int = 0
    #: Requests in the files whose results are on disk: answered with a response, or
    #: failed (an error answer, or none), whose input lines are in ``failed_paths``.
    requests: int = 0
    answered: int = 0
    failed_requests: int = 0
    failed_paths: tuple[str, ...] = ()
    #: Of ``failed_paths``: those whose input has used up its ``--resubmits`` rounds (as
    #: the journal counts them), so ``--retry-failed`` alone sends nothing more; and the
    #: most rounds one of them had: ``--resubmits`` above it sends them again.
    used_up_paths: tuple[str, ...] = ()
    rounds_used: int = 0
    #: Every input has its results and every request a response: nothing to send again.
    #: (The exit code is 0 with failed requests too: an error answer is an answer.)
    complete: bool = False
    #: Tokens used by the answers of the results written in this run, and their cost.
    usage: TokenUsage | None = None
    cost: Cost | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.incomplete == 0 and not self.interrupted


def event_to_dict(event: Event | SubmitSummary | RunSummary) -> dict[str, Any]:
    """A JSON-ready dict of an event, with its ``kind`` first."""
    data = asdict(event)
    kind = data.pop("kind", "summary")
    return {"event": kind, **data}


def ignore_events(event: Event) -> None:
    """The default handler: a library caller that does not listen."""
