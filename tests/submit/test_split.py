"""Inputs larger than one job: split into parts at line boundaries, one logical input."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, creates_reached, finish_jobs, read_journal, run_cli, wait_until
from ..zygote import cli_popen

FAST = pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=0.5, latency_ms=20), id="fast")],
)
SPLIT = ["--max-requests-per-job", "34"]


def _input(path: Path, count: int = 100) -> list[str]:
    """Keys that do not sort into input order (z-, then a-, then numbers)."""
    keys = [f"{'zam'[i % 3]}-{(i * 37) % 101:03d}" for i in range(count)]
    with path.open("w") as handle:
        for key in keys:
            request = {"contents": [{"parts": [{"text": f"question {key}"}]}]}
            handle.write(json.dumps({"key": key, "request": request}) + "\n")
    return keys


def _batches_by_part(emulator: RunningEmulator) -> dict[str, int]:
    found: dict[str, int] = {}
    for batch in emulator.state()["batches"]:
        label = batch["displayName"].rsplit(" [", 1)[0]
        found[label] = found.get(label, 0) + 1
    return found


@pytest.mark.promise("split-parts-one-input")
@FAST
def test_a_100_request_input_goes_as_3_parts_and_comes_back_as_one(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """run: 3 jobs, 3 journal lines (part/parts, input_file the original), one results
    file with 100 lines in input order, no upload left."""
    keys = _input(tmp_path / "big.jsonl")
    env = cli_env(emulator)
    result = run_cli(["run", "--interval", "0.2", *SPLIT, "big.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = read_journal(tmp_path / "job-info.jsonl")
    assert sorted((x["input_file"], x["part"], x["parts"]) for x in lines) == [
        ("big.jsonl", 1, 3),
        ("big.jsonl", 2, 3),
        ("big.jsonl", 3, 3),
    ]
    assert sorted(x["count"] for x in lines) == [32, 34, 34]
    assert _batches_by_part(emulator) == {f"big.jsonl (part {k}/3)": 1 for k in (1, 2, 3)}
    rows = [json.loads(x) for x in (tmp_path / "results" / "big.jsonl").read_text().splitlines()]
    assert [row["key"] for row in rows] == keys, "one line per request, in input order"
    assert all("response" in row for row in rows)
    assert [f for f in emulator.state()["files"] if f["source"] == "UPLOADED"] == []
    again = run_cli(["submit", *SPLIT, "big.jsonl"], cwd=tmp_path, env=env)
    assert again.stdout.count("skipped") == 4  # three parts and the summary
    assert len(emulator.state()["batches"]) == 3


@FAST
def test_download_merges_the_parts(emulator: RunningEmulator, tmp_path: Path) -> None:
    """submit then download: the parts' outputs merged into one results file in order."""
    keys = _input(tmp_path / "big.jsonl", 40)
    env = cli_env(emulator)
    assert (
        run_cli(
            ["submit", "--max-requests-per-job", "15", "big.jsonl"], cwd=tmp_path, env=env
        ).returncode
        == 0
    )
    finish_jobs(emulator, 0.5)
    result = run_cli(["download"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(x) for x in (tmp_path / "results" / "big.jsonl").read_text().splitlines()]
    assert [row["key"] for row in rows] == keys


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=60, latency_ms=150), id="slow")],
)
@pytest.mark.promise("split-parts-one-input")
def test_a_kill_between_parts_and_a_rerun_submit_no_part_twice(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """SIGKILL after the first part's create; the rerun submits the missing parts once."""
    _input(tmp_path / "big.jsonl")
    env = cli_env(emulator)
    process = cli_popen(
        ["submit", *SPLIT, "big.jsonl"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(creates_reached(emulator, 1))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert len(emulator.state()["batches"]) < 3, "killed before every part was created"
    rerun = run_cli(["submit", *SPLIT, "big.jsonl"], cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _batches_by_part(emulator) == {f"big.jsonl (part {k}/3)": 1 for k in (1, 2, 3)}
    lines = read_journal(tmp_path / "job-info.jsonl")
    assert sorted((x["part"], x["batch"]["name"]) for x in lines) == sorted(
        (int(b["displayName"].split("(part ")[1][0]), b["name"])
        for b in emulator.state()["batches"]
    )
    uploads = [f for f in emulator.state()["files"] if f["source"] == "UPLOADED"]
    assert len(uploads) == 3, "one upload per part, none orphaned"


@pytest.mark.promise("split-parts-one-input")
@FAST
def test_a_new_split_never_submits_a_recorded_file_again(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Submitted whole, then with a job limit (and the other way round): skipped, not paid twice."""
    _input(tmp_path / "whole.jsonl", 30)
    _input(tmp_path / "split.jsonl", 30)
    env = cli_env(emulator)
    assert run_cli(["submit", "whole.jsonl"], cwd=tmp_path, env=env).returncode == 0
    assert run_cli(["submit", *SPLIT, "split.jsonl"], cwd=tmp_path, env=env).returncode == 0
    before = len(emulator.state()["batches"])
    for args in (
        [*SPLIT, "whole.jsonl"],
        ["--max-requests-per-job", "10", "split.jsonl"],
        ["split.jsonl"],
    ):
        again = run_cli(["submit", *args], cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "submitted 0," in again.stdout.splitlines()[-1], (args, again.stdout)
    assert len(emulator.state()["batches"]) == before
