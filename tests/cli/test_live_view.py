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
from collections.abc import Callable
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


#: A retry warning with its age, as the live view lists the latest ones.
WARNING_LINE = re.compile(r"^\d+m\d\ds ago: retrying ", re.MULTILINE)
#: The last frame drawn lies within this many bytes at the end of the output (a frame of
#: 80x24 cells with its escape sequences is a few KiB).
FRAME_TAIL = 32 * 1024


def _last_frame(raw: bytes) -> str:
    """The last frame drawn: each redraw starts with the table's header."""
    return re.split(r"^file\s", _screen_text(raw), flags=re.MULTILINE)[-1]


def _shows_everything(raw: bytes) -> bool:
    """The last frame drawn (whole, with its header) has the cut rows' note, the overall
    bar and a warning."""
    frames = re.split(r"^file\s", _screen_text(raw[-FRAME_TAIL:]), flags=re.MULTILINE)
    if len(frames) < 2:
        return False
    frame = frames[-1]
    return "more files" in frame and bool(BAR_LINE.search(frame) and WARNING_LINE.search(frame))


def _read_until(fd: int, seconds: float, done: Callable[[bytes], bool] | None = None) -> bytes:
    """What the child draws, until ``done`` holds for it, the child closes the terminal,
    or ``seconds`` pass."""
    drawn = bytearray()
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
        drawn += chunk
        if done is not None and done(bytes(drawn)):
            break
    return bytes(drawn)


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
            # Read while the jobs run (60 s each) until a frame shows everything asserted.
            during = _read_until(primary, 60, _shows_everything)
        finally:
            # The layout is the point, not the stop: a second Ctrl-C exits at once
            # (the first alone lets files in flight settle for up to 2 x grace, 30 s).
            proc.send_signal(signal.SIGINT)
            _read_until(primary, 1)
            proc.send_signal(signal.SIGINT)
            # Drain the terminal until the child has exited: a terminal nobody reads
            # blocks its writes, and the child would never exit (this test once failed
            # so under load, when it stopped reading 15 s after the first Ctrl-C).
            _read_until(primary, 45)
            proc.wait(timeout=15)
            os.close(primary)
    # The last frame drawn while the jobs ran shows all 30 files.
    last_frame = _last_frame(during)
    assert "more files" in last_frame, last_frame  # more files than lines: rows were cut
    assert BAR_LINE.search(last_frame), last_frame
    assert WARNING_LINE.search(last_frame), last_frame  # the warnings, with their age
