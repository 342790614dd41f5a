"""Jobs that ended without results are said, never passed over (issue 19, item 3):
``download`` gives each such input a line (and the library a ResultFile with ``ended``),
and ``submit`` names the state of a skipped file's ended batch and ``--retry-failed``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, make_inputs, read_journal, run_cli

SLOW = pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=120), id="slow")]
)


def _ended_three(emulator: RunningEmulator, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Four files submitted: the first cancelled (the CLI), the next FAILED and EXPIRED
    (the emulator ends them), the last still pending."""
    names = [p.name for p in make_inputs(tmp_path, 4, lines=2)]
    env = cli_env(emulator)
    submitted = run_cli(["submit", *names], cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    batches = {
        line["input_file"]: line["batch"]["name"]
        for line in read_journal(tmp_path / "job-info.jsonl")
    }
    cancelled = run_cli(["cancel", names[0]], cwd=tmp_path, env=env)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    emulator.end_batch(batches[names[1]], "BATCH_STATE_FAILED")
    emulator.end_batch(batches[names[2]], "BATCH_STATE_EXPIRED")
    return names, batches


@SLOW
def test_download_says_each_input_whose_job_ended_without_results(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    names, batches = _ended_three(emulator, tmp_path)
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name, state in zip(names, ("CANCELLED", "FAILED", "EXPIRED"), strict=False):
        assert (
            f"skipped {name}: its job {batches[name]} ended {state}; nothing to download "
            "(submit --retry-failed to run it again)"
        ) in lines
    assert not any(names[3] in line for line in lines), "a pending job is not ended"
    assert lines[-1] == "downloaded 0, skipped 0, errors 0, jobs ended without results 3"
    as_json = run_cli(["download", "--json"], cwd=tmp_path, env=cli_env(emulator))
    ended = {e["path"]: e["ended"] for e in map(json.loads, as_json.stdout.splitlines())}
    assert ended == {
        names[0]: "JOB_STATE_CANCELLED",
        names[1]: "JOB_STATE_FAILED",
        names[2]: "JOB_STATE_EXPIRED",
    }


@SLOW
def test_submit_names_the_state_of_a_skipped_files_ended_batch(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    names, batches = _ended_three(emulator, tmp_path)
    env = cli_env(emulator)
    seen = run_cli(["status"], cwd=tmp_path, env=env)  # records the states in the journal
    assert seen.returncode == 0, seen.stdout + seen.stderr
    again = run_cli(["submit", *names], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    for name, state in zip(names, ("CANCELLED", "FAILED", "EXPIRED"), strict=False):
        assert (
            f"skipped {name} (its batch {batches[name]} ended {state}: no results will come; "
            "--retry-failed submits it again)"
        ) in again.stdout
    assert f"skipped {names[3]} (already submitted as {batches[names[3]]})" in again.stdout
    as_json = run_cli(["submit", "--json", *names], cwd=tmp_path, env=env)
    states = {
        e["path"]: e["state"]
        for e in map(json.loads, as_json.stdout.splitlines())
        if e["event"] == "skipped"
    }
    assert states[names[1]] == "JOB_STATE_FAILED"
