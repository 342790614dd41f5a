"""status: request counts the SDK drops, read through the one seam, and age warnings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from google import genai
from google.genai import types

from gembatch_async import BatchStats, JobStatus
from gembatch_async._backends._genai import NO_SDK_RETRIES, GeminiApi, job_of
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import TEST_API_KEY, cli_env, make_inputs, read_journal, run_cli

FAST_JOBS = pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=1.0), id="fast")]
)


@pytest.mark.asyncio
async def test_the_seam_reads_what_the_sdk_drops(emulator: RunningEmulator) -> None:
    """get_batch_detail parses the job exactly as batches.get does and keeps batchStats.

    This is the one place we reach past the SDK's public API (a raw GET and the SDK's
    own converter): if an upgrade moves either, this test fails.
    """
    options = types.HttpOptions(base_url=emulator.base_url, retry_options=NO_SDK_RETRIES)
    client = genai.Client(api_key=TEST_API_KEY, http_options=options)
    api = GeminiApi(client)
    data = b'{"key": "a", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n' * 3
    uploaded = await client.aio.files.upload(
        file=io.BytesIO(data), config={"mime_type": "application/jsonl"}
    )
    created = await client.aio.batches.create(
        model="gemini-3.1-flash-lite", src=uploaded.name or ""
    )
    detail = await api.get_batch_detail(created.name or "")
    public = await client.aio.batches.get(name=created.name or "")
    assert detail.job == job_of(public)
    assert public.model_dump().get("batch_stats") is None, "the SDK still drops batchStats"
    assert detail.stats == BatchStats(requests=3, succeeded=0, failed=0, pending=3)
    assert detail.error is None
    await client.aio.aclose()


@FAST_JOBS
def test_status_shows_request_counts(emulator: RunningEmulator, tmp_path: Path) -> None:
    """status prints done/total per job, --json carries the counts, the journal keeps them."""
    names = [p.name for p in make_inputs(tmp_path, 2, lines=4)]
    env = cli_env(emulator)
    assert run_cli(["submit", *names], cwd=tmp_path, env=env).returncode == 0
    pending = run_cli(["status", "--json"], cwd=tmp_path, env=env)
    rows = [json.loads(line) for line in pending.stdout.splitlines()]
    assert [row["stats"]["requests"] for row in rows] == [4, 4]
    assert all(row["stats"]["pending"] + row["stats"]["succeeded"] == 4 for row in rows)
    emulator.advance_clock(1.0)  # the jobs' processing time, without waiting for it
    assert all(b["state"] == "BATCH_STATE_SUCCEEDED" for b in emulator.state()["batches"])
    done = run_cli(["status"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("4/4 done") == 2
    assert all(
        line["batch_stats"]["succeeded"] == 4 for line in read_journal(tmp_path / "job-info.jsonl")
    )
    # Ended jobs are not asked again: the counts come from the journal, with no server.
    nowhere = {**env, "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9"}
    offline = run_cli(["status"], cwd=tmp_path, env=nowhere)
    assert offline.stdout.count("4/4 done") == 2


@pytest.mark.parametrize(
    ("hours", "state", "expected"),
    [
        pytest.param(2, "JOB_STATE_RUNNING", None, id="young"),
        pytest.param(30, "JOB_STATE_PENDING", "stuck?", id="past-target"),
        pytest.param(45, "JOB_STATE_RUNNING", "expires in 3h", id="near-expiry"),
        pytest.param(47, "JOB_STATE_SUCCEEDED", None, id="ended"),
    ],
)
def test_age_notices(hours: float, state: str, expected: str | None) -> None:
    """Past the 24 h target a job is flagged stuck; near 48 h, its expiry is announced."""
    status = JobStatus("a.jsonl", "batches/x", state, hours * 3600, None)
    if expected is None:
        assert status.notice is None
    else:
        assert status.notice is not None
        assert expected in status.notice
