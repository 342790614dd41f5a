"""A create sent by a process that died may land after the next run looked for it.

Neither service makes a create idempotent (PROTOCOL.md section 5: "a repeated create
makes a second job"), and a request the server accepted may finish after its client is
gone. Here the emulator holds the dead process's create (the ``slow`` fault: the job is
made even though nobody waits for the answer), so the next run's look-up misses it and
the late job lands beside the run's own: the run keeps the job its journal records and
cancels the twin, and every input still ends with one job that ran.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig

from ..helpers import creates_reached, make_inputs, read_journal, run_cli, wait_until
from ..services import Service
from ..zygote import cli_popen

#: How long the dead process's create is held before the server makes its job.
HELD_S = 1.5
RUN = ["run", "--interval", "0.2", "--retry-max-delay", "0.05"]


def _jobs_by_input(service: Service) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for job in service.jobs():
        found.setdefault(str(job["displayName"]).rsplit(" [", 1)[0], []).append(job)
    return found


@pytest.mark.parametrize(
    "emulator_config", [EmulatorConfig(port=0, processing_seconds=HELD_S + 2.5)]
)
def test_a_late_create_of_a_killed_run_is_cancelled_not_paid_twice(
    service: Service, tmp_path: Path
) -> None:
    """run SIGKILLed with its create in flight; the next run's look-up misses the job
    (it lands later); that late twin is cancelled and the recorded job is the one kept."""
    (name,) = [p.name for p in make_inputs(tmp_path, 1, lines=2)]
    env = service.env()
    service.set_faults(f"create:1:slow={HELD_S}")
    first = cli_popen(
        [*RUN, name],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(creates_reached(service.emulator, 1))
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    service.set_faults("")
    assert service.jobs() == [], "the held create has not landed yet"

    final = run_cli([*RUN, name], cwd=tmp_path, env=env, timeout=120)

    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    (jobs,) = _jobs_by_input(service).values()
    assert len(jobs) == 2, "the late create landed (the scenario happened)"
    kept = [j for j in jobs if not str(j["state"]).endswith("_CANCELLED")]
    assert len(kept) == 1, f"one job runs for the input, the twin is cancelled: {jobs}"
    (line,) = read_journal(tmp_path / "job-info.jsonl")
    assert line["batch"]["name"].rsplit("/", 1)[-1] == str(kept[0]["name"]).rsplit("/", 1)[-1]
    twin = next(j for j in jobs if j is not kept[0])
    assert str(twin["name"]).rsplit("/", 1)[-1] in final.stdout + final.stderr, (
        "the user is told which job was cancelled"
    )
    assert (tmp_path / "results" / name).exists()
