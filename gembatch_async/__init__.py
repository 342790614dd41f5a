"""gembatch-async: submit JSONL files to the Gemini Batch API, many at once, exactly once.

The public API is re-exported here; everything else lives in private modules. The names
whose modules import google-genai load on first use (PEP 562 ``__getattr__``), so the
CLI's ``--version``, ``--help`` and ``show`` start without the SDK.
"""

from __future__ import annotations

# Private aliases: vars(gembatch_async) holds the public API and nothing else.
import importlib as _importlib
import typing as _typing

from ._backends import Backend, VertexTarget
from ._errors import (
    AlreadyExistsApiError,
    AmbiguousApiError,
    ApiError,
    CapacityApiError,
    GembatchError,
    InputChangedError,
    JournalError,
    MissingApiKeyError,
    NotFoundApiError,
    PermanentApiError,
    PreflightError,
    Problem,
    TransientApiError,
    UnansweredApiError,
    UsageError,
)
from ._events import (
    BatchStats,
    CleanupFailed,
    Event,
    EventHandler,
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
)
from ._prices import Cost, PriceOverride, parse_price_override, price_tokens
from ._results import ResultCounts, ResultFile
from ._results._usage import TokenCounts, TokenUsage
from ._settings import DEFAULT_MODEL, RetrySettings, SubmitSettings
from ._version import __version__

if _typing.TYPE_CHECKING:
    from ._backends._genai import GeminiApi, open_client
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
    from ._run import run
    from ._submit import submit
    from ._webhooks import WebhookRefused, WebhookSettings, webhook_app

#: The public names whose modules import the SDK, and where each lives.
_ON_FIRST_USE = {
    **dict.fromkeys(("GeminiApi", "open_client"), "._backends._genai"),
    # The webhook receiver loads Starlette and PyJWT: half of the package's import time.
    **dict.fromkeys(("WebhookRefused", "WebhookSettings", "webhook_app"), "._webhooks"),
    **dict.fromkeys(
        (
            "Cleaned",
            "JobsContext",
            "JobStatus",
            "cancel_jobs",
            "cleanup_files",
            "download_results",
            "open_jobs",
            "refresh_status",
            "watch_status",
        ),
        "._jobs",
    ),
    "run": "._run",
    "submit": "._submit",
}


def __getattr__(name: str) -> _typing.Any:
    """A public name that needs the SDK, imported the first time it is asked for."""
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # asked once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE})


__all__ = [
    "DEFAULT_MODEL",
    "AlreadyExistsApiError",
    "AmbiguousApiError",
    "ApiError",
    "Backend",
    "BatchStats",
    "CapacityApiError",
    "Cleaned",
    "CleanupFailed",
    "Cost",
    "Event",
    "EventHandler",
    "FileDeferred",
    "FileFailed",
    "FileSkipped",
    "FileSubmitted",
    "GembatchError",
    "GeminiApi",
    "InputChangedError",
    "JobChanged",
    "JobEnded",
    "JobStatus",
    "JobsContext",
    "JournalError",
    "JournalProblem",
    "MissingApiKeyError",
    "NotFoundApiError",
    "PermanentApiError",
    "PreflightError",
    "PriceOverride",
    "Problem",
    "ResultCounts",
    "ResultFile",
    "ResultsSaved",
    "RetrySettings",
    "Retrying",
    "RunSummary",
    "SubmitSettings",
    "SubmitSummary",
    "TokenCounts",
    "TokenUsage",
    "TransientApiError",
    "TwinFound",
    "UnansweredApiError",
    "UsageError",
    "VertexTarget",
    "WaitingForCapacity",
    "WebhookRefused",
    "WebhookSettings",
    "WouldSubmit",
    "__version__",
    "cancel_jobs",
    "cleanup_files",
    "download_results",
    "open_client",
    "open_jobs",
    "parse_price_override",
    "price_tokens",
    "refresh_status",
    "run",
    "submit",
    "watch_status",
    "webhook_app",
]
