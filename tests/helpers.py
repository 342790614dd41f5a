"""Small shared helpers for tests: input files, the CLI (in process or not), server truth."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gembatch_async import RetrySettings
from gembatch_async.emulator import RunningEmulator

from .cli_inprocess import can_run_in_process, run_cli_in_process
from .zygote import cli_run

TEST_API_KEY = "test-key-7d1c0a5e"


def _sdk_httpx() -> Any:
    """The httpx the SDK uses: httpx2 with google-genai 3.x, httpx with 2.x (Python 3.10)."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:  # pragma: no cover - Python 3.10
        return importlib.import_module("httpx")


sdk_httpx = _sdk_httpx()
#: Quick retries: the emulator's faults are the scenario, not the wait.
FAST_RETRY = RetrySettings(
    attempts=8,
    total_seconds=30,
    initial_delay=0.01,
    max_delay=0.05,
    retry_after_cap=0.05,
    jitter=0.01,
)
LIVE_STATES = {"BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"}


def write_jsonl(path: Path, lines: int, *, tag: str = "") -> Path:
    """A valid batch input with ``lines`` keyed requests."""
    with path.open("w") as handle:
        for i in range(lines):
            request = {"contents": [{"parts": [{"text": f"question {i} {tag}"}]}]}
            handle.write(json.dumps({"key": f"k{i}", "request": request}) + "\n")
    return path


def make_inputs(folder: Path, count: int, lines: int = 3, prefix: str = "in") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_jsonl(folder / f"{prefix}-{i:03d}.jsonl", lines, tag=str(i)) for i in range(count)
    ]


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli_env(emulator: RunningEmulator | None, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess pointed at the emulator."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_", "GEMBATCH_"))
    }
    if emulator is not None:
        env["GEMINI_API_KEY"] = TEST_API_KEY
        env["GOOGLE_GEMINI_BASE_URL"] = emulator.base_url
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 120,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``gembatch-async ARGS``: in this process (see tests/cli_inprocess.py), or in a real
    subprocess when ``process`` is true or this thread cannot run the CLI (not the main
    thread, or an event loop is running in it). The subprocess is a fork of the zygote
    (tests/zygote.py), without the ~1.6 CPU s of imports of a fresh one: use it where a
    process is the point (signals, kills) or the test process holds journal locks while
    the CLI runs (POSIX record locks are per process); for start-up, the entry point or
    memory, ``run_cli_process(..., fresh=True)`` or a Popen of your own."""
    if process or not can_run_in_process():
        return run_cli_process(args, cwd=cwd, env=env, timeout=timeout)
    return run_cli_in_process(args, cwd=cwd, env=env)


def run_cli_process(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 120,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``gembatch-async ARGS`` in a real subprocess: forked from the zygote
    (tests/zygote.py: no second of imports), or a fresh interpreter when ``fresh``
    (the entry point, start-up)."""
    if fresh:
        return subprocess.run(
            [sys.executable, "-m", "gembatch_async", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    return cli_run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def wait_until(condition: Callable[[], bool], timeout: float = 30, poll: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(poll)


def finish_jobs(emulator: RunningEmulator, seconds: float) -> None:
    """Every job on the emulator succeeds now: its clock moves ``seconds`` (the jobs'
    processing time) forward, instead of the test waiting them out."""
    emulator.advance_clock(seconds)
    states = [b["state"] for b in emulator.state()["batches"]]
    assert all(state == "BATCH_STATE_SUCCEEDED" for state in states), states


def creates_reached(emulator: RunningEmulator, count: int) -> Callable[[], bool]:
    """A condition: the emulator has seen at least ``count`` batch creates."""
    return lambda: emulator.state()["requests"]["create"]["count"] >= count


def quiet(emulator: RunningEmulator) -> Callable[[], bool]:
    """A condition: no API request is still being answered (a killed client's create
    has landed, or failed, on the emulator)."""
    return lambda: all(int(v["inFlight"]) == 0 for v in emulator.state()["requests"].values())


def request_total(state: dict[str, Any]) -> int:
    return sum(int(v["count"]) for v in state["requests"].values())


def assert_converged(
    state: dict[str, Any], journal: list[dict[str, Any]], inputs: Sequence[str]
) -> None:
    """Server truth and the journal agree: one live batch per input, no stray uploads."""
    batches = [b for b in state["batches"] if b["state"] in LIVE_STATES]
    by_input: dict[str, list[dict[str, Any]]] = {}
    for batch in batches:
        path = batch["displayName"].rsplit(" [gba-", 1)[0]
        by_input.setdefault(path, []).append(batch)
    duplicates = {k: [b["name"] for b in v] for k, v in by_input.items() if len(v) > 1}
    assert not duplicates, f"inputs with more than one live batch: {duplicates}"
    assert sorted(by_input) == sorted(inputs), "every input has exactly one live batch"
    used = {b["inputFile"] for b in state["batches"]}
    stray = [
        f["name"] for f in state["files"] if f["source"] == "UPLOADED" and f["name"] not in used
    ]
    assert not stray, f"uploads no batch uses: {stray}"
    latest = {line["input_file"]: line["batch"]["name"] for line in journal}
    server = {path: found[0]["name"] for path, found in by_input.items()}
    assert latest == server, "the journal records exactly the server's batches"
