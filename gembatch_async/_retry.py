"""The one retry policy: what is transient, how long to wait, when to give up.

Built on tenacity. The SDK's own retries are off (``_client.NO_SDK_RETRIES``)
so that retries never stack.
"""

from __future__ import annotations

import random
import time
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


def backoff_delay(settings: RetrySettings, attempt: int, error: BaseException | None) -> float:
    """Exponential backoff with jitter, or the server's Retry-After, both capped."""
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, (int, float)) and retry_after >= 0:
        return float(min(retry_after, settings.retry_after_cap))
    exponential = settings.initial_delay * float(2 ** max(0, attempt - 1))
    return min(settings.max_delay, exponential + random.uniform(0, settings.jitter))


def _ignore_retry(attempt: int, delay: float, error: BaseException) -> None:
    """Default: nobody listens to retries."""


def retrying(
    settings: RetrySettings,
    on_retry: OnRetry = _ignore_retry,
    *,
    done: int = 0,
    elapsed: float = 0.0,
) -> AsyncRetrying:
    """A tenacity controller for one step; iterate it with ``async for attempt in ...``.

    ``done`` attempts taking ``elapsed`` seconds already happened outside it.
    """

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        return backoff_delay(settings, state.attempt_number + done, error)

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        if error is not None:
            on_retry(state.attempt_number + done, delay, error)

    return AsyncRetrying(
        sleep=anyio.sleep,
        retry=retry_if_exception_type(TransientApiError),
        stop=stop_after_attempt(max(1, settings.attempts - done))
        | stop_before_delay(max(0.0, settings.total_seconds - elapsed)),
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
    )


async def call_with_retries(
    settings: RetrySettings,
    call: Callable[[], Awaitable[T]],
    on_retry: OnRetry = _ignore_retry,
) -> T:
    """Run ``call`` until it succeeds, fails permanently, or the budget runs out.

    The first attempt runs bare: tenacity's machinery costs CPU on every call,
    and most calls succeed at once (see bench/). It takes over after a failure.
    """
    started = time.monotonic()
    try:
        return await call()
    except TransientApiError as error:
        delay = backoff_delay(settings, 1, error)
        if settings.attempts <= 1 or time.monotonic() - started + delay >= settings.total_seconds:
            raise
        on_retry(1, delay, error)
        await anyio.sleep(delay)
    async for attempt in retrying(settings, on_retry, done=1, elapsed=time.monotonic() - started):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


def describe(error: BaseException) -> str:
    """A one-line reason for an error, for events."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
