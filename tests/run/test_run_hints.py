"""What run's lines say of failed requests (issue 20): counts agree with their nouns
("1 error", "1 failed request has"), and an input whose --resubmits rounds are used up
is named as such, with the --resubmits that sends its failed requests again (plain
--retry-failed would send nothing).

A real run against the emulator with per-request errors; the seed is chosen so that
exactly one request fails in the first job and again in its round, the way the emulator
draws them (``RequestErrors`` by each job's input bytes and earlier jobs of them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gembatch_async._events import ResultsSaved, RunSummary
from gembatch_async.cli._render import render_run_summary, render_text
from gembatch_async.emulator import EmulatorConfig, EmulatorThread
from gembatch_async.emulator._request_errors import RequestErrors, draw_of
from gembatch_async.emulator._store import sha256_wire

from ..helpers import cli_env, run_cli

SHARE = 0.3
RUN = ["run", "--retry-failed", "--interval", "0.2", "--retry-max-delay", "0.05"]


def first_draw(data: bytes) -> str:
    """The draw of the first job made from these bytes (as the emulator makes it)."""
    return draw_of(sha256_wire(hashlib.sha256(data).hexdigest()), 0)


def one_failure_twice(keys: list[str], lines: list[bytes]) -> tuple[int, int]:
    """A seed under which exactly one request fails in the first job and again in its
    round (whose input is that request's line alone), and which request."""
    for seed in range(1, 5000):
        errors = RequestErrors(SHARE, seed)
        first = first_draw(b"".join(lines))
        failed = [i for i, key in enumerate(keys) if errors.error_for(key, i, first)]
        if len(failed) == 1:
            (i,) = failed
            if errors.error_for(keys[i], 0, first_draw(lines[i])) is not None:
                return seed, i
    raise AssertionError("no seed found")  # pragma: no cover


def test_used_up_rounds_say_so_and_name_the_resubmits_that_sends_them(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(5)]
    lines = [
        json.dumps({"key": k, "request": {"contents": [{"parts": [{"text": k}]}]}}).encode() + b"\n"
        for k in keys
    ]
    (tmp_path / "q.jsonl").write_bytes(b"".join(lines))
    seed, failing = one_failure_twice(keys, lines)
    config = EmulatorConfig(port=0, processing_seconds=0.3, request_errors=SHARE, fault_seed=seed)
    with EmulatorThread(config) as emulator:
        env = cli_env(emulator)
        first = run_cli([*RUN, "q.jsonl"], cwd=tmp_path, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert len(emulator.state()["batches"]) == 2, "the job and its one round"
        out = first.stdout
        assert "(4 responses, 1 error; 1 failed request -> results/q.failed.jsonl" in out, out
        assert "; 5 requests: 4 answered, 1 failed" in out, out
        assert out.splitlines()[-1] == (
            "1 failed request has no response; its input line is in results/q.failed.jsonl; "
            "its input has used up its --resubmits rounds (1 round so far): to send it again, "
            "the same command with --retry-failed --resubmits 2"
        ), out

        # What the hint says works: --resubmits 2 sends the one request again.
        second = run_cli([*RUN, "--resubmits", "2", "q.jsonl"], cwd=tmp_path, env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        batches = emulator.state()["batches"]
        assert len(batches) == 3, second.stdout
    rows = [
        json.loads(line) for line in (tmp_path / "results" / "q.jsonl").read_text().splitlines()
    ]
    assert [row["key"] for row in rows] == keys
    assert all("response" in row for i, row in enumerate(rows) if i != failing)


def test_counts_agree_with_their_nouns() -> None:
    """One of a thing is singular, on every line that counts (one helper builds them)."""
    saved = ResultsSaved(
        "q.jsonl",
        "batches/x",
        "results/q.jsonl",
        1,
        1,
        requests=2,
        failed=1,
        failed_path="results/q.failed.jsonl",
    )
    line, _ = render_text(saved)
    assert "(1 response, 1 error; 1 failed request -> results/q.failed.jsonl)" in line
    many = ResultsSaved("q.jsonl", "batches/x", "results/q.jsonl", 2, 0, requests=2)
    assert "(2 responses, 0 errors)" in render_text(many)[0]
    summary = RunSummary(
        0,
        1,
        0,
        1,
        1.0,
        requests=1,
        answered=0,
        failed_requests=1,
        failed_paths=("results/q.failed.jsonl",),
    )
    text = render_run_summary(summary)
    assert "; 1 request: 0 answered, 1 failed" in text
    assert text.splitlines()[-1] == (
        "1 failed request has no response; its input line is in results/q.failed.jsonl; "
        "to send only it again: the same command with --retry-failed "
        "(each input gets --resubmits rounds, default 1)"
    )
