"""Google-style API errors: `{"error": {"code", "message", "status"}}` bodies."""

from __future__ import annotations

from typing import Any

# google.rpc.Code names as Google's HTTP frontends map them.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# Messages the real service uses for injected faults.
_FAULT_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The service is currently unavailable.",
    504: "Deadline expired before operation could complete.",
}


def status_name(code: int) -> str:
    """The canonical status string for an HTTP code."""
    if code in _STATUS_NAMES:
        return _STATUS_NAMES[code]
    return "FAILED_PRECONDITION" if code < 500 else "INTERNAL"


def fault_message(code: int) -> str:
    """A realistic message for an injected HTTP fault."""
    return _FAULT_MESSAGES.get(code, f"Injected fault (HTTP {code}).")


class ApiError(Exception):
    """Raised by handlers; rendered as a Google error body with the given HTTP status."""

    def __init__(
        self,
        code: int,
        message: str,
        status: str | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or status_name(code)
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


#: The links of the Help detail every captured Gemini quota 429 carries.
_HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [
        {
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
        }
    ],
}
#: Source: the captured batches.create refusal in a public CI log,
#: langchain4j/langchain4j#3942 (also googleapis/js-genai#1264, python-genai#1901).
GENERIC_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. "
    "To monitor your current usage, head to: https://ai.dev/rate-limit. "
)
#: The file-storage quota names itself. Source: a captured upload refusal,
#: alphaXiv/feedback#16 (QuotaFailure FileStorageBytesPerProject, limit 21474836480).
STORAGE_METRIC = "generativelanguage.googleapis.com/file_storage_bytes"
#: Its retry delay is int64-max seconds. Source: googleapis/python-genai#1172.
_INT64_MAX_DELAY = "9223372036854775807s"


def generic_quota_error() -> ApiError:
    """The 429 batches.create answers at the job window and the enqueued-token quota:
    the generic message and a Help link only; no QuotaFailure, no quota name, no
    RetryInfo and no Retry-After header (langchain4j/langchain4j#3942)."""
    return ApiError(429, GENERIC_QUOTA_MESSAGE, details=[dict(_HELP)])


def storage_quota_error(limit: int) -> ApiError:
    """The 429 an upload past the file-storage quota answers: QuotaFailure naming
    ``file_storage_bytes`` (alphaXiv/feedback#16), RetryInfo of int64-max seconds
    (python-genai#1172). No Retry-After header: none was reported."""
    violation = {
        "quotaMetric": STORAGE_METRIC,
        "quotaId": "FileStorageBytesPerProject",
        "quotaValue": str(limit),
    }
    message = (
        GENERIC_QUOTA_MESSAGE.rstrip()
        + f"\n* Quota exceeded for metric: {STORAGE_METRIC}, limit: {limit}"
    )
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
        dict(_HELP),
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": _INT64_MAX_DELAY},
    ]
    return ApiError(429, message, details=details)


def rate_limit_error(message: str) -> ApiError:
    """An injected 429 that says when to retry (RetryInfo 1 s and Retry-After: 1), the
    form of a rate limit's 429. Not captured from batches.create: a test fault."""
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
    ]
    return ApiError(429, message, details=details, headers={"Retry-After": "1"})
