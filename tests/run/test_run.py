"""run: from input files to results, unattended, through the service's job window."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from google import genai
from google.genai import types

from gembatch_async import Event, SubmitSettings, WaitingForCapacity, run, submit
from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator

from ..helpers import (
    FAST_RETRY,
    TEST_API_KEY,
    cli_env,
    creates_reached,
    make_inputs,
    quiet,
    read_journal,
    run_cli,
    wait_until,
)
from ..services import Service
from ..zygote import cli_popen

WINDOW_OF_8 = pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, max_unfinished_batches=8, processing_seconds=0.6), id="w8"
        )
    ],
)
RUN = ["run", "--interval", "0.2", "--retry-max-delay", "0.05", "-c", "6"]


def _uploads(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [f for f in emulator.state()["files"] if f["source"] == "UPLOADED"]


def _result_files(folder: Path) -> list[Path]:
    """Results files in the layout download and run share: <input dir>/results/<name>."""
    found = (folder / "results").glob("*.jsonl")
    return sorted(p for p in found if not p.name.endswith((".failed.jsonl", ".raw.jsonl")))


@pytest.mark.promise("run-deletes-upload")
@pytest.mark.promise("window-waits")
@WINDOW_OF_8
def test_run_takes_35_files_through_a_window_of_8(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Files wait for the window instead of failing; every result arrives; no upload stays."""
    names = [p.name for p in make_inputs(tmp_path, 35, lines=2)]
    # A real process: the window fills only if 8 creates land within one 0.6 s job, and
    # in this process the CLI would share one GIL with the emulator's thread.
    env = cli_env(emulator)
    result = run_cli([*RUN, *names], cwd=tmp_path, env=env, timeout=180, process=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "results for 35, failed 0" in result.stdout.splitlines()[-1]
    assert len(_result_files(tmp_path)) == 35
    assert all(len(p.read_text().splitlines()) == 2 for p in _result_files(tmp_path))
    assert len(emulator.state()["batches"]) == 35, "one batch per file, none doubled"
    assert _uploads(emulator) == [], "every upload deleted once its results were in"
    assert all(line.get("upload_deleted_at") for line in read_journal(tmp_path / "job-info.jsonl"))
    assert "] error " not in result.stdout
    # The service's refusal names no limit (langchain4j/langchain4j#3942): the tool says so.
    assert "(the service refused new jobs (429 without a reason" in result.stderr, (
        "the window was met, and waited for"
    )


@pytest.mark.promise("run-kill-converges")
@WINDOW_OF_8
def test_sigkilled_run_rerun_converges(service: Service, tmp_path: Path) -> None:
    """run is SIGKILLed mid-way (twice); the same command again finishes the job exactly once."""
    emulator = service.emulator
    names = [p.name for p in make_inputs(tmp_path, 20, lines=2)]
    env = service.env()
    for creates in (3, 10):
        process = cli_popen(
            [*RUN, *names],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(creates_reached(emulator, creates))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        # The create a kill cut off lands (or fails) before the next run looks for it:
        # one that lands after that look is a twin, tests/run/test_late_create.py's case.
        wait_until(quiet(emulator))
    final = run_cli([*RUN, *names], cwd=tmp_path, env=env, timeout=180)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    assert len(_result_files(tmp_path)) == 20
    # A create in flight when a process was killed may land after the next run looked
    # for it: that twin is cancelled (_submit/_twins), so count the jobs that ran.
    by_input: dict[str, int] = {}
    for batch in _not_cancelled(service.jobs()):
        path = batch["displayName"].rsplit(" [", 1)[0]
        by_input[path] = by_input.get(path, 0) + 1
    assert by_input == dict.fromkeys(names, 1), "no input got two batches"
    assert service.uploads() == []
    again = run_cli([*RUN, *names], cwd=tmp_path, env=env)
    assert again.returncode == 0
    assert "already in" in again.stdout
    assert len(_not_cancelled(service.jobs())) == 20


def _not_cancelled(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [j for j in jobs if not str(j["state"]).endswith(("_CANCELLED", "_CANCELLING"))]


# The Gemini API refuses the whole create for such a line (docs/fidelity.md): the kinder
# answer, one error line per refused request, is what this test needs.
@pytest.mark.parametrize(
    "emulator_config",
    [EmulatorConfig(port=0, processing_seconds=0.6, answer_invalid_lines=True)],
)
@pytest.mark.promise("results-in-input-order")
def test_run_writes_results_in_input_order_with_failed_requests_apart(
    service: Service, tmp_path: Path
) -> None:
    """One request the service refuses: results in input order (its line an error), the
    refused input line in .failed.jsonl, status counting both, the upload deleted."""
    keys = [f"q{i}" for i in (5, 3, 9, 1, 7, 2)]
    lines = []
    for key in keys:
        request: dict[str, Any] = {"contents": [{"parts": [{"text": f"about {key}"}]}]}
        if key == "q1":
            request["generationConfig"] = {"temprature": 0.5}  # refused by the service
        lines.append(json.dumps({"key": key, "request": request}) + "\n")
    (tmp_path / "mixed.jsonl").write_text("".join(lines))
    result = run_cli(
        [*RUN, "--no-schema-check", "mixed.jsonl"], cwd=tmp_path, env=service.env(), timeout=120
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    written = [json.loads(line) for line in (tmp_path / "results" / "mixed.jsonl").open()]
    assert [line["key"] for line in written] == keys
    assert ["error" in line for line in written] == [k == "q1" for k in keys]
    assert all("response" in line for line in written if line["key"] != "q1")
    failed = (tmp_path / "results" / "mixed.failed.jsonl").read_text()
    assert failed == lines[keys.index("q1")]
    assert service.uploads() == []
    (line,) = read_journal(tmp_path / "job-info.jsonl")
    ended = "PARTIALLY_SUCCEEDED" if service.kind == "vertex" else "SUCCEEDED"
    assert line["batch"]["state"] == f"JOB_STATE_{ended}"
    status = run_cli(["status"], cwd=tmp_path, env=cli_env(None))
    assert status.returncode == 0, status.stderr
    assert "5 answered" in status.stdout or "5/6" in status.stdout, status.stdout


@pytest.mark.promise("run-exit-codes")
def test_first_ctrl_c_stops_run(emulator: RunningEmulator, tmp_path: Path) -> None:
    """SIGINT: run stops starting files, settles, records what exists, exits 130."""
    names = [p.name for p in make_inputs(tmp_path, 4, lines=2)]
    process = cli_popen(
        [*RUN, "--grace", "2", *names],
        cwd=tmp_path,
        env=cli_env(emulator),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(read_journal(tmp_path / "job-info.jsonl")) >= 1)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, out + err
    assert time.monotonic() - started < 6
    assert "interrupted" in out.splitlines()[-1]
    recorded = {line["batch"]["name"] for line in read_journal(tmp_path / "job-info.jsonl")}
    assert recorded == {b["name"] for b in emulator.state()["batches"]}


@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            # Each 2-line input is ~160 bytes, ~40 tokens: five fit in 200, not six.
            EmulatorConfig(port=0, enqueued_token_quota=200, processing_seconds=0.6),
            id="tokens-200",
        )
    ],
)
@pytest.mark.promise("window-waits")
def test_run_waits_at_the_token_quota_and_submit_defers(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The enqueued-token quota: submit defers (exit 3), run waits and finishes every file.
    Given the quota, submit counts it ahead: the deferred file uploads nothing."""
    names = [p.name for p in make_inputs(tmp_path, 6, lines=2)]
    env = cli_env(emulator)
    first = run_cli(["submit", "--enqueued-token-quota", "200", *names], cwd=tmp_path, env=env)
    assert first.returncode == 3, first.stdout + first.stderr
    assert "(the enqueued-token quota is full: about 200 of 200 tokens" in first.stdout
    assert emulator.state()["requests"]["create"]["count"] == 5, "no create refused"
    assert len(_uploads(emulator)) == 5, "no upload for the file that could not fit"
    result = run_cli([*RUN, *names], cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(_result_files(tmp_path)) == 6
    assert len(emulator.state()["batches"]) == 6
    assert _uploads(emulator) == []


@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=60, expire_after_seconds=0.5),
            id="all-expire",
        )
    ],
)
@pytest.mark.promise("run-exit-codes")
def test_expired_jobs_are_resubmitted_once_then_reported(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Every job expires: with --retry-failed each file is submitted once more, then the
    run reports the failures and exits 1; without it, no resubmission."""
    names = [p.name for p in make_inputs(tmp_path, 2, lines=1)]
    env = cli_env(emulator)
    result = run_cli([*RUN, "--retry-failed", *names], cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("submitting it again") == 2
    assert "results for 0, failed 2" in result.stdout.splitlines()[-1]
    states = [b["state"] for b in emulator.state()["batches"]]
    assert states == ["BATCH_STATE_EXPIRED"] * 4, "two batches per file: the first and one retry"
    assert _uploads(emulator) == [], "the upload of a job that will not run again is deleted"
    again = run_cli([*RUN, *names], cwd=tmp_path, env=env, timeout=60)
    assert again.returncode == 1
    assert "submitting it again" not in again.stdout
    assert len(emulator.state()["batches"]) == 4


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=0.6), id="fast")]
)
def test_a_deleted_batch_ends_the_file_instead_of_polling_forever(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The recorded batch was deleted on the service: run reports the file failed (exit 1)
    rather than polling forever; with --retry-failed it submits the file again."""
    names = [p.name for p in make_inputs(tmp_path, 1, lines=2)]
    env = cli_env(emulator)
    assert run_cli(["submit", *names], cwd=tmp_path, env=env).returncode == 0
    (batch,) = emulator.state()["batches"]
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emulator.base_url))
    client.batches.delete(name=batch["name"])
    gone = run_cli([*RUN, *names], cwd=tmp_path, env=env, timeout=60)
    assert gone.returncode == 1, gone.stdout + gone.stderr
    assert "results for 0, failed 1" in gone.stdout.splitlines()[-1]
    again = run_cli([*RUN, "--retry-failed", *names], cwd=tmp_path, env=env, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(_result_files(tmp_path)) == 1


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=0.5), id="fast")]
)
@pytest.mark.asyncio
async def test_run_frees_storage_held_by_ended_jobs_first(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Storage is the limit: uploads of earlier, ended jobs are deleted to make room, and
    the new files go through (before, those uploads stayed until they expired)."""
    old = make_inputs(tmp_path / "old", 2, lines=2)
    new = make_inputs(tmp_path / "new", 2, lines=2, prefix="new")
    journal = tmp_path / "job-info.jsonl"
    size = old[0].stat().st_size
    await submit(
        [str(p) for p in old], job_info=journal, api_key=TEST_API_KEY, base_url=emulator.base_url
    )
    wait_until(
        lambda: all(b["state"] == "BATCH_STATE_SUCCEEDED" for b in emulator.state()["batches"])
    )
    events: list[Event] = []
    settings = SubmitSettings(storage_quota_bytes=3 * size + size // 2, retry=FAST_RETRY)
    with anyio.fail_after(60):
        summary = await run(
            [str(p) for p in new],
            settings=settings,
            job_info=journal,
            interval=0.2,
            api_key=TEST_API_KEY,
            base_url=emulator.base_url,
            on_event=events.append,
        )
    assert (summary.downloaded, summary.failed) == (2, 0)
    assert any(isinstance(e, WaitingForCapacity) for e in events), "storage was the limit"
    assert _uploads(emulator) == [], "the ended jobs' uploads were deleted to make room"


@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=0.6, request_errors=0.4, fault_seed=7),
            id="errors",
        )
    ],
)
def test_run_of_two_inputs_with_one_stem_keeps_both_failed_lists(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """run q.jsonl q.txt with per-request errors: each input's failed requests in a file
    of its own, none lost to the other (issue 17, item 2)."""
    written = {}
    for name, tag in (("q.jsonl", "q"), ("q.txt", "t")):
        lines = [
            json.dumps({"key": f"{tag}{i}", "request": {"contents": []}}).encode() + b"\n"
            for i in range(30)
        ]
        (tmp_path / name).write_bytes(b"".join(lines))
        written[name] = lines
    result = run_cli([*RUN, "q.jsonl", "q.txt"], cwd=tmp_path, env=cli_env(emulator), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, failed in (("q.jsonl", "q.failed.jsonl"), ("q.txt", "q.txt.failed.jsonl")):
        answers = [
            json.loads(line) for line in (tmp_path / "results" / name).read_bytes().splitlines()
        ]
        erring = [i for i, answer in enumerate(answers) if "error" in answer]
        assert erring
        expected = b"".join(written[name][i] for i in erring)
        assert (tmp_path / "results" / failed).read_bytes() == expected


def test_run_reports_hostile_output_by_line_and_the_other_files_go_on(tmp_path: Path) -> None:
    """One file's output nested 100,000 deep (rewritten on the emulator's disk: a test
    fault, not the service's behaviour): run fails that file with its line, and the other
    file gets its results (issue 17, item 8)."""
    config = EmulatorConfig(port=0, processing_seconds=0.6, state_dir=tmp_path / "emulator")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (work / name).write_bytes(
            b"".join(
                json.dumps({"key": f"{name}{i}", "request": {"contents": []}}).encode() + b"\n"
                for i in range(3)
            )
        )
    with EmulatorThread(config) as emulator:
        submitted = run_cli(["submit", "a.jsonl", "b.jsonl"], cwd=work, env=cli_env(emulator))
        assert submitted.returncode == 0, submitted.stderr
        wait_until(lambda: len(_outputs(emulator)) == 2, timeout=20, poll=0.2)
        batches = {b["outputFile"]: b["displayName"] for b in emulator.state()["batches"]}
        (output,) = [name for name in _outputs(emulator) if batches[name].startswith("a.jsonl")]
        blob = tmp_path / "emulator" / "blobs" / output.removeprefix("files/")
        blob.write_bytes(
            b'{"key": "a.jsonl0", "response": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
        )
        result = run_cli([*RUN, "a.jsonl", "b.jsonl"], cwd=work, env=cli_env(emulator))
    assert result.returncode == 1, result.stdout + result.stderr
    assert ":1: nested too deeply to read" in result.stdout + result.stderr
    assert "unexpected" not in result.stdout + result.stderr
    assert not (work / "results" / "a.jsonl").exists()
    assert len((work / "results" / "b.jsonl").read_bytes().splitlines()) == 3


def _outputs(emulator: RunningEmulator) -> list[str]:
    """The output files the emulator has made (it makes one when a batch is looked at)."""
    client = genai.Client(
        api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url)
    )
    for batch in client.batches.list():
        assert batch.name is not None
        client.batches.get(name=batch.name)
    return [f["name"] for f in emulator.state()["files"] if f["source"] == "GENERATED"]


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=0.6), id="fast")]
)
@pytest.mark.promise("changed-input-no-results")
@pytest.mark.promise("run-exit-codes")
def test_run_says_an_input_changed_since_it_was_submitted(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Edited after its submit: run matches no results to the new lines, says so and
    exits 1, keeping the answers to what was sent (issue 17, item 6)."""
    lines = [
        json.dumps({"key": f"k{i}", "request": {"contents": []}}).encode() + b"\n" for i in range(3)
    ]
    (tmp_path / "q.jsonl").write_bytes(b"".join(lines))
    submitted = run_cli(["submit", "q.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert submitted.returncode == 0, submitted.stderr
    (tmp_path / "q.jsonl").write_bytes(b"".join(lines[:2]) + lines[2].replace(b"k2", b"k9"))
    result = run_cli([*RUN, "q.jsonl"], cwd=tmp_path, env=cli_env(emulator), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "changed since it was submitted (sha256 differs)" in result.stdout
    assert not (tmp_path / "results" / "q.jsonl").exists()
    assert len((tmp_path / "results" / "q.raw.jsonl").read_bytes().splitlines()) == 3
