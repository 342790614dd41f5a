"""The emulator from the command line: tuned behind --emulator, and the standalone server
saying how to point the tool and the SDK at it (issue 19, item 5)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

from google import genai

from gembatch_async.emulator import EmulatorConfig, EmulatorThread

from ..helpers import cli_env, make_inputs, read_journal, run_cli, write_jsonl
from ..zygote import cli_popen


def test_emulator_processing_seconds_tunes_the_built_in_emulator(tmp_path: Path) -> None:
    """Jobs take --emulator-processing-seconds, not the fixed 30 s."""
    paths = make_inputs(tmp_path, 2)
    started = time.monotonic()
    result = run_cli(
        ["--emulator", "--emulator-processing-seconds", "0.5", "run", "--interval", "0.2"]
        + [p.name for p in paths],
        cwd=tmp_path,
        env=cli_env(None),
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 20, f"run took {elapsed:.1f} s: the 30 s default was used"
    assert len(read_journal(tmp_path / "job-info.jsonl")) >= len(paths)
    assert sorted(r.name for r in (tmp_path / "results").glob("*.jsonl")) == sorted(
        p.name for p in paths
    )


def test_emulator_processing_seconds_refuses_a_negative_number(tmp_path: Path) -> None:
    result = run_cli(
        ["--emulator", "--emulator-processing-seconds", "-1", "status"],
        cwd=tmp_path,
        env=cli_env(None),
    )
    assert result.returncode == 2
    assert "--emulator-processing-seconds" in result.stderr


def _stderr_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """The process's stderr lines up to one containing ``marker`` (read on a thread, so a
    server that never prints it fails the test instead of hanging it)."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                seen.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert seen.wait(timeout), f"no line with {marker!r} on stderr: {lines}"
    return list(lines)


def test_standalone_emulator_says_how_to_point_the_tool_and_the_sdk_at_it() -> None:
    """The printed export line and SDK snippet work as printed, with the real SDK."""
    env = cli_env(None)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = cli_popen(
        ["emulator", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _stderr_until(proc, "genai.Client(", timeout=20)
        exports = [line for line in lines if line.strip().startswith("export ")]
        assert exports, lines
        found = re.search(
            r"GOOGLE_GEMINI_BASE_URL=(http://127\.0\.0\.1:\d+) GEMINI_API_KEY=(\S+)", exports[0]
        )
        assert found, exports
        base_url, key = found.groups()
        snippet = [line for line in lines if "genai.Client(" in line]
        assert snippet, lines
        assert f'"base_url": "{base_url}"' in snippet[0]
        client = genai.Client(api_key=key, http_options={"base_url": base_url})
        models = [m.name for m in client.models.list()]
        assert models, "the SDK pointed at the printed URL listed no models"
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_request_counts_move_while_a_job_runs(tmp_path: Path) -> None:
    """status shows requests done growing during RUNNING, as the service reports them
    (python-genai#1323), not only at the end."""
    write_jsonl(tmp_path / "big.jsonl", 40)
    config = EmulatorConfig(port=0, processing_seconds=12.0)
    with EmulatorThread(config) as emu:
        env = cli_env(emu)
        submitted = run_cli(["submit", "big.jsonl"], cwd=tmp_path, env=env)
        assert submitted.returncode == 0, submitted.stderr
        seen: list[tuple[str, int, int]] = []
        # The emulator's clock steps through the 12 s job, 1.5 s at a time (no waiting).
        for _ in range(9):
            result = run_cli(["status", "--json", "big.jsonl"], cwd=tmp_path, env=env)
            assert result.returncode == 0, result.stderr
            job = json.loads(result.stdout.splitlines()[0])
            stats = job["stats"] or {}
            seen.append((job["state"], stats.get("succeeded", 0), stats.get("pending", 0)))
            if job["state"] == "JOB_STATE_SUCCEEDED":
                break
            emu.advance_clock(1.5)
    running = [(done, pending) for state, done, pending in seen if state == "JOB_STATE_RUNNING"]
    assert any(0 < done < 40 for done, _ in running), seen
    assert all(done + pending == 40 for done, pending in running), seen
    dones = [done for done, _ in running]
    assert dones == sorted(dones), seen
    assert seen[-1][:2] == ("JOB_STATE_SUCCEEDED", 40), seen


def test_processing_seconds_env_tunes_the_built_in_emulator(tmp_path: Path) -> None:
    """$GEMBATCH_EMULATOR_PROCESSING_SECONDS sets --emulator's job duration, no flag needed."""
    paths = make_inputs(tmp_path, 1)
    started = time.monotonic()
    result = run_cli(
        ["--emulator", "run", "--interval", "0.2", paths[0].name],
        cwd=tmp_path,
        env=cli_env(None, GEMBATCH_EMULATOR_PROCESSING_SECONDS="0.5"),
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 20, f"run took {elapsed:.1f} s: the 30 s default was used"
    assert (tmp_path / "results" / paths[0].name).exists()


def test_processing_seconds_env_tunes_the_standalone_emulator(tmp_path: Path) -> None:
    """The emulator command reads the same variable: a job it serves ends in about 0.5 s."""
    env = cli_env(None, GEMBATCH_EMULATOR_PROCESSING_SECONDS="0.5")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = cli_popen(
        ["emulator", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
        assert base_url, "the emulator printed no URL"
        paths = make_inputs(tmp_path, 1)
        started = time.monotonic()
        result = run_cli(
            ["run", "--interval", "0.2", paths[0].name],
            cwd=tmp_path,
            env=cli_env(None, GEMINI_API_KEY="any-key", GOOGLE_GEMINI_BASE_URL=base_url[0]),
            timeout=60,
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert elapsed < 20, f"run took {elapsed:.1f} s: the 30 s default was used"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_processing_seconds_env_is_checked(tmp_path: Path) -> None:
    """A bad value in the variable is a usage error naming the option, not a traceback."""
    result = run_cli(
        ["--emulator", "status"],
        cwd=tmp_path,
        env=cli_env(None, GEMBATCH_EMULATOR_PROCESSING_SECONDS="soon"),
    )
    assert result.returncode == 2
    assert "--emulator-processing-seconds" in result.stderr
    assert "Traceback" not in result.stderr
