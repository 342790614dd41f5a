"""At the service's limits: a full job window or quota defers a file (submit) instead of
failing it, leaves nothing on the server, and a later run picks it up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gembatch_async import ApiError
from gembatch_async._backends._quota import limit_of
from gembatch_async._errors import Limit
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, make_inputs, read_journal, run_cli, wait_until

WINDOW_OF_5 = pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, max_unfinished_batches=5, processing_seconds=3), id="w5")],
)


def _uploads(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [f for f in emulator.state()["files"] if f["source"] == "UPLOADED"]


@pytest.mark.promise("submit-exit-codes")
@WINDOW_OF_5
def test_submit_into_a_full_window_defers_the_rest(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """8 files, a window of 5: 5 submitted, 3 deferred (exit 3), no upload left for them;
    once the jobs end, submit again takes the 3."""
    names = [p.name for p in make_inputs(tmp_path, 8)]
    env = cli_env(emulator)
    first = run_cli(
        ["submit", "-c", "2", "--retry-max-delay", "0.05", *names], cwd=tmp_path, env=env
    )
    assert first.returncode == 3, first.stdout + first.stderr
    deferred = [line for line in first.stdout.splitlines() if "] deferred " in line]
    assert len(deferred) == 3
    # The service's refusal names no limit (langchain4j/langchain4j#3942): the tool says so.
    refused = "(the service refused new jobs (429 without a reason; 5 of the project's jobs"
    assert all(refused in line for line in deferred), deferred
    assert "deferred 3" in first.stdout.splitlines()[-1]
    assert "use run" in first.stdout.splitlines()[-1]
    assert len(emulator.state()["batches"]) == 5
    used = {b["inputFile"] for b in emulator.state()["batches"]}
    assert {f["name"] for f in _uploads(emulator)} == used, "no upload left for deferred files"
    assert len(read_journal(tmp_path / "job-info.jsonl")) == 5
    wait_until(
        lambda: all(b["state"] == "BATCH_STATE_SUCCEEDED" for b in emulator.state()["batches"]),
        timeout=30,
    )
    second = run_cli(["submit", *names], cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.splitlines()[-1].startswith("submitted 3, skipped 5, failed 0")
    assert len(emulator.state()["batches"]) == 8


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, storage_quota_bytes=1000), id="storage-1000")],
)
def test_storage_quota_refusal_defers(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The service refuses an upload past its storage quota: deferred, not failed."""
    names = [p.name for p in make_inputs(tmp_path, 6, lines=4)]  # ~330 bytes each
    result = run_cli(["submit", "-c", "1", *names], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "(the storage quota is full)" in result.stdout
    assert "error" not in result.stdout
    assert len(_uploads(emulator)) == len(emulator.state()["batches"])


def _error(message: str, details: tuple[dict[str, Any], ...] = (), code: int = 429) -> ApiError:
    return ApiError(message, code=code, status="RESOURCE_EXHAUSTED", details=details)


def _quota(metric: str) -> tuple[dict[str, Any], ...]:
    return (
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": metric, "quotaId": metric + "-per-project"}],
        },
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            _error("x", _quota("generativelanguage.googleapis.com/batch_enqueued_tokens")),
            Limit.TOKENS,
            id="quota-failure-tokens",
        ),
        pytest.param(
            _error("x", _quota("generativelanguage.googleapis.com/concurrent_batch_jobs")),
            Limit.JOBS,
            id="quota-failure-jobs",
        ),
        pytest.param(
            _error("x", _quota("generativelanguage.googleapis.com/file_storage_bytes")),
            Limit.STORAGE,
            id="quota-failure-storage",
        ),
        pytest.param(
            _error("Too many unfinished batch jobs: at most 100 at once."),
            Limit.RATE,
            id="a-message-is-not-a-name",
        ),
        pytest.param(
            _error("x", _quota("generativelanguage.googleapis.com/generate_requests_per_minute")),
            Limit.RATE,
            id="named-rate",
        ),
        pytest.param(
            _error("You exceeded your current quota, please check your plan."),
            Limit.RATE,
            id="unnamed-is-rate-off-create",
        ),
        pytest.param(_error("Service unavailable", code=503), None, id="not-a-429"),
    ],
)
def test_429s_are_classified(error: ApiError, expected: Limit | None) -> None:
    """The QuotaFailure detail's names decide (never the message): off create, an
    unnamed 429 is a rate limit, retried."""
    assert limit_of(error) is expected


_GENERIC = (
    {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [{"url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
    },
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            _error("You exceeded your current quota", _GENERIC), Limit.REFUSED, id="generic"
        ),
        pytest.param(
            ApiError("x", code=429, status="RESOURCE_EXHAUSTED", retry_after=7.0),
            Limit.RATE,
            id="with-a-retry-delay",
        ),
        pytest.param(
            _error("x", _quota("GenerateRequestsPerMinutePerProjectPerModel")),
            Limit.RATE,
            id="named-rate",
        ),
        pytest.param(
            _error("x", _quota("generativelanguage.googleapis.com/some_new_quota")),
            Limit.REFUSED,
            id="unknown-name",
        ),
        pytest.param(
            _error("x", _quota("generativelanguage.googleapis.com/batch_enqueued_tokens")),
            Limit.TOKENS,
            id="named-tokens",
        ),
    ],
)
@pytest.mark.promise("create-429-never-fails")
def test_429s_on_create_are_capacity_unless_named_rate(
    error: ApiError, expected: Limit | None
) -> None:
    """On batches.create an unnamed 429 is capacity (REFUSED): the service's own refusal
    at the job window is generic, so nothing there says "rate"."""
    assert limit_of(error, create=True) is expected
