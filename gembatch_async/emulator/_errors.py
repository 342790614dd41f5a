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


#: Quota metrics named in QuotaFailure details, as Google's quota errors carry them.
JOBS_METRIC = "generativelanguage.googleapis.com/concurrent_batch_jobs"
TOKENS_METRIC = "generativelanguage.googleapis.com/batch_enqueued_tokens"
STORAGE_METRIC = "generativelanguage.googleapis.com/file_storage_bytes"


def quota_error(message: str, metric: str | None = None, model: str | None = None) -> ApiError:
    """429 RESOURCE_EXHAUSTED with a Retry-After hint, and for a quota (``metric``) the
    QuotaFailure detail naming it, in the shape Google's quota errors use."""
    details: list[dict[str, Any]] = []
    if metric is not None:
        violation: dict[str, Any] = {"quotaMetric": metric, "quotaId": _quota_id(metric)}
        if model is not None:
            violation["quotaDimensions"] = {"model": model}
        details.append(
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]}
        )
    details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"})
    return ApiError(429, message, details=details, headers={"Retry-After": "1"})


def _quota_id(metric: str) -> str:
    words = metric.rsplit("/", 1)[-1].split("_")
    return "".join(word.capitalize() for word in words) + "PerProjectPerModel"
