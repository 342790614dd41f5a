"""Request-level exactly-once (issue 20) for split and packed inputs: --retry-failed
sends only the requests no job of the input answered, as rounds of each part, or of
each input of a pack, and the results of every job merge into one file in input order.

Real CLI against the emulator over HTTP; what each job was sent is read from the
emulator's stored copy of its input (``sent_to``) or, on Vertex, from Cloud Storage.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gembatch_async.emulator import EmulatorConfig, EmulatorThread

from ..helpers import cli_env, read_journal, run_cli, wait_until
from ..results.test_request_rounds import (
    ERRORS,
    SEED,
    SHARE,
    _answered_keys,
    _object_bytes,
    _vertex_client,
    _vertex_state,
    all_ended,
    batches,
    errors_draw,
    rows,
    sent_to,
    write_requests,
)
from ..services import Service
from ..zygote import cli_popen

#: The "slow" Vertex jobs' processing time, on the emulator's clock (tests move it): long,
#: so the real time a loaded machine lets pass between steps barely moves a job on.
_PROCESSING = 120.0
#: How long such a job stays PENDING, and a cancel CANCELLING: a third of its processing
#: time (emulator/_vertex_jobs.py, Timing.pending_seconds).
_PENDING = _PROCESSING / 3
#: Where the cancelled-half-way tests cancel: an eighth of the rows done, so each input
#: (or part) keeps rows to send again.
_CANCEL_AT = _PENDING + _PROCESSING / 8
#: 40 requests, 15 a job: three parts (15, 15, 10).
SPLIT = ["--max-requests-per-job", "15"]


def _keys_of(sent: bytes) -> list[str]:
    return [json.loads(line)["key"] for line in sent.splitlines() if line.strip()]


def _failed_keys(sent: bytes, batch: dict[str, Any]) -> list[str]:
    """The keys of a job's input that the emulator answered with an error, in order."""
    return [key for key in _keys_of(sent) if ERRORS.error_for(key, 0, errors_draw(batch))]


def _round_lines(journal: Path) -> list[dict[str, Any]]:
    return [line for line in read_journal(journal) if "round" in line]


