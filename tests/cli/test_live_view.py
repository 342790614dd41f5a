"""The live view of `run` on a small terminal, through a real pseudo-terminal (issue 19, item 4)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from gembatch_async.emulator import EmulatorConfig, EmulatorThread

from ..helpers import cli_env, make_inputs
from ..zygote import cli_popen

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The overall bar: 10 to 40 cells of bar characters (it gives way to its text), then the text.
BAR_LINE = re.compile(r"^[━╸╺]{10,40} \S", re.MULTILINE)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _screen_text(raw: bytes) -> str:
    """What was drawn, escape sequences removed, one drawn line per line."""
    return ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "\n")


def _read_for(fd: int, seconds: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_overall_bar_stays_on_an_80x24_screen_with_more_files_than_lines(tmp_path: Path) -> None:
    """With 30 files and retry warnings on 24 lines, the bar and the latest warnings are
    drawn while the jobs run (rows cut to fit), not only at the end."""
    paths = make_inputs(tmp_path, 30)
    with EmulatorThread(
        EmulatorConfig(
            port=0, processing_seconds=60.0, faults="upload:0.3:503,get:0.3:503", fault_seed=7
        )
    ) as emu:
        env = cli_env(emu, COLUMNS="80", LINES="24", TERM="xterm-256color")
        env["PYTHONPATH"] = str(REPO_ROOT)
        primary, secondary = pty.openpty()
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        proc = cli_popen(
            ["run", "--interval", "1", "-c", "30"] + [p.name for p in paths],
            cwd=tmp_path,
            env=env,
            stdin=secondary,
            stdout=secondary,
            stderr=subprocess.DEVNULL,
        )
        os.close(secondary)
        try:
            during = _read_for(primary, 25)
        finally:
            proc.send_signal(signal.SIGINT)
            _read_for(primary, 15)
            proc.wait(timeout=30)
            os.close(primary)
    # Each redraw starts with the table's header; the last one drawn shows all 30 files.
    last_frame = re.split(r"^file\s", _screen_text(during), flags=re.MULTILINE)[-1]
    assert "more files" in last_frame, last_frame  # more files than lines: rows were cut
    assert BAR_LINE.search(last_frame), last_frame
    assert re.search(r"^\d+m\d\ds ago: retrying ", last_frame, re.MULTILINE), (
        last_frame
    )  # the warnings, with their age
