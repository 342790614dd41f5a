"""gembatch-async: submit JSONL files to the Gemini Batch API, many at once, exactly once.

The public API is re-exported here; everything else lives in private modules.
"""

from ._client import GeminiApi, open_client
from ._errors import (
    AlreadyExistsApiError,
    AmbiguousApiError,
    ApiError,
    GembatchError,
    JournalError,
    MissingApiKeyError,
    NotFoundApiError,
    PermanentApiError,
    PreflightError,
    Problem,
    TransientApiError,
    UsageError,
)
from ._events import (
    CleanupFailed,
    Event,
    EventHandler,
    FileFailed,
    FileSkipped,
    FileSubmitted,
    JournalProblem,
    Retrying,
    SubmitSummary,
    WouldSubmit,
)
from ._jobs import (
    Cleaned,
    JobsContext,
    JobStatus,
    cancel_jobs,
    cleanup_files,
    download_results,
    open_jobs,
    refresh_status,
    watch_status,
)
from ._results import ResultCounts, ResultFile
from ._settings import DEFAULT_MODEL, RetrySettings, SubmitSettings
from ._submit import submit
from ._version import __version__

__all__ = [
    "DEFAULT_MODEL",
    "AlreadyExistsApiError",
    "AmbiguousApiError",
    "ApiError",
    "Cleaned",
    "CleanupFailed",
    "Event",
    "EventHandler",
    "FileFailed",
    "FileSkipped",
    "FileSubmitted",
    "GembatchError",
    "GeminiApi",
    "JobStatus",
    "JobsContext",
    "JournalError",
    "JournalProblem",
    "MissingApiKeyError",
    "NotFoundApiError",
    "PermanentApiError",
    "PreflightError",
    "Problem",
    "ResultCounts",
    "ResultFile",
    "RetrySettings",
    "Retrying",
    "SubmitSettings",
    "SubmitSummary",
    "TransientApiError",
    "UsageError",
    "WouldSubmit",
    "__version__",
    "cancel_jobs",
    "cleanup_files",
    "download_results",
    "open_client",
    "open_jobs",
    "refresh_status",
    "submit",
    "watch_status",
]
