"""Defaults in one place, and the frozen settings a run is built from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._errors import UsageError
from ._names import mime_type_problem, model_problem, path_problem

if TYPE_CHECKING:
    from ._prices import PriceOverride

#: The original gembatch defaulted to gemini-2.5-flash-lite-preview-06-17, which
#: Google has shut down (a create with it now answers 404). This is the current
#: cheap GA model; override with -m/--model or GEMBATCH_MODEL.
DEFAULT_MODEL = "gemini-3.1-flash-lite"
DEFAULT_CONCURRENCY = 8
#: The original tool's "jsonl" was rejected by the service for a while
#: (USERS.md P4); application/jsonl is the documented JSONL type.
DEFAULT_MIME_TYPE = "application/jsonl"
DEFAULT_JOB_INFO = "job-info.jsonl"
#: The Batch API refuses input files over 2 GB.
MAX_INPUT_BYTES = 2 * 10**9
#: Vertex AI batch prediction takes at most 200,000 requests per job and a Cloud
#: Storage input file of at most 1 GB (Google Cloud, "Batch prediction with Gemini",
#: Quotas and limits). 1 GB read as 10**9 bytes, the smaller reading.
VERTEX_MAX_INPUT_BYTES = 10**9
VERTEX_MAX_REQUESTS = 200_000
#: Uploads a project may store at once.
STORAGE_QUOTA_BYTES = 20 * 10**9
#: Unfinished ("concurrent") batch jobs a project may have; create answers 429 past it.
#: Source: ai.google.dev/gemini-api/docs/rate-limits ("Batch API": concurrent batch
#: requests, 100) and ai.google.dev/gemini-api/docs/batch-mode.
JOB_WINDOW = 100
JOB_WINDOW_ENV = "GEMBATCH_JOB_WINDOW"
ENQUEUED_TOKEN_QUOTA_ENV = "GEMBATCH_ENQUEUED_TOKEN_QUOTA"
#: Uploads expire after this long; older journal lines hold no storage.
UPLOAD_LIFETIME_S = 48 * 3600
#: Per HTTP request; a chunk is at most 8 MiB, so this bounds a stalled upload.
DEFAULT_REQUEST_TIMEOUT_S = 120.0
MODEL_ENV = "GEMBATCH_MODEL"
API_KEY_ENVS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")  # the SDK's own order of preference


@dataclass(frozen=True)
class RetrySettings:
    """How hard to try a call that failed transiently."""

    attempts: int = 6
    total_seconds: float = 300.0
    initial_delay: float = 1.0
    max_delay: float = 30.0
    #: Server-requested delays beyond this are not honoured (the storage-quota
    #: 429 asks for int64-max seconds, USERS.md P1).
    retry_after_cap: float = 60.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise UsageError("retry attempts must be at least 1")
        if self.total_seconds <= 0 or self.initial_delay < 0 or self.max_delay < 0:
            raise UsageError("retry delays must be positive")


#: Rounds of resending unanswered requests: per-request errors are mostly transient
#: (python-genai#1341), so one more round answers most of them at the cost of one more
#: job; a request that fails again stays in the failed-requests file with its error.
DEFAULT_RESUBMITS = 1


@dataclass(frozen=True)
class SubmitSettings:
    """Everything one submit run needs besides the paths and the client."""

    model: str = DEFAULT_MODEL
    concurrency: int = DEFAULT_CONCURRENCY
    mime_type: str = DEFAULT_MIME_TYPE
    force: bool = False
    retry_failed: bool = False
    #: With ``retry_failed``: how many times an input's unanswered requests may be sent
    #: again (rounds, counted in the journal across runs; see ``_results._remainder``).
    resubmits: int = DEFAULT_RESUBMITS
    dry_run: bool = False
    retry: RetrySettings = field(default_factory=RetrySettings)
    #: How long in-flight files get to finish or clean up after a stop request
    #: or cancellation.
    cleanup_seconds: float = 15.0
    #: At a full job window or quota, wait for capacity (``run``) instead of
    #: deferring the file to a later run (``submit``).
    wait_for_capacity: bool = False
    #: The project's storage for uploads (the service allows 20 GB); no upload
    #: starts that would take our unfinished uploads past it.
    storage_quota_bytes: int = STORAGE_QUOTA_BYTES
    #: While waiting at a limit whose end we cannot see, one file tries (or, for a
    #: counted limit, one listing counts again) after this long, the wait doubling
    #: after each try up to ``capacity_probe_max_seconds``.
    capacity_probe_seconds: float = 60.0
    capacity_probe_max_seconds: float = 960.0
    #: The project's unfinished jobs allowed at once (the service's 100); no upload
    #: starts whose job would not fit in it. None: do not count (the service's 429 decides).
    job_window: int | None = JOB_WINDOW
    #: The project's enqueued-token quota for the model (it depends on the tier, which
    #: no API reports; see the rate-limits page). Given, no file starts whose estimated
    #: tokens (bytes / 4) would take our unfinished jobs past it, and a file larger
    #: than the whole quota fails at once. None: not counted.
    enqueued_token_quota: int | None = None
    #: An input over either is split at line boundaries into parts, each its own job.
    #: None: the backend's own limit (Gemini: 2 GB, no request limit; Vertex: 1 GB and
    #: 200,000 requests).
    max_bytes_per_job: int | None = None
    max_requests_per_job: int | None = None
    #: Check every request against the API's request schema before uploading;
    #: turn off only for fields newer than this tool's schema.
    schema_check: bool = True
    #: Ask the service for a dynamic webhook to this URL on each job (Gemini API only;
    #: see ``_webhooks``). None: no webhook, the watcher polls.
    webhook_url: str | None = None
    #: Rates to price tokens with instead of genai-prices' (``--price``).
    prices: PriceOverride | None = None
    #: A dry run counts prompt tokens with the API's countTokens (one call per request)
    #: instead of estimating them locally.
    count_tokens: bool = False
    #: Pack whole inputs that fit together into shared jobs (``_submit/_pack``), up to
    #: the per-job limits above: N small files run as one job instead of N.
    pack: bool = False

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.resubmits < 0:
            raise UsageError(f"resubmits must be at least 0, got {self.resubmits}")
        for problem in (model_problem(self.model), mime_type_problem(self.mime_type)):
            if problem is not None:
                raise UsageError(problem)
        if (
            self.max_bytes_per_job is not None
            and not 1 <= self.max_bytes_per_job <= MAX_INPUT_BYTES
        ):
            raise UsageError(f"bytes per job must be 1 to {MAX_INPUT_BYTES} (the API's limit)")
        if self.max_requests_per_job is not None and self.max_requests_per_job < 1:
            raise UsageError("requests per job must be at least 1")
        if self.job_window is not None and self.job_window < 1:
            raise UsageError(f"the job window must be at least 1, got {self.job_window}")
        if self.enqueued_token_quota is not None and self.enqueued_token_quota < 1:
            raise UsageError("the enqueued-token quota must be at least 1")
        if not 0 < self.capacity_probe_seconds <= self.capacity_probe_max_seconds:
            raise UsageError("capacity probe delays must be positive, the first not over the cap")

    @property
    def model_resource(self) -> str:
        """The model as the API names it: ``models/NAME`` (or ``tunedModels/NAME``)."""
        name = self.model.strip().removeprefix("publishers/google/")
        return name if name.startswith(("models/", "tunedModels/")) else f"models/{name}"


def default_model() -> str:
    """The model to use when none is given: GEMBATCH_MODEL, else DEFAULT_MODEL."""
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def unsendable_key_reason(key: str) -> str | None:
    """Why an API key cannot go in an HTTP header, or None. Never quotes the key."""
    if all("!" <= char <= "~" for char in key):
        return None
    return (
        "the API key holds a space, a control character (a newline?) or a non-ASCII "
        "character, so it cannot be sent; check how it was set"
    )


def redact(text: str, secret: str | None) -> str:
    """The text with the secret replaced, so it can be shown or logged
    (every message built from an SDK error or an unexpected one passes here)."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "[redacted]")
    return text


def checked_path(path: str | os.PathLike[str], what: str) -> str:
    """``path`` as a string, or a UsageError naming ``what`` when no file can have it
    (a NUL, not a path at all): every public entry point checks its path arguments
    here, so none leaks a bare ValueError or TypeError from the OS."""
    problem = path_problem(path)
    if problem is not None:
        raise UsageError(f"{what}: {problem}")
    return os.fspath(path)


def refuse_unsendable_key(key: str | None) -> None:
    """The one check of a given key, before any command starts its calls (so the same
    clear error comes once, not once per job)."""
    reason = unsendable_key_reason(key) if key else None
    if reason is not None:
        raise UsageError(reason)


def api_key_from_env() -> str | None:
    """The API key the SDK itself would pick, or None."""
    for name in API_KEY_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None
