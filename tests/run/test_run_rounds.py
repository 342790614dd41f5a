"""run --retry-failed, request by request (issue 20): a job that answered some requests
with errors is followed by one job for just those, and the results file merges both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig, RunningEmulator
from gembatch_async.emulator._request_errors import RequestErrors

from ..helpers import cli_env, read_journal, run_cli

RUN = ["run", "--interval", "0.2", "--retry-max-delay", "0.05"]
SHARE, SEED = 0.3, 5


@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=0.5, request_errors=SHARE, fault_seed=SEED),
            id="errors",
        )
    ],
)
@pytest.mark.promise("retry-failed-only-unanswered")
def test_run_retry_failed_sends_the_failed_requests_once_more_and_merges_them(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """One run: the first job's failed requests go again as a job of their own; the
    results hold one answer per request in input order; uploads are all deleted; a
    second run sends nothing."""
    keys = [f"k{i:02d}" for i in range(30)]
    lines = [
        json.dumps({"key": key, "request": {"contents": [{"parts": [{"text": key}]}]}}).encode()
        + b"\n"
        for key in keys
    ]
    (tmp_path / "q.jsonl").write_bytes(b"".join(lines))
    env = cli_env(emulator)
    result = run_cli([*RUN, "--retry-failed", "q.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    state = emulator.state()
    first, second = sorted(state["batches"], key=lambda b: str(b["createTime"]))
    errors = RequestErrors(SHARE, SEED)
    job = {b["name"]: str(b["requestErrorsDraw"]) for b in (first, second)}
    failed_first = [i for i, k in enumerate(keys) if errors.error_for(k, i, job[first["name"]])]
    assert second["requestCount"] == len(failed_first) > 0
    still = [i for i in failed_first if errors.error_for(keys[i], i, job[second["name"]])]
    got = [json.loads(x) for x in (tmp_path / "results" / "q.jsonl").read_bytes().splitlines()]
    assert [row["key"] for row in got] == keys
    assert [i for i, row in enumerate(got) if "error" in row] == still
    summary = result.stdout.splitlines()
    assert any(
        f"30 requests: {30 - len(still)} answered, {len(still)} failed" in line for line in summary
    ), result.stdout
    uploads = [f["name"] for f in state["files"] if f["source"] == "UPLOADED"]
    assert uploads == [], "both jobs' uploads are deleted once the results are in"
    rounds = [line for line in read_journal(tmp_path / "job-info.jsonl") if "carries" in line]
    assert len(rounds) == 1
    again = run_cli([*RUN, "--retry-failed", "q.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(emulator.state()["batches"]) == 2, "the rounds are used up (--resubmits 1)"
