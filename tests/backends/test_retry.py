"""The retry policy on its own: which errors, how many attempts, how long each wait.

No client here: the call under retry is a plain coroutine that fails a given
number of times, so the schedule can be asserted exactly (jitter off).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gembatch_async import RetrySettings
from gembatch_async._errors import (
    AmbiguousApiError,
    ApiError,
    PermanentApiError,
    TransientApiError,
)
from gembatch_async._retry import backoff_delay, call_with_retries, describe

EXACT = RetrySettings(attempts=5, total_seconds=30, initial_delay=0.01, max_delay=0.05, jitter=0)


@dataclass
class Flaky:
    """Fails with ``errors`` in turn, then answers "ok"; counts its calls."""

    errors: list[ApiError]
    calls: int = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@dataclass
class Retries:
    seen: list[tuple[int, float, str]] = field(default_factory=list)

    def __call__(self, attempt: int, delay: float, error: BaseException) -> None:
        self.seen.append((attempt, delay, str(error)))


def transient(n: int, retry_after: float | None = None) -> list[ApiError]:
    return [TransientApiError(f"503 number {i + 1}", retry_after=retry_after) for i in range(n)]


@pytest.mark.asyncio
async def test_exponential_schedule_capped_at_max_delay() -> None:
    """Waits double from initial_delay and stop growing at max_delay; attempts count from 1."""
    call, retries = Flaky(transient(4)), Retries()
    assert await call_with_retries(EXACT, call, retries) == "ok"
    assert call.calls == 5
    assert [(a, round(d, 6)) for a, d, _ in retries.seen] == [
        (1, 0.01),
        (2, 0.02),
        (3, 0.04),
        (4, 0.05),
    ]
    assert [reason for *_, reason in retries.seen] == [f"503 number {i}" for i in range(1, 5)]


@pytest.mark.asyncio
async def test_gives_up_after_the_attempts_with_the_last_error() -> None:
    """attempts=3: three calls, two waits, then the third error comes out as itself."""
    call, retries = Flaky(transient(5)), Retries()
    settings = RetrySettings(attempts=3, initial_delay=0.001, max_delay=0.001, jitter=0)
    with pytest.raises(TransientApiError, match="503 number 3"):
        await call_with_retries(settings, call, retries)
    assert call.calls == 3
    assert [a for a, *_ in retries.seen] == [1, 2]


@pytest.mark.asyncio
async def test_two_attempts_mean_one_retry() -> None:
    """attempts=2: the bare first call, then exactly one more."""
    call = Flaky(transient(5))
    with pytest.raises(TransientApiError, match="503 number 2"):
        await call_with_retries(RetrySettings(attempts=2, initial_delay=0.001, jitter=0), call)
    assert call.calls == 2


@pytest.mark.asyncio
async def test_one_attempt_means_no_retry() -> None:
    """attempts=1: the first transient error is final and nobody is told of a retry."""
    call, retries = Flaky(transient(1)), Retries()
    with pytest.raises(TransientApiError):
        await call_with_retries(RetrySettings(attempts=1), call, retries)
    assert (call.calls, retries.seen) == (1, [])


@pytest.mark.asyncio
async def test_permanent_errors_are_not_retried() -> None:
    """A 4xx is final at once, whatever the budget."""
    call, retries = Flaky([PermanentApiError("400 INVALID_ARGUMENT")]), Retries()
    with pytest.raises(PermanentApiError):
        await call_with_retries(EXACT, call, retries)
    assert (call.calls, retries.seen) == (1, [])


@pytest.mark.asyncio
async def test_ambiguous_errors_are_retried_too() -> None:
    """A lost answer is transient: tried again (the pipeline looks first where it matters)."""
    call = Flaky([AmbiguousApiError("no response"), PermanentApiError("400")])
    with pytest.raises(PermanentApiError):
        await call_with_retries(EXACT, call)
    assert call.calls == 2


@pytest.mark.promise("retry-after-capped")
@pytest.mark.asyncio
async def test_server_delay_is_used_and_capped() -> None:
    """Retry-After replaces the exponential wait, up to retry_after_cap (later attempts too)."""
    settings = RetrySettings(attempts=4, initial_delay=5, max_delay=5, retry_after_cap=0.03)
    call, retries = (
        Flaky(transient(1, retry_after=0.02) + transient(2, retry_after=1e18)),
        Retries(),
    )
    assert await call_with_retries(settings, call, retries) == "ok"
    assert [(a, d) for a, d, _ in retries.seen] == [(1, 0.02), (2, 0.03), (3, 0.03)]


@pytest.mark.asyncio
async def test_time_budget_stops_retrying() -> None:
    """total_seconds bounds the whole step: no wait that would end past it is started."""
    settings = RetrySettings(
        attempts=50, total_seconds=0.3, initial_delay=0.1, max_delay=0.1, jitter=0
    )
    call, retries = Flaky(transient(50)), Retries()
    with pytest.raises(TransientApiError):
        await call_with_retries(settings, call, retries)
    # Of 50 allowed: two waits of 0.1 s fit the 0.3 s budget (fewer on a slow machine), counted
    # from the first call, not from the first retry.
    assert 2 <= call.calls <= 3


@pytest.mark.asyncio
async def test_first_wait_respects_the_budget() -> None:
    """A first wait longer than the whole budget is not started: the error comes out at once."""
    settings = RetrySettings(attempts=5, total_seconds=0.5, initial_delay=1, max_delay=1, jitter=0)
    call, retries = Flaky(transient(1)), Retries()
    with pytest.raises(TransientApiError):
        await call_with_retries(settings, call, retries)
    assert (call.calls, retries.seen) == (1, [])


def test_backoff_delay_values() -> None:
    """The pure schedule: 2**(n-1) times the initial delay plus jitter, capped."""
    settings = RetrySettings(initial_delay=0.5, max_delay=3, jitter=0)
    assert [backoff_delay(settings, n, None) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 3, 3]
    assert backoff_delay(settings, 0, None) == 0.5  # attempt 0 counts as the first
    jittered = RetrySettings(initial_delay=0.5, max_delay=3, jitter=0.25)
    assert 0.5 <= backoff_delay(jittered, 1, None) <= 0.75
    assert backoff_delay(settings, 1, TransientApiError("x", retry_after=0)) == 0
    assert backoff_delay(settings, 2, TransientApiError("x", retry_after=-1)) == 1  # ignored


def test_describe_is_the_first_line() -> None:
    """Events carry the first line of an error, or its class name when it has no text."""
    assert describe(TransientApiError("503 UNAVAILABLE: gone\ndetails")) == "503 UNAVAILABLE: gone"
    assert describe(TransientApiError("  \n")) == "TransientApiError"
