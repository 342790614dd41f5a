"""After submit: status, download, cancel and cleanup, as a user runs them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from google import genai
from google.genai import types

from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import TEST_API_KEY, cli_env, finish_jobs, make_inputs, read_journal, run_cli

FAST_JOBS = pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=1.0), id="fast")]
)


def submitted(emulator: RunningEmulator, folder: Path, count: int = 3) -> list[str]:
    names = [p.name for p in make_inputs(folder, count, lines=4)]
    result = run_cli(["submit", *names], cwd=folder, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    return names


@FAST_JOBS
def test_status_refreshes_and_records_state(emulator: RunningEmulator, tmp_path: Path) -> None:
    """status shows each job's state and writes it back to the journal."""
    names = submitted(emulator, tmp_path)
    finish_jobs(emulator, 1.0)
    result = run_cli(["status"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("SUCCEEDED") == 3
    journal = read_journal(tmp_path / "job-info.jsonl")
    assert {line["batch"]["state"] for line in journal} == {"JOB_STATE_SUCCEEDED"}
    assert all(line["batch"]["dest"]["file_name"].startswith("files/batch-") for line in journal)
    assert sorted(line["input_file"] for line in journal) == sorted(names)


@FAST_JOBS
def test_watch_until_done(emulator: RunningEmulator, tmp_path: Path) -> None:
    """status --watch prints each job's changes once, until every job has ended, then exits 0.

    Jobs take 1 s and the watch polls every 0.2 s, so a watch that reprinted
    every job on every poll would print each job five times or more.
    """
    names = submitted(emulator, tmp_path, 2)
    result = run_cli(
        ["status", "--watch", "--interval", "0.2", "--json"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    by_job = {name: [p["state"] for p in printed if p["path"] == name] for name in names}
    for name, states in by_job.items():
        assert states[-1] == "JOB_STATE_SUCCEEDED", (name, states)
        assert len(states) == len(set(states)), f"{name}: a state printed twice: {states}"
        assert set(states) <= {"JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"}
    assert [p["state"] for p in printed][-2:] == ["JOB_STATE_SUCCEEDED"] * 2


@pytest.mark.promise("download-exit-codes")
@FAST_JOBS
def test_download_writes_results_beside_each_input(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """download writes results/NAME beside each input, one line per request in input
    order, and skips them the next time."""
    names = submitted(emulator, tmp_path)
    finish_jobs(emulator, 1.0)
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("downloaded in-") == 3
    assert result.stdout.splitlines()[-1] == "downloaded 3, skipped 0, errors 0"
    for name in names:
        rows = [json.loads(line) for line in (tmp_path / "results" / name).read_text().splitlines()]
        assert [row["key"] for row in rows] == [f"k{i}" for i in range(4)]
        assert all("response" in row for row in rows)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(names)
    again = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert again.returncode == 0
    assert again.stdout.count("skipped in-") == 3


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=120), id="slow")]
)
def test_cancel_ends_unfinished_jobs(emulator: RunningEmulator, tmp_path: Path) -> None:
    """cancel cancels the recorded jobs still pending, and records it."""
    emulator.reset()
    names = submitted(emulator, tmp_path, 2)
    result = run_cli(["cancel", names[0]], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    assert "CANCELLED" in result.stdout
    states = {b["displayName"].split(" [")[0]: b["state"] for b in emulator.state()["batches"]}
    assert states[names[0]] == "BATCH_STATE_CANCELLED"
    assert states[names[1]] in {"BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"}
    recorded = {
        line["input_file"]: line["batch"] for line in read_journal(tmp_path / "job-info.jsonl")
    }
    assert recorded[names[0]]["state"] == "JOB_STATE_CANCELLED"
    assert recorded[names[0]]["name"] == next(
        b["name"] for b in emulator.state()["batches"] if b["state"] == "BATCH_STATE_CANCELLED"
    )
    assert recorded[names[1]]["state"] == "JOB_STATE_PENDING"  # as submit recorded it


@pytest.mark.promise("cleanup-only-recorded")
@FAST_JOBS
def test_cleanup_touches_only_our_ended_jobs(emulator: RunningEmulator, tmp_path: Path) -> None:
    """cleanup deletes uploads (and outputs) of ended recorded jobs, nothing else."""
    submitted(emulator, tmp_path, 2)
    client = genai.Client(
        api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url)
    )
    foreign = client.files.upload(file=io.BytesIO(b"{}\n"), config={"mime_type": "text/plain"})
    finish_jobs(emulator, 1.0)
    dry = run_cli(["cleanup", "--dry-run"], cwd=tmp_path, env=cli_env(emulator))
    assert dry.stdout.count("would delete") == 2
    assert len(emulator.state()["files"]) == 5
    result = run_cli(["cleanup", "--outputs"], cwd=tmp_path, env=cli_env(emulator))
    # The service refuses to delete output files (python-genai#1759): each is reported
    # once as kept by the service, which is no failure, and the uploads still go.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("deleted files/") == 2
    outputs = sorted(f["name"] for f in emulator.state()["files"] if f["source"] == "GENERATED")
    assert len(outputs) == 2
    for name in outputs:
        assert result.stdout.count(name) == 1
        (line,) = [x for x in result.stdout.splitlines() if name in x]
        assert line.startswith(f"kept by the service: {name} (")
        assert line.endswith("(the Gemini API does not let output files be deleted)")
    assert "error" not in result.stdout + result.stderr
    assert sorted(f["name"] for f in emulator.state()["files"]) == sorted([foreign.name, *outputs])


def test_job_commands_need_a_journal(emulator: RunningEmulator, tmp_path: Path) -> None:
    """status with nothing submitted here: a clear message and exit 2."""
    result = run_cli(["status"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 2
    assert "nothing has been submitted from here" in result.stderr
