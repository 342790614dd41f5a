"""Request-level exactly-once (issue 20): --retry-failed sends only the requests without
an answer, as a new job for the same input, and merges the answers into one results file.

Real CLI subprocesses against the emulator over HTTP; what each job was sent is read
from the emulator's stored copy of its input file (``state_dir/blobs/<file id>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator
from gembatch_async.emulator._request_errors import RequestErrors

from ..helpers import cli_env, read_journal, run_cli, wait_until

SEED = 11
SHARE = 0.3
ERRORS = RequestErrors(SHARE, SEED)


def write_requests(path: Path, keys: list[str]) -> list[bytes]:
    lines = [
        json.dumps({"key": key, "request": {"contents": [{"parts": [{"text": key}]}]}}).encode()
        + b"\n"
        for key in keys
    ]
    path.write_bytes(b"".join(lines))
    return lines


def batches(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return list(emulator.state()["batches"])


def all_ended(emulator: RunningEmulator) -> bool:
    return all(b["state"] == "BATCH_STATE_SUCCEEDED" for b in batches(emulator))


def batch_id(batch: dict[str, Any]) -> str:
    return str(batch["name"]).removeprefix("batches/")


def sent_to(state_dir: Path, batch: dict[str, Any]) -> bytes:
    """What the emulator holds as this batch's input file (its upload's stored bytes)."""
    return (state_dir / "blobs" / str(batch["inputFile"]).removeprefix("files/")).read_bytes()


def failing(keys: list[str], job: str) -> list[int]:
    return [i for i, key in enumerate(keys) if ERRORS.error_for(key, i, job) is not None]


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_retry_failed_sends_exactly_the_failed_requests_and_merges_their_answers(
    tmp_path: Path,
) -> None:
    """A job answers some requests with errors; submit --retry-failed sends exactly those
    (the emulator's copy of the new job's input is their lines, in input order), the
    results file has one answer per request in input order, and once the rounds are used
    up (--resubmits, default 1) nothing more is sent."""
    state_dir = tmp_path / "emulator"
    config = EmulatorConfig(
        port=0,
        processing_seconds=0.6,
        request_errors=SHARE,
        fault_seed=SEED,
        state_dir=state_dir,
    )
    work = tmp_path / "work"
    work.mkdir()
    keys = [f"r{i:02d}" for i in range(40)]
    lines = write_requests(work / "q.jsonl", keys)
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        first = run_cli(["submit", "q.jsonl"], cwd=work, env=env)
        assert first.returncode == 0, first.stderr
        wait_until(lambda: all_ended(emulator))
        (job1,) = batches(emulator)
        failed1 = failing(keys, batch_id(job1))
        assert 3 < len(failed1) < 30

        again = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=work, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(batches(emulator)) == 2, again.stdout
        job2 = next(b for b in batches(emulator) if b["name"] != job1["name"])
        assert sent_to(state_dir, job2) == b"".join(lines[i] for i in failed1)
        (round_line,) = [line for line in read_journal(work / "job-info.jsonl") if "carries" in line]
        assert round_line["round"] == 1
        assert round_line["carries"][0]["requests"] == len(failed1)
        assert round_line["completes"][0]["batch"] == job1["name"]
        wait_until(lambda: all_ended(emulator))

        # The rounds are used up: nothing is sent again, however often it is asked.
        third = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=work, env=env)
        assert third.returncode == 0, third.stdout + third.stderr
        assert len(batches(emulator)) == 2

        download = run_cli(["download"], cwd=work, env=env)
        assert download.returncode == 0, download.stdout + download.stderr

    still = [i for i in failed1 if ERRORS.error_for(keys[i], i, batch_id(job2)) is not None]
    assert len(still) < len(failed1), "some requests that failed once were answered"
    got = rows(work / "results" / "q.jsonl")
    assert [row["key"] for row in got] == keys, "one answer per request, in input order"
    assert [i for i, row in enumerate(got) if "error" in row] == still
    failed_file = work / "results" / "q.failed.jsonl"
    if still:
        assert failed_file.read_bytes() == b"".join(lines[i] for i in still)
    else:
        assert not failed_file.exists()
    assert f"{len(still)} failed" in download.stdout or not still


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=0.6), id="fast")],
)
def test_an_input_with_every_answer_is_not_sent_again(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """--retry-failed on an input whose job answered every request sends nothing."""
    write_requests(tmp_path / "q.jsonl", [f"k{i}" for i in range(5)])
    env = cli_env(emulator)
    assert run_cli(["submit", "q.jsonl"], cwd=tmp_path, env=env).returncode == 0
    wait_until(lambda: all_ended(emulator))
    again = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(batches(emulator)) == 1
    assert "skipped q.jsonl" in again.stdout
