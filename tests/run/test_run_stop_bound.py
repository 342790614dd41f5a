"""Issue 17 item 9: run's first Ctrl-C ends within the README's bound (about 2 x --grace),
whatever the server stalls: the watcher's downloads and upload deletes too."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from gembatch_async.emulator import RunningEmulator

from ..helpers import cli_env, run_cli, wait_until, write_jsonl
from ..zygote import cli_popen

GRACE = 2.0
#: Start-up, interpreter exit and a loaded machine: generous, but far below a stall.
SLACK = 5.0
STALL = 40.0


@pytest.mark.parametrize(
    ("command", "endpoint"),
    [
        pytest.param("run", "download", id="run-download"),
        pytest.param("run", "delete", id="run-delete"),
        pytest.param("run", "get", id="run-model-check"),
        pytest.param("submit", "get", id="submit-model-check"),
    ],
)
@pytest.mark.promise("run-stop-bound")
def test_stop_is_bounded_whatever_the_server_stalls(
    emulator: RunningEmulator, tmp_path: Path, command: str, endpoint: str
) -> None:
    """The server holds a result download, the upload delete after it, or the model
    check for 40 s; SIGINT with --grace 2 ends the command within 2 x grace (+ slack),
    exit 130, and the next run finishes the file."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    emulator.set_faults(f"{endpoint}:1:slow={STALL}")
    args = [command, "--grace", str(GRACE), "--retry-attempts", "1", "a.jsonl"]
    if command == "run":
        args[1:1] = ["--interval", "0.2"]
    process = cli_popen(
        args,
        cwd=tmp_path,
        env=cli_env(emulator),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: emulator.state()["requests"][endpoint]["count"] >= 1, timeout=60)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=STALL + 30)
    finally:
        process.kill()
    elapsed = time.monotonic() - started
    print(f"{endpoint}: stopped in {elapsed:.1f}s")
    assert elapsed < 2 * GRACE + SLACK, f"took {elapsed:.1f}s\n{out}{err}"
    assert process.returncode == 130, out + err
    assert "unexpected" not in out + err
    emulator.set_faults("")
    rerun = run_cli(args, cwd=tmp_path, env=cli_env(emulator), timeout=60)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert command == "submit" or (tmp_path / "results" / "a.jsonl").exists()
