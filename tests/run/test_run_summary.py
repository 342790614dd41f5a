"""What run's summary says when requests failed (issue 19, item 1): how many requests
were answered and failed, where the failed ones are, how to send them again; the JSON
summary tells a script whether every request has a response."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, make_inputs, run_cli

RUN = ["run", "--interval", "0.2", "--retry-max-delay", "0.05"]
ERRORS = pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=0.4, request_errors=0.2, fault_seed=7),
            id="errors",
        )
    ],
)


def _failed_in(results: Path) -> dict[str, int]:
    """The failed-requests files run wrote, and how many lines each holds."""
    return {
        f"results/{p.name}": len(p.read_bytes().splitlines())
        for p in sorted(results.glob("*.failed.jsonl"))
    }


@pytest.mark.promise("run-exit-codes")
@ERRORS
def test_run_names_the_failed_requests_and_how_to_send_them_again(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    names = [p.name for p in make_inputs(tmp_path, 5, lines=30)]
    result = run_cli(RUN + names, cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stdout + result.stderr  # every input has results
    failed = _failed_in(tmp_path / "results")
    total = sum(failed.values())
    assert 0 < total < 150, "the emulator failed a share of the requests"
    lines = result.stdout.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("results for ")), -1)
    assert at == len(lines) - 2, result.stdout + result.stderr
    summary, note = lines[at:]
    assert summary.startswith("results for 5, failed 0 "), result.stdout + result.stderr
    assert f"; 150 requests: {150 - total} answered, {total} failed" in summary
    assert note.startswith(f"{total} failed requests have no response; ")
    for path in failed:
        assert path in note
    assert note.endswith(
        "to send only them again: the same command with --retry-failed "
        "(each input gets --resubmits rounds, default 1)"
    )


@pytest.mark.promise("run-complete-flag")
@ERRORS
def test_run_json_summary_says_whether_every_request_has_a_response(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    names = [p.name for p in make_inputs(tmp_path, 2, lines=30)]
    result = run_cli([*RUN, "--json", *names], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    summary = events[-1]
    failed = _failed_in(tmp_path / "results")
    total = sum(failed.values())
    assert summary["event"] == "summary"
    assert (summary["requests"], summary["answered"], summary["failed_requests"]) == (
        60,
        60 - total,
        total,
    )
    assert summary["complete"] is False
    assert sorted(summary["failed_paths"]) == sorted(failed)
    saved = [e for e in events if e["event"] == "results"]
    assert sum(e["failed"] for e in saved) == total
    assert {e["failed_path"] for e in saved} == set(failed)


@pytest.mark.promise("run-complete-flag")
def test_run_json_summary_is_complete_when_every_request_has_a_response(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    names = [p.name for p in make_inputs(tmp_path, 2, lines=3)]
    result = run_cli([*RUN, "--json", *names], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["requests"], summary["answered"], summary["failed_requests"]) == (6, 6, 0)
    assert summary["complete"] is True
    assert summary["failed_paths"] == []
