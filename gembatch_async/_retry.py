"""The one retry policy: what is transient, how long to wait, when to give up.

Built on tenacity. The SDK's own retries are off (``_client.NO_SDK_RETRIES``)
so that retries never stack.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)

from ._errors import TransientApiError
from ._settings import RetrySettings

T = TypeVar("T")
#: Called before each sleep: (attempt number, delay in seconds, the error).
OnRetry = Callable[[int, float, BaseException], None]

_testing_no_wait = False


def set_testing(no_wait: bool) -> None:
    """Test switch: keep the attempts but skip the waiting between them."""
    global _testing_no_wait
    _testing_no_wait = no_wait


def backoff_delay(settings: RetrySettings, attempt: int, error: BaseException | None) -> float:
    """Exponential backoff with jitter, or the server's Retry-After, both capped."""
    if _testing_no_wait:
        return 0.0
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, (int, float)) and retry_after >= 0:
        return float(min(retry_after, settings.retry_after_cap))
    exponential = settings.initial_delay * float(2 ** max(0, attempt - 1))
    return min(settings.max_delay, exponential + random.uniform(0, settings.jitter))


def _ignore_retry(attempt: int, delay: float, error: BaseException) -> None:
    """Default: nobody listens to retries."""


def retrying(settings: RetrySettings, on_retry: OnRetry = _ignore_retry) -> AsyncRetrying:
    """A tenacity controller for one step; iterate it with ``async for attempt in ...``."""

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        return backoff_delay(settings, state.attempt_number, error)

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        if error is not None:
            on_retry(state.attempt_number, delay, error)

    return AsyncRetrying(
        sleep=anyio.sleep,
        retry=retry_if_exception_type(TransientApiError),
        stop=stop_after_attempt(settings.attempts) | stop_before_delay(settings.total_seconds),
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
    )


async def call_with_retries(
    settings: RetrySettings,
    call: Callable[[], Awaitable[T]],
    on_retry: OnRetry = _ignore_retry,
) -> T:
    """Run ``call`` until it succeeds, fails permanently, or the budget runs out."""
    async for attempt in retrying(settings, on_retry):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


def describe(error: BaseException) -> str:
    """A one-line reason for an error, for events."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
