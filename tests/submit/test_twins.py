"""submit: a create of a killed process that lands while ours is under way is cancelled.

Neither service makes a create idempotent (PROTOCOL.md section 5); see ``_submit/_twins``.
The emulator's ``slow`` fault holds a create and then makes its job although nobody
waits for the answer: the order of events is forced, not left to luck.
"""

from __future__ import annotations

import signal
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from google.genai import types

from gembatch_async._backends import Job
from gembatch_async._backends._genai import job_of
from gembatch_async._submit._twins import keeper, twins_to_cancel
from gembatch_async.emulator import EmulatorConfig

from ..helpers import creates_reached, make_inputs, read_journal, run_cli, wait_until
from ..services import Service
from ..zygote import cli_popen


def _job_id(name: object) -> str:
    return str(name).rsplit("/", 1)[-1]


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, processing_seconds=30)])
def test_submit_cancels_a_twin_that_landed_while_its_own_create_ran(
    service: Service, tmp_path: Path
) -> None:
    """The killed process's create lands after the look-up found nothing but before our
    own create answers: submit sees both, keeps (and records) its own, cancels the twin."""
    (name,) = [p.name for p in make_inputs(tmp_path, 1, lines=2)]
    env = service.env()
    service.set_faults("create:1:slow=2.0")
    first = cli_popen(
        ["submit", name],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(creates_reached(service.emulator, 1))
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    service.set_faults("create:1:slow=3.5")  # ours answers after the late one landed
    assert service.jobs() == [], "the held create has not landed yet"

    result = run_cli(["submit", "--retry-max-delay", "0.05", name], cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = service.jobs()
    assert len(jobs) == 2, "the late create landed (the scenario happened)"
    live = [j for j in jobs if not str(j["state"]).endswith(("_CANCELLED", "_CANCELLING"))]
    assert len(live) == 1, f"one job runs for the input, its twin is cancelled: {jobs}"
    (line,) = read_journal(tmp_path / "job-info.jsonl")
    assert _job_id(line["batch"]["name"]) == _job_id(live[0]["name"]), "the kept job is recorded"
    assert line["look_for_twins"] is True, "run keeps looking while it watches"
    (twin,) = [j for j in jobs if j is not live[0]]
    assert _job_id(twin["name"]) in result.stdout + result.stderr, "the user is told"


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, processing_seconds=30)])
def test_a_plain_submit_is_not_marked_for_twins(service: Service, tmp_path: Path) -> None:
    """No earlier attempt, no look-up: no twin can exist, so run never lists for one."""
    names = [p.name for p in make_inputs(tmp_path, 2, lines=1)]
    result = run_cli(["submit", *names], cwd=tmp_path, env=service.env())
    assert result.returncode == 0, result.stderr
    assert all("look_for_twins" not in line for line in read_journal(tmp_path / "job-info.jsonl"))


def _job(name: str, state: str, second: int) -> Job:
    return job_of(
        types.BatchJob(
            name=name,
            display_name="a.jsonl [gba-0123456789abcdef]",
            state=types.JobState(state),
            create_time=datetime(2026, 12, 3, 12, 0, second, tzinfo=timezone.utc),
        )
    )


def test_the_kept_job_is_the_recorded_one_else_the_oldest_live() -> None:
    """Which twin stays: the journal's job when it is among them (even if newer), else the
    oldest that has not ended; ended twins cost nothing more and are left alone."""
    old_ended = _job("batches/a", "JOB_STATE_CANCELLED", 1)
    older = _job("batches/b", "JOB_STATE_PENDING", 2)
    newer = _job("projects/7/locations/l/batchPredictionJobs/c", "JOB_STATE_RUNNING", 3)
    jobs = [newer, old_ended, older]
    assert keeper(jobs) is older
    assert keeper(jobs, recorded="projects/my-project/locations/l/batchPredictionJobs/c") is newer
    assert twins_to_cancel(jobs, older) == [newer]
    assert twins_to_cancel(jobs, newer) == [older]
    assert keeper([old_ended]) is old_ended
