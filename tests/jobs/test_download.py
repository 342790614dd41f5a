"""download as a user runs it: results in input order, failed requests, nothing half-done.

A real CLI subprocess against the emulator over HTTP; real files. The emulator answers
in another order than the requests (shuffled in windows), as the service does.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from gembatch_async import download_results, open_jobs
from gembatch_async._results._join import NO_KEY, NOT_ANSWERED
from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator
from gembatch_async.emulator._request_errors import RequestErrors

from ..helpers import (
    FAST_RETRY,
    TEST_API_KEY,
    cli_env,
    finish_jobs,
    read_journal,
    run_cli,
    wait_until,
    write_jsonl,
)
from ..zygote import cli_popen

FAST = EmulatorConfig(port=0, processing_seconds=1.0)
FAST_JOBS = pytest.mark.parametrize("emulator_config", [pytest.param(FAST, id="fast")])
ERRORS = RequestErrors(share=0.4, seed=7)
WITH_ERRORS = pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=1.0, request_errors=0.4, fault_seed=7)
        )
    ],
)


def submit(emulator: RunningEmulator, folder: Path, *names: str) -> None:
    """Submit, then wait until every batch has succeeded."""
    result = run_cli(["submit", *names], cwd=folder, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    finish_jobs(emulator, FAST.processing_seconds)


def write_requests(path: Path, keys: list[str | None]) -> list[bytes]:
    """An input with these keys (None: a line without one); returns its lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, key in enumerate(keys):
        line: dict[str, Any] = {"request": {"contents": [{"parts": [{"text": f"q{i}"}]}]}}
        if key is not None:
            line = {"key": key, **line}
        lines.append(json.dumps(line).encode() + b"\n")
    path.write_bytes(b"".join(lines))
    return lines


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.gembatch-tmp"))


