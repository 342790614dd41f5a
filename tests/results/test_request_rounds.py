"""Request-level exactly-once (issue 20): --retry-failed sends only the requests without
an answer, as a new job for the same input, and merges the answers into one results file.

Real CLI subprocesses against the emulator over HTTP; what each job was sent is read
from the emulator's stored copy of its input file (``state_dir/blobs/<file id>``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import pytest
from google import genai
from google.genai import types

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator
from gembatch_async.emulator._request_errors import RequestErrors

from ..helpers import cli_env, finish_jobs, read_journal, run_cli, wait_until
from ..services import LOCATION, PROJECT, Service, _gcs
from ..zygote import cli_popen

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


def errors_draw(batch: dict[str, Any]) -> str:
    """What picks the batch's failing requests (its input's bytes and earlier jobs of them)."""
    return str(batch["requestErrorsDraw"])


def sent_to(state_dir: Path, batch: dict[str, Any]) -> bytes:
    """What the emulator holds as this batch's input file (its upload's stored bytes)."""
    return (state_dir / "blobs" / str(batch["inputFile"]).removeprefix("files/")).read_bytes()


def failing(keys: list[str], job: str) -> list[int]:
    return [i for i, key in enumerate(keys) if ERRORS.error_for(key, i, job) is not None]


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.promise("retry-failed-only-unanswered")
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
        finish_jobs(emulator, 0.6)
        (job1,) = batches(emulator)
        failed1 = failing(keys, errors_draw(job1))
        assert 3 < len(failed1) < 30

        again = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=work, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(batches(emulator)) == 2, again.stdout
        job2 = next(b for b in batches(emulator) if b["name"] != job1["name"])
        assert sent_to(state_dir, job2) == b"".join(lines[i] for i in failed1)
        (round_line,) = [
            line for line in read_journal(work / "job-info.jsonl") if "carries" in line
        ]
        assert round_line["round"] == 1
        assert round_line["carries"][0]["requests"] == len(failed1)
        assert round_line["completes"][0]["batch"] == job1["name"]
        finish_jobs(emulator, 0.6)

        # The rounds are used up: nothing is sent again, however often it is asked.
        third = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=work, env=env)
        assert third.returncode == 0, third.stdout + third.stderr
        assert len(batches(emulator)) == 2
        # A plain submit skips the input as recorded (its round's line is the newest),
        # without calling it changed.
        plain = run_cli(["submit", "q.jsonl"], cwd=work, env=env)
        assert f"skipped q.jsonl (already submitted as {job2['name']})" in plain.stdout
        assert "changed" not in plain.stdout

        download = run_cli(["download"], cwd=work, env=env)
        assert download.returncode == 0, download.stdout + download.stderr
        status = run_cli(["status", "q.jsonl"], cwd=work, env=env)
        assert status.returncode == 0, status.stdout + status.stderr

    still = [i for i in failed1 if ERRORS.error_for(keys[i], i, errors_draw(job2)) is not None]
    assert len(still) < len(failed1), "some requests that failed once were answered"
    got = rows(work / "results" / "q.jsonl")
    assert [row["key"] for row in got] == keys, "one answer per request, in input order"
    assert [i for i, row in enumerate(got) if "error" in row] == still
    for i in still:  # the newest error is kept
        newest = ERRORS.error_for(keys[i], i, errors_draw(job2))
        assert newest is not None
        assert got[i]["error"]["code"] == newest["code"]
    failed_file = work / "results" / "q.failed.jsonl"
    if still:
        assert failed_file.read_bytes() == b"".join(lines[i] for i in still)
    else:
        assert not failed_file.exists()
    assert f"{len(still)} failed" in download.stdout or not still
    answered = len(keys) - len(still)
    shown = f"[input: {answered} answered, {len(still)} failed, 0 pending; 2 jobs]"
    assert shown in status.stdout, status.stdout


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=0.6), id="fast")],
)
@pytest.mark.promise("retry-failed-only-unanswered")
def test_an_input_with_every_answer_is_not_sent_again(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """--retry-failed on an input whose job answered every request sends nothing."""
    write_requests(tmp_path / "q.jsonl", [f"k{i}" for i in range(5)])
    env = cli_env(emulator)
    assert run_cli(["submit", "q.jsonl"], cwd=tmp_path, env=env).returncode == 0
    finish_jobs(emulator, 0.6)
    again = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(batches(emulator)) == 1
    assert "skipped q.jsonl" in again.stdout


def _object_bytes(service: Service, uri: str) -> bytes:
    assert service.storage is not None
    bucket, name = uri.removeprefix("gs://").split("/", 1)
    return bytes(_gcs(service.storage).bucket(bucket).blob(name).download_as_bytes())


def _answered_keys(service: Service, folder: str) -> set[str]:
    """Keys the rows in a Vertex job's output folder answered (status "")."""
    assert service.storage is not None
    bucket, prefix = folder.removeprefix("gs://").split("/", 1)
    keys: set[str] = set()
    for blob in _gcs(service.storage).list_blobs(bucket, prefix=prefix.rstrip("/") + "/"):
        for raw in blob.download_as_bytes().splitlines():
            row = json.loads(raw)
            if not row.get("status") and "response" in row:
                keys.add(row["key"])
    return keys


def _vertex_client(service: Service) -> genai.Client:
    """The SDK on Vertex, pointed at the emulator (as the README shows)."""
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=google.oauth2.credentials.Credentials(token="emulator"),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=service.emulator.base_url),
    )