def test_split_input_rounds_send_only_each_parts_failed_requests(tmp_path: Path) -> None:
    """Three parts, each with per-request errors: --retry-failed makes one round per part
    that has errors, carrying exactly that part's failed lines (never a line another job
    answered), and download writes one answer per request, in input order."""
    state_dir = tmp_path / "emulator"
    config = EmulatorConfig(
        port=0,
        processing_seconds=0.5,
        request_errors=SHARE,
        fault_seed=SEED,
        state_dir=state_dir,
    )
    keys = [f"p{i:02d}" for i in range(40)]
    lines = dict(zip(keys, write_requests(tmp_path / "q.jsonl", keys), strict=True))
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        first = run_cli(["submit", *SPLIT, "q.jsonl"], cwd=tmp_path, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        wait_until(lambda: all_ended(emulator))
        parts = batches(emulator)
        assert len(parts) == 3
        failed = {b["name"]: _failed_keys(sent_to(state_dir, b), b) for b in parts}
        assert sum(bool(f) for f in failed.values()) >= 2, failed

        again = run_cli(["submit", "--retry-failed", *SPLIT, "q.jsonl"], cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        made = [b for b in batches(emulator) if b["name"] not in failed]
        expected = sorted(b"".join(lines[k] for k in f) for f in failed.values() if f)
        assert sorted(sent_to(state_dir, b) for b in made) == expected
        rounds = _round_lines(tmp_path / "job-info.jsonl")
        assert len(rounds) == len(made)
        for line in rounds:
            assert line["round"] == 1
            assert line["parts"] == 3
            (done,) = line["completes"]
            assert line["carries"][0]["requests"] == len(failed[done["batch"]])
        wait_until(lambda: all_ended(emulator))

        download = run_cli(["download"], cwd=tmp_path, env=env)
        assert download.returncode == 0, download.stdout + download.stderr
        status = run_cli(["status", "q.jsonl"], cwd=tmp_path, env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        plain = run_cli(["submit", *SPLIT, "q.jsonl"], cwd=tmp_path, env=env)
        assert "changed" not in plain.stdout, plain.stdout
        assert len(batches(emulator)) == 3 + len(made)
        state = batches(emulator)

    by_round = {line["completes"][0]["batch"]: line["batch"]["name"] for line in rounds}
    draws = {b["name"]: b for b in state}
    still = {
        key
        for part, keys_failed in failed.items()
        for key in keys_failed
        if ERRORS.error_for(key, 0, errors_draw(draws[by_round[part]]))
    }
    got = rows(tmp_path / "results" / "q.jsonl")
    assert [row["key"] for row in got] == keys, "one answer per request, in input order"
    assert {row["key"] for row in got if "error" in row} == still
    # status counts the whole input on a part's round that holds its results (the
    # first part's line records them), the part's own requests on the others
    shown = f"[input: {40 - len(still)} answered, {len(still)} failed, 0 pending; 2 jobs]"
    counted = [line for line in status.stdout.splitlines() if "[input: " in line]
    assert all(shown in line for line in counted), status.stdout
    assert status.stdout.count("[part ") + len(counted) == len(made), status.stdout


def test_a_kill_between_a_parts_round_create_and_its_line_converges(tmp_path: Path) -> None:
    """A part's round is created, its answer lost and the look-up held up; SIGKILL then.
    The rerun makes the same round files, adopts that batch and creates the others'
    rounds: one round per part with errors, no stray upload."""
    state_dir = tmp_path / "emulator"
    config = EmulatorConfig(
        port=0,
        processing_seconds=0.5,
        request_errors=SHARE,
        fault_seed=SEED,
        state_dir=state_dir,
    )
    keys = [f"s{i:02d}" for i in range(30)]
    write_requests(tmp_path / "q.jsonl", keys)
    journal = tmp_path / "job-info.jsonl"
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        assert run_cli(["submit", *SPLIT, "q.jsonl"], cwd=tmp_path, env=env).returncode == 0
        wait_until(lambda: all_ended(emulator))
        parts = batches(emulator)
        with_errors = [b for b in parts if _failed_keys(sent_to(state_dir, b), b)]
        assert len(parts) == 2
        assert len(with_errors) == 2
        emulator.set_faults("create:1:lost,list:1:slow=6")
        command = ["submit", "--retry-failed", *SPLIT]
        process = cli_popen(
            [*command, "q.jsonl"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: len(batches(emulator)) == 3, timeout=40)
            time.sleep(0.5)
            assert process.poll() is None, "still waiting for the look-up"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert not _round_lines(journal)
        emulator.set_faults("")
        rerun = run_cli(["submit", "--retry-failed", *SPLIT, "q.jsonl"], cwd=tmp_path, env=env)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        state = emulator.state()
    assert len(state["batches"]) == 4, "the killed run's round was found, not made again"
    rounds = _round_lines(journal)
    assert sorted(line["part"] for line in rounds) == [1, 2]
    assert sum(bool(line["adopted"]) for line in rounds) == 1
    used = {b["inputFile"] for b in state["batches"]}
    uploads = [f["name"] for f in state["files"] if f["source"] == "UPLOADED"]
    assert sorted(uploads) == sorted(used), "no upload without its batch"


def _pack_inputs(folder: Path, count: int, keys: int = 3) -> dict[str, dict[str, bytes]]:
    """Inputs whose keys repeat across files: only the prefix tells their answers apart."""
    made: dict[str, dict[str, bytes]] = {}
    for n in range(count):
        keys_of = [f"k-{i}" for i in range(keys)]
        name = f"in-{n:02d}.jsonl"
        made[name] = dict(zip(keys_of, write_requests(folder / name, keys_of), strict=True))
    return made


def test_packed_inputs_rounds_send_only_each_members_failed_requests(tmp_path: Path) -> None:
    """A pack of six inputs succeeds with per-request errors: --retry-failed sends one
    round per input with errors, carrying exactly its failed lines under its own keys
    (no prefix, no sibling's request), and each input's results merge in its order."""
    state_dir = tmp_path / "emulator"
    config = EmulatorConfig(
        port=0,
        processing_seconds=0.5,
        request_errors=SHARE,
        fault_seed=SEED,
        state_dir=state_dir,
    )
    made = _pack_inputs(tmp_path, 6)
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        first = run_cli(["submit", "--pack", *made], cwd=tmp_path, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        wait_until(lambda: all_ended(emulator))
        (pack,) = batches(emulator)
        members = {
            line["input_file"]: line["pack"]["key_prefix"]
            for line in read_journal(tmp_path / "job-info.jsonl")
        }
        failed = {
            name: [
                k for k in made[name] if ERRORS.error_for(members[name] + k, 0, errors_draw(pack))
            ]
            for name in made
        }
        assert 2 <= sum(bool(f) for f in failed.values()) < 6, failed

        again = run_cli(["submit", "--retry-failed", "--pack", *made], cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        rounds = {line["input_file"]: line for line in _round_lines(tmp_path / "job-info.jsonl")}
        assert sorted(rounds) == sorted(name for name, f in failed.items() if f)
        new = {b["name"]: b for b in batches(emulator) if b["name"] != pack["name"]}
        assert len(new) == len(rounds)
        for name, line in rounds.items():
            sent = sent_to(state_dir, new[line["batch"]["name"]])
            assert sent == b"".join(made[name][k] for k in failed[name])
            assert line["completes"][0]["key_prefix"] == members[name]
        wait_until(lambda: all_ended(emulator))
        before = emulator.state()["requests"]["download"]["count"]
        download = run_cli(["download"], cwd=tmp_path, env=env)
        assert download.returncode == 0, download.stdout + download.stderr
        downloads = emulator.state()["requests"]["download"]["count"] - before
        assert downloads == 1 + len(rounds), "the pack's output once, and each round's"
        state = {b["name"]: b for b in batches(emulator)}

    for name, keys in made.items():
        got = rows(tmp_path / "results" / name)
        assert [row["key"] for row in got] == list(keys), name
        round_line = rounds.get(name)
        still = (
            {
                k
                for k in failed[name]
                if ERRORS.error_for(k, 0, errors_draw(state[round_line["batch"]["name"]]))
            }
            if round_line is not None
            else set()
        )
        assert {row["key"] for row in got if "error" in row} == still, name


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=_PROCESSING), id="slow")],
)
@pytest.mark.parametrize("service", ["vertex"], indirect=True)
def test_a_split_vertex_input_cancelled_half_way_resumes_without_its_completed_rows(
    service: Service, tmp_path: Path
) -> None:
    """Both parts of a split Vertex input are cancelled half-way: --retry-failed sends,
    per part, only the rows its cancelled job did not complete; run then writes every
    request's answer, in input order."""
    keys = [f"v{i:02d}" for i in range(40)]
    lines = dict(zip(keys, write_requests(tmp_path / "q.jsonl", keys), strict=True))
    env = service.env()
    split = ["--max-requests-per-job", "20"]
    first = run_cli(["submit", *split, "q.jsonl"], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    parts = service.jobs()
    assert len(parts) == 2
    client = _vertex_client(service)
    names = [str(job["name"]) for job in parts]
    # The emulator's clock, not real time: past PENDING and an eighth of the run.
    service.emulator.advance_clock(_CANCEL_AT)
    assert all(_vertex_state(service, n) == "JOB_STATE_RUNNING" for n in names)
    for name in names:
        client.batches.cancel(name=name)
    service.emulator.advance_clock(_PENDING)  # CANCELLING lasts as long as PENDING
    assert all(client.batches.get(name=n).state == "JOB_STATE_CANCELLED" for n in names)
    completed: set[str] = set()
    for job in parts:
        ended = next(j for j in service.jobs() if j["name"] == job["name"])
        completed |= _answered_keys(service, str(ended["outputDirectory"]))
    assert 0 < len(completed) < len(keys), "cancelled half-way, with some rows completed"

    again = run_cli(["submit", "--retry-failed", *split, "q.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = [j for j in service.jobs() if j["name"] not in {p["name"] for p in parts}]
    assert len(resumed) == 2, "one round per part"
    expected = sorted(
        b"".join(lines[k] for k in keys[start : start + 20] if k not in completed)
        for start in (0, 20)
    )
    assert sorted(_object_bytes(service, j["input"]) for j in resumed) == expected
    service.emulator.advance_clock(_PENDING + _PROCESSING)  # the rounds end: run collects
    result = run_cli(["run", "--interval", "0.3", *split, "q.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(service.jobs()) == 4
    got = rows(tmp_path / "results" / "q.jsonl")
    assert [row["key"] for row in got] == keys
    assert all("response" in row for row in got)


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=_PROCESSING), id="slow")],
)
@pytest.mark.parametrize("service", ["vertex"], indirect=True)
def test_a_vertex_pack_cancelled_half_way_resumes_each_input_without_its_completed_rows(
    service: Service, tmp_path: Path
) -> None:
    """A Vertex pack of four inputs is cancelled half-way: --retry-failed never packs it
    again whole; each input whose rows the pack did not all complete gets a job of
    just those rows (a round), under its own keys; run then writes each input's every answer, in
    its order."""
    made = _pack_inputs(tmp_path, 4, keys=10)
    env = service.env()
    first = run_cli(["submit", "--pack", *made], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    (pack,) = service.jobs()
    client = _vertex_client(service)
    # The emulator's clock, not real time: past PENDING and an eighth of the run.
    service.emulator.advance_clock(_CANCEL_AT)
    assert _vertex_state(service, pack["name"]) == "JOB_STATE_RUNNING"
    client.batches.cancel(name=pack["name"])
    service.emulator.advance_clock(_PENDING)  # CANCELLING lasts as long as PENDING
    assert client.batches.get(name=pack["name"]).state == "JOB_STATE_CANCELLED"
    ended = next(j for j in service.jobs() if j["name"] == pack["name"])
    completed = _answered_keys(service, str(ended["outputDirectory"]))
    assert 0 < len(completed) < 40, "cancelled half-way, with some rows completed"
    prefixes = {
        line["input_file"]: line["pack"]["key_prefix"]
        for line in read_journal(tmp_path / "job-info.jsonl")
    }
    left = {
        name: [k for k in keys if prefixes[name] + k not in completed]
        for name, keys in made.items()
    }

    again = run_cli(["submit", "--retry-failed", "--pack", *made], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    # An input none of whose rows completed goes whole (the same lines), alone.
    resent = {
        line["input_file"]: line
        for line in read_journal(tmp_path / "job-info.jsonl")
        if line["batch"]["name"] != pack["name"]
    }
    assert sorted(resent) == sorted(name for name, keys in left.items() if keys)
    assert all("pack" not in line for line in resent.values()), "no pack again"
    assert any("round" in line for line in resent.values()), "some inputs half done"
    jobs = {j["name"]: j for j in service.jobs()}
    assert len(jobs) == 1 + len(resent), "one job per input with rows left"
    for name, line in resent.items():
        sent = _object_bytes(service, jobs[line["batch"]["name"]]["input"])
        assert sent == b"".join(made[name][k] for k in left[name]), name
    service.emulator.advance_clock(_PENDING + _PROCESSING)  # the rounds end: run collects
    result = run_cli(["run", "--interval", "0.3", "--pack", *made], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(service.jobs()) == 1 + len(resent)
    for name, keys in made.items():
        got = rows(tmp_path / "results" / name)
        assert [row["key"] for row in got] == list(keys), name
        assert all("response" in row for row in got), name


def test_two_processes_make_one_round_per_part(tmp_path: Path) -> None:
    """Two submit --retry-failed at once on one split input: one round per part with
    errors between them (the input's claim, then the journal re-read), one line each."""
    state_dir = tmp_path / "emulator"
    config = EmulatorConfig(
        port=0,
        processing_seconds=0.5,
        request_errors=SHARE,
        fault_seed=SEED,
        latency_ms=30,
        state_dir=state_dir,
    )
    write_requests(tmp_path / "q.jsonl", [f"t{i:02d}" for i in range(30)])
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        assert run_cli(["submit", *SPLIT, "q.jsonl"], cwd=tmp_path, env=env).returncode == 0
        wait_until(lambda: all_ended(emulator))
        parts = batches(emulator)
        with_errors = [b for b in parts if _failed_keys(sent_to(state_dir, b), b)]
        assert len(parts) == 2
        assert len(with_errors) == 2
        command = ["submit", "--retry-failed", *SPLIT]
        both = [
            cli_popen(
                [*command, "q.jsonl"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        for process in both:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
        assert len(batches(emulator)) == 4
    rounds = _round_lines(tmp_path / "job-info.jsonl")
    assert sorted(line["part"] for line in rounds) == [1, 2]


def test_a_kill_between_a_packed_inputs_round_create_and_its_line_converges(
    tmp_path: Path,
) -> None:
    """A packed input's round is created, its answer lost and the look-up held up;
    SIGKILL then. The rerun adopts that batch and makes the other inputs' rounds: one
    round per input with errors, no stray upload."""
    state_dir = tmp_path / "emulator"
    config = EmulatorConfig(
        port=0,
        processing_seconds=0.5,
        request_errors=SHARE,
        fault_seed=SEED,
        state_dir=state_dir,
    )
    made = _pack_inputs(tmp_path, 6)
    journal = tmp_path / "job-info.jsonl"
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        assert run_cli(["submit", "--pack", *made], cwd=tmp_path, env=env).returncode == 0
        wait_until(lambda: all_ended(emulator))
        (pack,) = batches(emulator)
        prefixes = {
            line["input_file"]: line["pack"]["key_prefix"] for line in read_journal(journal)
        }
        with_errors = sorted(
            name
            for name in made
            if any(ERRORS.error_for(prefixes[name] + k, 0, errors_draw(pack)) for k in made[name])
        )
        assert len(with_errors) >= 2
        emulator.set_faults("create:1:lost,list:1:slow=6")
        command = ["submit", "--retry-failed", "--pack"]
        process = cli_popen(
            [*command, *made],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: len(batches(emulator)) >= 2, timeout=40)
            time.sleep(0.5)
            assert process.poll() is None, "still waiting for the look-up"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        emulator.set_faults("")
        rerun = run_cli(["submit", "--retry-failed", "--pack", *made], cwd=tmp_path, env=env)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        state = emulator.state()
    assert len(state["batches"]) == 1 + len(with_errors), "no round made twice"
    rounds = _round_lines(journal)
    assert sorted(line["input_file"] for line in rounds) == with_errors
    assert any(line["adopted"] for line in rounds), "the killed run's round was adopted"
    used = {b["inputFile"] for b in state["batches"]}
    uploads = [f["name"] for f in state["files"] if f["source"] == "UPLOADED"]
    assert sorted(uploads) == sorted(used), "no upload without its batch"