@pytest.mark.promise("results-in-input-order")
@FAST_JOBS
def test_results_in_input_order_for_keys_that_do_not_sort(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Keys in no sortable order come back one line each, in input order; exit 0."""
    rng = random.Random(3)
    keys = [rng.choice(["zeta", "Ä", "k", "0"]) + f"-{rng.getrandbits(30)}-{i}" for i in range(300)]
    write_requests(tmp_path / "q.jsonl", list(keys))
    submit(emulator, tmp_path, "q.jsonl")
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    got = rows(tmp_path / "results" / "q.jsonl")
    assert [row["key"] for row in got] == keys
    assert all(set(row) == {"key", "response"} for row in got)
    assert "300 requests, 300 answered, 0 failed" in result.stdout
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["q.jsonl"]
    # The service's own order was another: the raw output, kept on request, shows it.
    raw = run_cli(["download", "--force", "--keep-raw"], cwd=tmp_path, env=cli_env(emulator))
    raw_keys = [row["key"] for row in rows(tmp_path / "results" / "q.raw.jsonl")]
    assert raw_keys != keys, raw.stdout
    assert sorted(raw_keys) == sorted(keys)


@FAST_JOBS
def test_same_names_in_two_folders_never_collide_and_out_mirrors(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """north/q.jsonl and south/q.jsonl get their own results; --out mirrors their paths."""
    north = write_requests(tmp_path / "north" / "q.jsonl", ["n1", "n2"])
    south = write_requests(tmp_path / "south" / "q.jsonl", ["s1", "s2", "s3"])
    submit(emulator, tmp_path, "north/q.jsonl", "south/q.jsonl")
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    assert [r["key"] for r in rows(tmp_path / "north/results/q.jsonl")] == ["n1", "n2"]
    assert [r["key"] for r in rows(tmp_path / "south/results/q.jsonl")] == ["s1", "s2", "s3"]
    out = run_cli(["download", "--out", "out"], cwd=tmp_path, env=cli_env(emulator))
    assert out.returncode == 0, out.stderr
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) == [
        "north",
        "north/q.jsonl",
        "south",
        "south/q.jsonl",
    ]
    assert len(north) + len(south) == 5


@FAST_JOBS
def test_a_collision_is_refused_and_nothing_is_overwritten(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """x.failed.jsonl beside x.jsonl, or --out onto the inputs: refused, files untouched."""
    write_requests(tmp_path / "q.jsonl", ["a"])
    write_requests(tmp_path / "q.failed.jsonl", ["b"])
    write_requests(tmp_path / "other.jsonl", ["c"])
    submit(emulator, tmp_path, "q.jsonl", "q.failed.jsonl", "other.jsonl")
    inputs = ["q.jsonl", "q.failed.jsonl", "other.jsonl"]
    before = [(tmp_path / name).read_bytes() for name in inputs]
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 1
    assert "error q.jsonl: refused: q.failed.jsonl would write the same file" in result.stdout
    assert "error q.failed.jsonl: refused: q.jsonl would write the same file" in result.stdout
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["other.jsonl"]
    onto_inputs = run_cli(
        ["download", "--out", ".", "--force"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert onto_inputs.returncode == 1
    assert "error other.jsonl: refused: its results would overwrite the input" in onto_inputs.stdout
    assert [(tmp_path / name).read_bytes() for name in inputs] == before
    assert "Traceback" not in result.stderr + onto_inputs.stderr


@pytest.mark.promise("failed-lines-byte-for-byte")
@WITH_ERRORS
def test_failed_requests_are_written_ready_to_submit_again(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Requests answered with an error: counted by code, their input lines in .failed.jsonl,
    and that file is accepted by submit as it is."""
    keys = [f"k{i}" for i in range(40)]
    lines = write_requests(tmp_path / "q.jsonl", list(keys))
    submit(emulator, tmp_path, "q.jsonl")
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr  # errors the service wrote are results
    job = job_of(emulator, "q.jsonl")
    erring = [i for i, key in enumerate(keys) if ERRORS.error_for(key, i, job) is not None]
    assert 5 < len(erring) < 30
    failed = tmp_path / "results" / "q.failed.jsonl"
    assert failed.read_bytes() == b"".join(lines[i] for i in erring)
    got = rows(tmp_path / "results" / "q.jsonl")
    assert [i for i, row in enumerate(got) if "error" in row] == erring
    codes = {f"{ERRORS.error_for(keys[i], i, job)['code']}" for i in erring}  # type: ignore[index]
    assert codes <= {"13", "8"}
    assert f"{len(erring)} failed (" in result.stdout
    assert "13 INTERNAL" in result.stdout or "8 RESOURCE_EXHAUSTED" in result.stdout
    assert f"-> {Path('results/q.failed.jsonl')}" in result.stdout
    again = run_cli(["submit", "results/q.failed.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert again.returncode == 0, again.stderr
    resubmitted = [b for b in emulator.state()["batches"] if "q.failed.jsonl" in b["displayName"]]
    assert [b["requestCount"] for b in resubmitted] == [len(erring)]


@pytest.mark.promise("download-exit-codes")
def test_missing_and_unknown_keys_exit_1_with_error_lines(tmp_path: Path) -> None:
    """An input request never answered and an answer for no request (the output rewritten
    on the emulator's disk): both said, exit 1, and said again by a later download."""
    config = EmulatorConfig(port=0, processing_seconds=1.0, state_dir=tmp_path / "emulator")
    work = tmp_path / "work"
    lines = write_requests(work / "q.jsonl", ["k0", "late", "k2"])
    with EmulatorThread(config) as emulator:
        submit(emulator, work, "q.jsonl")
        status = run_cli(["status"], cwd=work, env=cli_env(emulator))
        assert status.returncode == 0, status.stderr
        blob = generated_blobs(emulator, tmp_path / "emulator")["q.jsonl"]
        blob.write_bytes(blob.read_bytes().replace(b'"key": "late"', b'"key": "k1"'))
        result = run_cli(["download"], cwd=work, env=cli_env(emulator))
        skipped = run_cli(["download"], cwd=work, env=cli_env(emulator))
    assert result.returncode == 1, result.stdout
    assert "1 never answered: 'late'" in result.stdout
    assert "1 answer for no request: 'k1'" in result.stdout
    assert "incomplete 1" in result.stdout
    got = rows(work / "results" / "q.jsonl")
    assert got[1] == {"key": "late", "error": NOT_ANSWERED}
    assert [("response" in row) for row in got] == [True, False, True]
    assert (work / "results" / "q.failed.jsonl").read_bytes() == lines[1]
    assert skipped.returncode == 1  # still incomplete, as recorded
    assert "skipped q.jsonl" in skipped.stdout


@pytest.mark.promise("changed-input-no-results")
@FAST_JOBS
def test_an_input_changed_after_submission_is_said_and_its_answers_kept(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Edited after submission (a key replaced; or one character, same size): no results
    matched to lines that were never sent; what changed is said, the answers to what was
    sent are kept as raw output, exit 1; restored, it downloads (issue 17, item 6)."""
    original = write_requests(tmp_path / "q.jsonl", ["k0", "k1", "k2"])
    submit(emulator, tmp_path, "q.jsonl")
    write_requests(tmp_path / "q.jsonl", ["k0", "late", "k2"])
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 1, result.stdout
    assert "error q.jsonl: changed since it was submitted (" in result.stdout
    assert "1 answered keys are no longer in it, 1 of its requests have no answer" in result.stdout
    raw = tmp_path / "results" / "q.raw.jsonl"
    assert f"kept in {Path('results/q.raw.jsonl')}" in result.stdout
    assert sorted(r["key"] for r in rows(raw)) == ["k0", "k1", "k2"]
    assert not (tmp_path / "results" / "q.jsonl").exists()
    assert not (tmp_path / "results" / "q.failed.jsonl").exists()
    assert "results" not in read_journal(tmp_path / "job-info.jsonl")[-1]
    (tmp_path / "q.jsonl").write_bytes(b"".join(original).replace(b'"q1"', b'"Q1"'))
    same_size = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert same_size.returncode == 1
    assert "changed since it was submitted (sha256 differs)" in same_size.stdout
    (tmp_path / "q.jsonl").write_bytes(b"".join(original))
    restored = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert restored.returncode == 0, restored.stdout
    assert [r["key"] for r in rows(tmp_path / "results" / "q.jsonl")] == ["k0", "k1", "k2"]


@pytest.mark.promise("changed-input-no-results")
@FAST_JOBS
def test_a_split_input_is_compared_part_by_part(emulator: RunningEmulator, tmp_path: Path) -> None:
    """An input submitted in parts matches what each part sent; its last line changed, it
    does not (issue 17, item 6)."""
    lines = write_requests(tmp_path / "q.jsonl", ["a", "b", "c", "d", "e"])
    split = run_cli(
        ["submit", "--max-requests-per-job", "2", "q.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert split.returncode == 0, split.stderr
    finish_jobs(emulator, FAST.processing_seconds)
    assert len(emulator.state()["batches"]) == 3
    whole = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert whole.returncode == 0, whole.stdout
    (tmp_path / "q.jsonl").write_bytes(b"".join(lines[:4]) + lines[4].replace(b"q4", b"q5"))
    changed = run_cli(["download", "--force"], cwd=tmp_path, env=cli_env(emulator))
    assert changed.returncode == 1
    assert "changed since it was submitted (sha256 differs)" in changed.stdout


@FAST_JOBS
def test_keyless_inputs(emulator: RunningEmulator, tmp_path: Path) -> None:
    """A job without keys is matched by position; a keyless line among keyed ones is not."""
    write_requests(tmp_path / "plain.jsonl", [None] * 4)
    mixed = write_requests(tmp_path / "mixed.jsonl", ["a", None, "c"])
    submit(emulator, tmp_path, "plain.jsonl", "mixed.jsonl")
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 1, result.stdout
    plain = rows(tmp_path / "results" / "plain.jsonl")
    assert len(plain) == 4
    assert all(set(row) == {"response"} for row in plain)
    assert "matched by position (no keys)" in result.stdout
    got = rows(tmp_path / "results" / "mixed.jsonl")
    assert got[1] == {"error": NO_KEY}
    assert [row.get("key") for row in got] == ["a", None, "c"]
    assert (tmp_path / "results" / "mixed.failed.jsonl").read_bytes() == mixed[1]
    assert "1 without a key in a job with keys" in result.stdout


def test_malformed_output_is_reported_by_line_and_nothing_is_written(tmp_path: Path) -> None:
    """The service's output has a garbage, an array and a cut last line: exit 1, each
    named with its line number, no results file; --keep-raw keeps the output to look at."""
    config = EmulatorConfig(port=0, processing_seconds=1.0, state_dir=tmp_path / "emulator")
    work = tmp_path / "work"
    work.mkdir()
    write_jsonl(work / "q.jsonl", 4)
    with EmulatorThread(config) as emulator:
        submit(emulator, work, "q.jsonl")
        status = run_cli(["status"], cwd=work, env=cli_env(emulator))  # the output is made
        assert status.returncode == 0, status.stderr
        (output,) = [f["name"] for f in emulator.state()["files"] if f["source"] == "GENERATED"]
        blob = tmp_path / "emulator" / "blobs" / output.removeprefix("files/")
        good = blob.read_bytes().splitlines(keepends=True)
        blob.write_bytes(good[0] + b"garbage\n" + b"[1, 2]\n" + good[1] + good[2][:30])
        result = run_cli(["download"], cwd=work, env=cli_env(emulator))
        assert result.returncode == 1
        assert "3 malformed lines in files/batch-" in result.stdout
        assert ":2: not valid JSON" in result.stdout
        assert ":3: an array, not an object" in result.stdout
        assert ":5: not valid JSON" in result.stdout
        assert "ends in the middle of this line" in result.stdout
        assert sorted(p.name for p in (work / "results").iterdir()) == []
        kept = run_cli(["download", "--keep-raw"], cwd=work, env=cli_env(emulator))
        assert kept.returncode == 1
        assert (work / "results" / "q.raw.jsonl").read_bytes() == blob.read_bytes()
        assert not (work / "results" / "q.jsonl").exists()
    assert "Traceback" not in result.stderr + kept.stderr


@pytest.mark.promise("results-only-complete")
@pytest.mark.asyncio
@FAST_JOBS
async def test_a_cut_connection_leaves_nothing_that_looks_done(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every download attempt dropped: an error, no result, no temporary; the next
    download writes the results (they are not skipped as done)."""
    write_jsonl(tmp_path / "q.jsonl", 5)
    submit(emulator, tmp_path, "q.jsonl")
    emulator.set_faults("download:1:reset")
    monkeypatch.chdir(tmp_path)
    async with open_jobs(
        "job-info.jsonl", api_key=TEST_API_KEY, base_url=emulator.base_url, retry=FAST_RETRY
    ) as jobs:
        (cut,) = await download_results(jobs)
    assert cut.error is not None
    assert cut.error.startswith("download of files/batch-")
    assert "no response" in cut.error
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == []
    emulator.set_faults("")
    again = await anyio.to_thread.run_sync(
        lambda: run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    )
    assert again.returncode == 0, again.stdout
    assert "downloaded q.jsonl" in again.stdout
    assert len(rows(tmp_path / "results" / "q.jsonl")) == 5


def _small_files_only() -> None:
    """A full disk, for this process: writing past 64 KiB fails (EFBIG)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.promise("results-only-complete")
@FAST_JOBS
def test_a_full_disk_leaves_nothing_that_looks_done(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Writing fails part-way: one clear line, exit 1, no result, no temporary; a later
    download writes the results."""
    write_jsonl(tmp_path / "q.jsonl", 1000)
    submit(emulator, tmp_path, "q.jsonl")
    full = subprocess.run(
        [sys.executable, "-m", "gembatch_async", "download"],
        cwd=tmp_path,
        env=cli_env(emulator),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_small_files_only,
        check=False,
    )
    assert full.returncode == 1, full.stdout + full.stderr
    assert "File too large" in full.stdout
    assert "Traceback" not in full.stderr
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == []
    again = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert again.returncode == 0, again.stdout
    assert len(rows(tmp_path / "results" / "q.jsonl")) == 1000


def writing_results_or_done(process: subprocess.Popen[bytes], folder: Path) -> Callable[[], bool]:
    return lambda: (
        process.poll() is not None or any(".results." in name for name in leftovers(folder))
    )


def kill_while_writing_results(emulator: RunningEmulator, folder: Path) -> None:
    """Start a download and SIGKILL it while it writes the results file (retried if the
    download wins the race and finishes first)."""
    for _ in range(5):
        process = cli_popen(
            ["download", "--force"],
            cwd=folder,
            env=cli_env(emulator),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(writing_results_or_done(process, folder), timeout=60, poll=0.001)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        if process.returncode == -signal.SIGKILL:
            return
        (folder / "results" / "q.jsonl").unlink()
    raise AssertionError("the download always finished before it could be killed")


@pytest.mark.promise("results-only-complete")
@FAST_JOBS
def test_a_killed_download_is_not_skipped_later(emulator: RunningEmulator, tmp_path: Path) -> None:
    """SIGKILL while the results are written: no results file; the next download writes
    them and removes what the killed one left."""
    write_jsonl(tmp_path / "q.jsonl", 20_000)
    submit(emulator, tmp_path, "q.jsonl")
    run_cli(["status"], cwd=tmp_path, env=cli_env(emulator))  # the output is made
    kill_while_writing_results(emulator, tmp_path)
    assert leftovers(tmp_path)
    assert not (tmp_path / "results" / "q.jsonl").exists()
    again = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert again.returncode == 0, again.stdout
    assert "downloaded q.jsonl" in again.stdout
    assert len(rows(tmp_path / "results" / "q.jsonl")) == 20_000
    assert leftovers(tmp_path) == []


@pytest.mark.promise("results-only-complete")
@pytest.mark.asyncio
@FAST_JOBS
async def test_a_cancelled_download_leaves_no_temporaries(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled at any point (library use): every temporary is removed, nothing is done."""
    write_jsonl(tmp_path / "q.jsonl", 20_000)
    submit(emulator, tmp_path, "q.jsonl")
    monkeypatch.chdir(tmp_path)
    for delay in (0.05, 0.3, 0.6):
        async with open_jobs(
            "job-info.jsonl", api_key=TEST_API_KEY, base_url=emulator.base_url
        ) as jobs:
            with anyio.move_on_after(delay) as scope:
                await download_results(jobs, force=True)
        if scope.cancelled_caught:
            assert leftovers(tmp_path) == []
    assert leftovers(tmp_path) == []


@FAST_JOBS
def test_status_and_download_json_report_counts(emulator: RunningEmulator, tmp_path: Path) -> None:
    """download --json and status --json carry the counts per file."""
    write_jsonl(tmp_path / "q.jsonl", 3)
    submit(emulator, tmp_path, "q.jsonl")
    down = run_cli(["download", "--json"], cwd=tmp_path, env=cli_env(emulator))
    assert down.returncode == 0, down.stderr
    (line,) = [json.loads(text) for text in down.stdout.splitlines()]
    assert (line["requests"], line["responses"], line["failed_by_code"]) == (3, 3, {})
    assert line["output_path"] == str(Path("results/q.jsonl"))
    status = run_cli(["status", "--json"], cwd=tmp_path, env=cli_env(emulator))
    (job,) = [json.loads(text) for text in status.stdout.splitlines()]
    assert job["results"]["requests"] == 3
    assert job["results"]["responses"] == 3
    assert job["results"]["failed"] == 0
    assert read_journal(tmp_path / "job-info.jsonl")[0]["results"]["results_path"] == str(
        Path("results/q.jsonl")
    )


@FAST_JOBS
def test_results_of_an_earlier_job_are_replaced(emulator: RunningEmulator, tmp_path: Path) -> None:
    """Submitted again (--force): the old results file is not taken for the new job's."""
    write_jsonl(tmp_path / "q.jsonl", 2)
    submit(emulator, tmp_path, "q.jsonl")
    assert run_cli(["download"], cwd=tmp_path, env=cli_env(emulator)).returncode == 0
    # File times have a resolution: the new job is clearly younger than the results.
    emulator.advance_clock(1.1)
    write_jsonl(tmp_path / "q.jsonl", 3)
    again = run_cli(["submit", "--force", "q.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert again.returncode == 0, again.stderr
    finish_jobs(emulator, FAST.processing_seconds)
    result = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stdout
    assert "downloaded q.jsonl" in result.stdout
    assert len(rows(tmp_path / "results" / "q.jsonl")) == 3


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["download", "--out", "job-info.jsonl"], id="out-is-a-file"),
        pytest.param(["download", "nowhere.jsonl"], id="not-recorded"),
    ],
)
@pytest.mark.promise("download-exit-codes")
def test_download_usage_errors_are_one_line(
    emulator: RunningEmulator, tmp_path: Path, args: list[str]
) -> None:
    """A bad --out or an input not in the journal: one line, exit 2."""
    write_jsonl(tmp_path / "q.jsonl", 1)
    assert run_cli(["submit", "q.jsonl"], cwd=tmp_path, env=cli_env(emulator)).returncode == 0
    result = run_cli(args, cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")


def generated_blobs(emulator: RunningEmulator, state_dir: Path) -> dict[str, Path]:
    """Each batch output's file on the emulator's disk, by the input name in its display name."""
    batches = {b["name"]: b for b in emulator.state()["batches"]}
    found = {}
    for entry in emulator.state()["files"]:
        if entry["source"] == "GENERATED":
            owner = next(b for b in batches.values() if b.get("outputFile") == entry["name"])
            name = owner["displayName"].split(" [", 1)[0]
            found[name] = state_dir / "blobs" / entry["name"].removeprefix("files/")
    return found


def test_hostile_output_is_reported_by_line_and_the_other_files_go_on(tmp_path: Path) -> None:
    """A NaN response and a line nested 100,000 deep in one file's output (rewritten on the
    emulator's disk: a test fault, not the service's behaviour): that file is reported
    line by line, nothing of it written; the other file's results are (issue 17, item 8)."""
    config = EmulatorConfig(port=0, processing_seconds=1.0, state_dir=tmp_path / "emulator")
    work = tmp_path / "work"
    write_requests(work / "a.jsonl", ["k1", "k2", "k3"])
    write_requests(work / "b.jsonl", ["m1", "m2"])
    with EmulatorThread(config) as emulator:
        submit(emulator, work, "a.jsonl", "b.jsonl")
        status = run_cli(["status"], cwd=work, env=cli_env(emulator))  # the outputs are made
        assert status.returncode == 0, status.stderr
        blob = generated_blobs(emulator, tmp_path / "emulator")["a.jsonl"]
        deep = b'{"key": "k3", "response": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
        blob.write_bytes(b'{"key": "k1", "response": NaN}\n{"key": "k2", "response": {}}\n' + deep)
        result = run_cli(["download"], cwd=work, env=cli_env(emulator))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error a.jsonl: 2 malformed lines in files/batch-" in result.stdout
    assert ":1: not valid JSON (NaN is not JSON" in result.stdout
    assert ":3: nested too deeply to read" in result.stdout
    assert not (work / "results" / "a.jsonl").exists()
    assert [r["key"] for r in rows(work / "results" / "b.jsonl")] == ["m1", "m2"]
    assert "unexpected" not in result.stdout + result.stderr


@pytest.mark.promise("numeric-keys-never-guessed")
def test_keys_the_service_wrote_as_numbers_are_matched_only_when_unambiguous(
    tmp_path: Path,
) -> None:
    """The emulator writes keys that read as numbers as JSON numbers (numeric_keys: test
    only; reported for the real service with keys like "000000", unconfirmed: issue 16):
    each goes to its one request; 0, which both "0" and "000000" read as, is reported,
    exit 1, never given to either."""
    config = EmulatorConfig(port=0, processing_seconds=1.0, numeric_keys=True)
    work = tmp_path / "work"
    write_requests(work / "ids.jsonl", ["000001", "000002", "x"])
    write_requests(work / "clash.jsonl", ["0", "000000", "y"])
    with EmulatorThread(config) as emulator:
        submit(emulator, work, "ids.jsonl", "clash.jsonl")
        result = run_cli(["download"], cwd=work, env=cli_env(emulator))
    assert result.returncode == 1, result.stdout + result.stderr
    ids = rows(work / "results" / "ids.jsonl")
    assert [r["key"] for r in ids] == [1, 2, "x"]
    assert all("response" in r for r in ids)
    clash = rows(work / "results" / "clash.jsonl")
    assert [r.get("error", {}).get("status") for r in clash] == ["NOT_ANSWERED"] * 2 + [None]
    assert "2 answers for no request: '0 (a number)'" in result.stdout
    assert "2 of them with a key the service wrote as a number" in result.stdout


def job_of(emulator: RunningEmulator, name: str) -> str:
    """The request-errors draw of the one batch made for the input ``name`` (its display
    name starts so): what picks its failing requests."""
    (batch,) = [
        b for b in emulator.state()["batches"] if str(b["displayName"]).startswith(name + " [")
    ]
    return str(batch["requestErrorsDraw"])


def erring_lines(lines: list[bytes], keys: list[str], job: str) -> bytes:
    """The input lines of the requests --request-errors fails in ``job``."""
    return b"".join(line for i, line in enumerate(lines) if ERRORS.error_for(keys[i], i, job))


@WITH_ERRORS
def test_inputs_with_one_stem_keep_their_own_failed_requests(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """q.jsonl and q.txt, downloaded in two commands: each failed list holds its own lines
    (q.txt's is q.txt.failed.jsonl); an input named q.failed.jsonl is refused the file
    that holds q.jsonl's failed list, and gets its results with --out (issue 17, item 2)."""
    q_keys, t_keys = [f"q{i}" for i in range(30)], [f"t{i}" for i in range(30)]
    q_lines = write_requests(tmp_path / "q.jsonl", list(q_keys))
    t_lines = write_requests(tmp_path / "q.txt", list(t_keys))
    write_requests(tmp_path / "q.failed.jsonl", ["f1"])
    submit(emulator, tmp_path, "q.jsonl", "q.txt", "q.failed.jsonl")
    for name in ("q.jsonl", "q.txt"):
        result = run_cli(["download", name], cwd=tmp_path, env=cli_env(emulator))
        assert result.returncode == 0, result.stdout + result.stderr
    results = tmp_path / "results"
    q_failed = erring_lines(q_lines, q_keys, job_of(emulator, "q.jsonl"))
    assert (results / "q.failed.jsonl").read_bytes() == q_failed
    t_failed = erring_lines(t_lines, t_keys, job_of(emulator, "q.txt"))
    assert (results / "q.txt.failed.jsonl").read_bytes() == t_failed
    clash = run_cli(["download", "q.failed.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert clash.returncode == 1
    assert "refused: " in clash.stdout
    assert "belongs to the results of q.jsonl" in clash.stdout
    assert (results / "q.failed.jsonl").read_bytes() == q_failed
    aside = run_cli(
        ["download", "--out", "aside", "q.failed.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert aside.returncode == 0, aside.stdout
    assert [r["key"] for r in rows(tmp_path / "aside" / "q.failed.jsonl")] == ["f1"]
