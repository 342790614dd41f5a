"""The public surface: exactly what __all__ promises."""

from __future__ import annotations

import gembatch_async

EXPECTED = {
    "DEFAULT_MODEL",
    "AlreadyExistsApiError",
    "AmbiguousApiError",
    "BatchStats",
    "CapacityApiError",
    "ApiError",
    "CleanupFailed",
    "TwinFound",
    "Event",
    "EventHandler",
    "FileDeferred",
    "FileFailed",
    "FileSkipped",
    "FileSubmitted",
    "GembatchError",
    "Backend",
    "GeminiApi",
    "VertexTarget",
    "InputChangedError",
    "JournalError",
    "JournalProblem",
    "MissingApiKeyError",
    "NotFoundApiError",
    "PermanentApiError",
    "PreflightError",
    "Problem",
    "Retrying",
    "run",
    "RunSummary",
    "ResultsSaved",
    "JobEnded",
    "JobChanged",
    "WaitingForCapacity",
    "WebhookRefused",
    "WebhookSettings",
    "webhook_app",
    "RetrySettings",
    "SubmitSettings",
    "SubmitSummary",
    "TransientApiError",
    "UnansweredApiError",
    "UsageError",
    "WouldSubmit",
    "__version__",
    "open_client",
    "submit",
    "Cleaned",
    "JobsContext",
    "JobStatus",
    "ResultFile",
    "ResultCounts",
    "cancel_jobs",
    "cleanup_files",
    "download_results",
    "open_jobs",
    "refresh_status",
    "watch_status",
    "Cost",
    "PriceOverride",
    "TokenCounts",
    "TokenUsage",
    "parse_price_override",
    "price_tokens",
}


def test_all_is_exactly_the_public_api() -> None:
    """A public name missing from __all__, or an extra one, fails here."""
    assert set(gembatch_async.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(gembatch_async, name)
    public = {n for n in vars(gembatch_async) if not n.startswith("_")} - {"cli", "emulator"}
    assert public <= EXPECTED | {"annotations"}


def test_default_model_is_current_ga() -> None:
    """The retired preview model is not our default."""
    assert gembatch_async.DEFAULT_MODEL == "gemini-3.1-flash-lite"


def test_every_error_has_one_root() -> None:
    """Every exported exception derives from GembatchError."""
    errors = [getattr(gembatch_async, n) for n in EXPECTED if n.endswith("Error")]
    assert all(issubclass(e, gembatch_async.GembatchError) for e in errors)