def _vertex_state(service: Service, name: str) -> str:
    return next(str(j["state"]) for j in service.jobs() if j["name"] == name)


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=12), id="slow")]
)
@pytest.mark.promise("retry-failed-only-unanswered")
@pytest.mark.parametrize("service", ["vertex"], indirect=True)
def test_a_vertex_job_cancelled_half_way_is_resumed_without_its_completed_rows(
    service: Service, tmp_path: Path
) -> None:
    """Vertex leaves the rows a cancelled job completed in its output folder:
    --retry-failed sends only the other requests, and run then writes results with every
    request's answer, in input order."""
    keys = [f"v{i:02d}" for i in range(40)]
    lines = write_requests(tmp_path / "q.jsonl", keys)
    env = service.env()
    assert run_cli(["submit", "q.jsonl"], cwd=tmp_path, env=env).returncode == 0
    (job,) = service.jobs()
    # RUNNING from 4 s to 12 s after it starts: the emulator's clock moves a quarter of
    # the way into it (no waiting, and no race with a loaded machine), then it is cancelled.
    client = _vertex_client(service)
    service.emulator.advance_clock(6)
    assert _vertex_state(service, job["name"]) == "JOB_STATE_RUNNING"
    client.batches.cancel(name=job["name"])
    service.emulator.advance_clock(4)  # CANCELLING lasts the job's PENDING time, 4 s
    # A cancelled Vertex job writes its completed rows when it is next asked about.
    wait_until(
        lambda: client.batches.get(name=job["name"]).state == "JOB_STATE_CANCELLED", poll=0.2
    )
    ended = next(j for j in service.jobs() if j["name"] == job["name"])
    completed = _answered_keys(service, str(ended["outputDirectory"]))
    assert 0 < len(completed) < len(keys), "cancelled half-way, with some rows completed"

    again = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    jobs = service.jobs()
    assert len(jobs) == 2, "one job for the requests the cancelled one did not complete"
    (resumed,) = [j for j in jobs if j["name"] != job["name"]]
    expected = b"".join(line for key, line in zip(keys, lines, strict=True) if key not in completed)
    assert _object_bytes(service, resumed["input"]) == expected
    service.emulator.advance_clock(12)  # the resumed job's whole processing time
    result = run_cli(["run", "--interval", "0.3", "q.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(service.jobs()) == 2
    got = rows(tmp_path / "results" / "q.jsonl")
    assert [row["key"] for row in got] == keys
    assert all("response" in row for row in got)
    assert "40 requests: 40 answered, 0 failed" in result.stdout.splitlines()[-1]


def test_sigkill_between_a_rounds_create_and_its_journal_line_converges(tmp_path: Path) -> None:
    """The round's batch is created, its answer lost and the look-up held up; SIGKILL
    then (the batch exists, the journal does not say so). The rerun makes the same
    round file, finds that batch and records it: no second job, no stray upload."""
    config = EmulatorConfig(port=0, processing_seconds=0.6, request_errors=SHARE, fault_seed=SEED)
    keys = [f"s{i:02d}" for i in range(30)]
    write_requests(tmp_path / "q.jsonl", keys)
    journal = tmp_path / "job-info.jsonl"
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        assert run_cli(["submit", "q.jsonl"], cwd=tmp_path, env=env).returncode == 0
        finish_jobs(emulator, 0.6)
        # Every listing takes 6 s: the one that counts the job window first, then the
        # look-up after the lost create, in which window the kill lands.
        emulator.set_faults("create:1:lost,list:1:slow=6")
        process = cli_popen(
            ["submit", "--retry-failed", "q.jsonl"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: len(batches(emulator)) == 2, timeout=40)
            time.sleep(0.5)
            assert process.poll() is None, "still waiting for the look-up"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert not [line for line in read_journal(journal) if "carries" in line]
        emulator.set_faults("")
        rerun = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=tmp_path, env=env)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        state = emulator.state()
    assert len(state["batches"]) == 2, "the killed run's batch was found, not made again"
    (round_line,) = [line for line in read_journal(journal) if "carries" in line]
    created = next(b for b in state["batches"] if b["name"] == round_line["batch"]["name"])
    assert round_line["adopted"] is True
    used = {b["inputFile"] for b in state["batches"]}
    uploads = [f["name"] for f in state["files"] if f["source"] == "UPLOADED"]
    assert sorted(uploads) == sorted(used), "no upload without its batch"
    assert created["inputFile"] == round_line["uploaded_file_name"]


@pytest.mark.promise("several-processes")
def test_two_processes_make_one_round(tmp_path: Path) -> None:
    """Two submit --retry-failed at once on one input: one round job between them (the
    input's claim, then the journal re-read), one line for it."""
    config = EmulatorConfig(
        port=0, processing_seconds=0.6, request_errors=SHARE, fault_seed=SEED, latency_ms=30
    )
    write_requests(tmp_path / "q.jsonl", [f"t{i:02d}" for i in range(30)])
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        assert run_cli(["submit", "q.jsonl"], cwd=tmp_path, env=env).returncode == 0
        finish_jobs(emulator, 0.6)
        command = ["submit", "--retry-failed", "q.jsonl"]
        both = [
            cli_popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        for process in both:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
        assert len(batches(emulator)) == 2
    rounds = [line for line in read_journal(tmp_path / "job-info.jsonl") if "carries" in line]
    assert len(rounds) == 1
