"""--pack: small inputs share jobs; exactly-once, results and status stay per input."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.genai import types

from gembatch_async._admission import estimated_tokens, load_of
from gembatch_async._backends._genai import job_of
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, finish_jobs, read_journal, run_cli, wait_until
from ..zygote import cli_popen

FAST = pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=0.5, latency_ms=20), id="fast")],
)
#: Five 4-request inputs a pack: 12 inputs make 3 packs.
PACKS_OF_5 = ["--pack", "--max-requests-per-job", "20"]


def _inputs(folder: Path, count: int, lines: int = 4) -> dict[str, list[str]]:
    """Inputs whose keys repeat across files (``k-3`` in each) and do not sort into
    input order: only namespacing tells their answers apart, only the join orders them."""
    made: dict[str, list[str]] = {}
    for n in range(count):
        keys = [f"k-{(i * 7) % lines + (lines if i % 2 else 0)}" for i in range(lines)]
        name = f"in-{n:02d}.jsonl"
        with (folder / name).open("w") as handle:
            for key in keys:
                request = {"contents": [{"parts": [{"text": f"file {n} asks {key}"}]}]}
                handle.write(json.dumps({"key": key, "request": request}) + "\n")
        made[name] = keys
    return made


def _live_batches(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [b for b in emulator.state()["batches"] if b["state"] != "BATCH_STATE_FAILED"]


def _assert_packed_once(
    emulator: RunningEmulator, journal: Path, names: list[str], packs: int
) -> None:
    """Server truth and the journal agree: ``packs`` jobs, each input recorded once,
    in exactly the job that carries it, and no upload that no job uses."""
    state = emulator.state()
    batches = {b["name"]: b for b in state["batches"]}
    assert len(batches) == packs, [b["displayName"] for b in batches.values()]
    lines = read_journal(journal)
    assert sorted(line["input_file"] for line in lines) == sorted(names), "each input once"
    for line in lines:
        assert line["batch"]["name"] in batches
        carried = [c["input"] for c in line["carries"]]
        assert line["input_identity"] in carried
        assert batches[line["batch"]["name"]]["inputFile"] == line["uploaded_file_name"]
    by_batch: dict[str, set[str]] = {}
    for line in lines:
        by_batch.setdefault(line["batch"]["name"], set()).add(line["input_identity"])
    for line in lines:  # every line of a job names the same members, and they are its lines
        assert {c["input"] for c in line["carries"]} == by_batch[line["batch"]["name"]]
    used = {b["inputFile"] for b in state["batches"]}
    stray = [
        f["name"] for f in state["files"] if f["source"] == "UPLOADED" and f["name"] not in used
    ]
    assert not stray, f"uploads no job uses: {stray}"


@pytest.mark.promise("pack-results-per-input")
@FAST
def test_results_split_back_to_each_input_in_its_order(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """run --pack: 12 inputs in 3 jobs; each input's results file holds its own answers,
    one per request, in its order, under its own keys; status shows each input and its job."""
    made = _inputs(tmp_path, 12)
    env = cli_env(emulator)
    result = run_cli(
        ["run", "--interval", "0.2", *PACKS_OF_5, *made], cwd=tmp_path, env=env, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_packed_once(emulator, tmp_path / "job-info.jsonl", list(made), packs=3)
    for name, keys in made.items():
        rows = [json.loads(x) for x in (tmp_path / "results" / name).read_text().splitlines()]
        assert [row["key"] for row in rows] == keys, name
        n = int(name[3:5])
        texts = [row["response"]["candidates"][0]["content"]["parts"][0]["text"] for row in rows]
        assert texts == [
            f"Emulated answer from gemini-3.1-flash-lite to: file {n} asks {k}" for k in keys
        ]
    assert "48 requests: 48 answered, 0 failed" in result.stdout
    downloads = emulator.state()["requests"]["download"]["count"]
    assert downloads == 3, "each job's output crosses the network once, not once per input"
    status = run_cli(["status"], cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = {x["input_file"]: x["batch"]["name"] for x in read_journal(tmp_path / "job-info.jsonl")}
    for name, batch in lines.items():
        assert any(name in row and batch in row for row in status.stdout.splitlines()), name


@pytest.mark.promise("pack-exactly-once")
@FAST
def test_a_rerun_submits_nothing_and_notices_a_changed_member(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """submit --pack twice: the second sends no upload and no create; an input edited
    since is skipped and said to have changed."""
    made = _inputs(tmp_path, 6)
    env = cli_env(emulator)
    first = run_cli(["submit", "--pack", *made], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(emulator.state()["batches"]) == 1
    sent = {k: v["count"] for k, v in emulator.state()["requests"].items()}
    with (tmp_path / "in-03.jsonl").open("a") as handle:
        handle.write(
            json.dumps({"key": "new", "request": {"contents": [{"parts": [{"text": "x"}]}]}}) + "\n"
        )
    again = run_cli(["submit", "--pack", *made], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1].startswith("submitted 0, skipped 6, failed 0")
    changed = [row for row in again.stdout.splitlines() if "changed" in row]
    assert len(changed) == 1, again.stdout
    assert "in-03.jsonl" in changed[0], again.stdout
    now = {k: v["count"] for k, v in emulator.state()["requests"].items()}
    assert (now["upload"], now["create"]) == (sent["upload"], sent["create"])
    assert len(emulator.state()["batches"]) == 1


@pytest.mark.parametrize(
    ("emulator_config", "kill_after"),
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=60, latency_ms=150), "upload", id="upload"
        ),
        # Every create is carried out and its answer lost: the kill lands between a
        # job's creation and its record, the window only the pack's stable name covers.
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=60, latency_ms=50, faults="create:1:lost"),
            "create",
            id="created-unrecorded",
        ),
    ],
)
@pytest.mark.promise("pack-exactly-once")
def test_a_kill_mid_submit_and_a_rerun_make_each_pack_once(
    emulator: RunningEmulator, tmp_path: Path, kill_after: str
) -> None:
    """SIGKILL once the first pack's upload (or create) reached the service; the same
    command again converges: 3 jobs, each input recorded once, no stray upload."""
    made = _inputs(tmp_path, 15)
    env = cli_env(emulator)
    process = cli_popen(
        ["submit", "-c", "1", *PACKS_OF_5, *made],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # A CLI start under a loaded machine takes seconds: wait for it generously.
    wait_until(lambda: emulator.state()["requests"][kill_after]["count"] >= 1, timeout=90)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert len(emulator.state()["batches"]) < 3, "killed before every pack was created"
    rerun = run_cli(["submit", *PACKS_OF_5, *made], cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    _assert_packed_once(emulator, tmp_path / "job-info.jsonl", list(made), packs=3)


@pytest.mark.promise("retry-failed-only-unanswered")
@FAST
def test_a_failed_pack_is_sent_again_for_its_inputs_only(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Two packs; one succeeds and its results are in, the other FAILS: --retry-failed
    packs again exactly the failed pack's inputs, into one new job."""
    made = _inputs(tmp_path, 10)
    env = cli_env(emulator)
    assert run_cli(["submit", *PACKS_OF_5, *made], cwd=tmp_path, env=env).returncode == 0
    lines = read_journal(tmp_path / "job-info.jsonl")
    failed = lines[-1]["batch"]["name"]
    emulator.end_batch(failed, "BATCH_STATE_FAILED")
    wait_until(
        lambda: all(
            b["state"] != "BATCH_STATE_PENDING" and b["state"] != "BATCH_STATE_RUNNING"
            for b in emulator.state()["batches"]
        )
    )
    download = run_cli(["download"], cwd=tmp_path, env=env)
    assert download.returncode in (0, 1), download.stdout + download.stderr
    again = run_cli(["submit", "--retry-failed", *PACKS_OF_5, *made], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    batches = emulator.state()["batches"]
    assert len(batches) == 3, "one new job for the failed pack"
    newest = read_journal(tmp_path / "job-info.jsonl")[len(lines) :]
    retried = sorted(x["input_file"] for x in lines if x["batch"]["name"] == failed)
    assert sorted(x["input_file"] for x in newest) == retried
    assert len({x["batch"]["name"] for x in newest}) == 1
    assert sorted(c["input"] for c in newest[0]["carries"]) == retried


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=120), id="slow")]
)
def test_cancel_sends_one_cancel_per_packed_job(emulator: RunningEmulator, tmp_path: Path) -> None:
    """cancel with no files named: the pack's job is cancelled once (a second cancel of
    it would be refused: it has ended), and every input it carries shows it cancelled."""
    made = _inputs(tmp_path, 3)
    env = cli_env(emulator)
    assert run_cli(["submit", "--pack", *made], cwd=tmp_path, env=env).returncode == 0
    result = run_cli(["cancel"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert emulator.state()["requests"]["cancel"]["count"] == 1
    assert [b["state"] for b in emulator.state()["batches"]] == ["BATCH_STATE_CANCELLED"]
    assert result.stdout.count("CANCELLED") == 3, result.stdout


@FAST
def test_the_token_count_of_a_packed_job_is_the_whole_pack(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The admission counts an unfinished packed job's tokens from its whole upload,
    not from whichever of its inputs' lines came last."""
    made = _inputs(tmp_path, 4)
    env = cli_env(emulator)
    assert run_cli(["submit", "--pack", *made], cwd=tmp_path, env=env).returncode == 0
    lines = read_journal(tmp_path / "job-info.jsonl")
    name = lines[0]["batch"]["name"]
    listing = [job_of(types.BatchJob(name=name, state=types.JobState.JOB_STATE_PENDING))]
    load = load_of(listing, lines, lines[0]["model"])
    assert load.tokens == {name: estimated_tokens(lines[0]["pack"]["size_bytes"])}
    assert lines[0]["pack"]["size_bytes"] > sum(x["size_bytes"] for x in lines) / 2


@pytest.mark.promise("pack-results-per-input")
@FAST
def test_download_splits_a_packed_output_with_one_download(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """submit --pack, then download: each input's results in its order, from one
    download of the job's output."""
    made = _inputs(tmp_path, 5)
    env = cli_env(emulator)
    assert run_cli(["submit", "--pack", *made], cwd=tmp_path, env=env).returncode == 0
    finish_jobs(emulator, 0.5)
    result = run_cli(["download"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, keys in made.items():
        rows = [json.loads(x) for x in (tmp_path / "results" / name).read_text().splitlines()]
        assert [row["key"] for row in rows] == keys, name
        assert all("response" in row for row in rows)
    assert emulator.state()["requests"]["download"]["count"] == 1
