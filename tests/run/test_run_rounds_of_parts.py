"""run --retry-failed, request by request, for split and packed inputs (issue 20): each
part, and each input of a pack, is followed by a round of just its failed requests, and
each input's results file merges all its jobs in input order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gembatch_async.emulator import EmulatorConfig, RunningEmulator
from gembatch_async.emulator._request_errors import RequestErrors

from ..helpers import cli_env, read_journal, run_cli

RUN = ["run", "--interval", "0.2", "--retry-max-delay", "0.05", "--retry-failed"]
SHARE, SEED = 0.3, 5
ERRORS = RequestErrors(SHARE, SEED)
WITH_ERRORS = pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=0.5, request_errors=SHARE, fault_seed=SEED),
            id="errors",
        )
    ],
)


def _write(path: Path, keys: list[str]) -> None:
    path.write_bytes(
        b"".join(
            json.dumps({"key": k, "request": {"contents": [{"parts": [{"text": k}]}]}}).encode()
            + b"\n"
            for k in keys
        )
    )


def _fails(key: str, batch: dict[str, Any]) -> bool:
    return ERRORS.error_for(key, 0, str(batch["requestErrorsDraw"])) is not None


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


@WITH_ERRORS
def test_run_sends_each_parts_failed_requests_once_more_and_merges_them(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A split input (three parts): one run makes a round for each part with errors
    (its requests only), writes one results file with one answer per request in input
    order, and deletes every upload; a second run sends nothing."""
    keys = [f"k{i:02d}" for i in range(40)]
    _write(tmp_path / "q.jsonl", keys)
    env = cli_env(emulator)
    split = ["--max-requests-per-job", "15"]
    result = run_cli([*RUN, *split, "q.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    state = emulator.state()
    lines = read_journal(tmp_path / "job-info.jsonl")
    rounds = [line for line in lines if "round" in line]
    by_name = {b["name"]: b for b in state["batches"]}
    parts = [line for line in lines if "round" not in line]
    assert len(parts) == 3
    assert len(rounds) >= 2
    sent_first = {p["batch"]["name"]: keys[15 * (p["part"] - 1) : 15 * p["part"]] for p in parts}
    still: set[str] = set()
    for line in rounds:
        first = line["completes"][0]["batch"]
        failed = [k for k in sent_first[first] if _fails(k, by_name[first])]
        assert by_name[line["batch"]["name"]]["requestCount"] == len(failed) > 0
        still |= {k for k in failed if _fails(k, by_name[line["batch"]["name"]])}
    with_errors = {n for n, ks in sent_first.items() if any(_fails(k, by_name[n]) for k in ks)}
    assert {line["completes"][0]["batch"] for line in rounds} == with_errors
    got = _rows(tmp_path / "results" / "q.jsonl")
    assert [row["key"] for row in got] == keys
    assert {row["key"] for row in got if "error" in row} == still
    assert f"40 requests: {40 - len(still)} answered, {len(still)} failed" in result.stdout
    if still:  # the parts used up their rounds: the hint names the --resubmits to go on
        assert "--retry-failed --resubmits 2" in result.stdout + result.stderr
    uploads = [f["name"] for f in state["files"] if f["source"] == "UPLOADED"]
    assert uploads == [], "every job's upload is deleted once the results are in"
    again = run_cli([*RUN, *split, "q.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(emulator.state()["batches"]) == 3 + len(rounds), "the rounds are used up"


@WITH_ERRORS
def test_run_sends_each_packed_inputs_failed_requests_once_more(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Six inputs in one pack: one run makes a round for each input with errors, of its
    own requests under its own keys, and each input's results merge in its order."""
    names = [f"in-{n}.jsonl" for n in range(6)]
    keys = [f"k-{i}" for i in range(3)]
    for name in names:
        _write(tmp_path / name, keys)
    env = cli_env(emulator)
    result = run_cli([*RUN, "--pack", *names], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    state = emulator.state()
    by_name = {b["name"]: b for b in state["batches"]}
    lines = read_journal(tmp_path / "job-info.jsonl")
    packed = {line["input_file"]: line for line in lines if "pack" in line}
    rounds = {line["input_file"]: line for line in lines if "round" in line}
    assert sorted(packed) == names
    assert len({p["batch"]["name"] for p in packed.values()}) == 1
    for name in names:
        line = packed[name]
        pack = by_name[line["batch"]["name"]]
        failed = [k for k in keys if _fails(line["pack"]["key_prefix"] + k, pack)]
        round_line = rounds.get(name)
        assert (round_line is not None) == bool(failed), name
        still: set[str] = set()
        if round_line is not None:
            job = by_name[round_line["batch"]["name"]]
            assert job["requestCount"] == len(failed)
            still = {k for k in failed if _fails(k, job)}
        got = _rows(tmp_path / "results" / name)
        assert [row["key"] for row in got] == keys, name
        assert {row["key"] for row in got if "error" in row} == still, name
    assert len(state["batches"]) == 1 + len(rounds)
    uploads = [f["name"] for f in state["files"] if f["source"] == "UPLOADED"]
    assert uploads == [], "the pack's and the rounds' uploads are deleted once the results are in"
