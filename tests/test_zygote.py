"""The zygote (tests/zygote.py): its children are what ``python -m`` would start.

Each test runs a probe module (written into the test's folder, so ``python -m probe``
finds it there as a fresh interpreter would) through ``python_m_popen``, and where it
can compares the child with a fresh interpreter's. Under GEMBATCH_TEST_FRESH_PROCESSES=1
every child is fresh and the tests of the zygote itself skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .helpers import cli_env, wait_until
from .zygote import ZygotePopen, cli_popen, cli_run, fresh_processes, python_m_popen, zygote_pid

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent(
    """
    import json, os, signal, sys, time

    def report(path):
        listed = [int(name) for name in os.listdir("/proc/self/fd")]
        open_fds = []
        for fd in listed:  # the listing's own fd is closed by now
            try:
                os.fstat(fd)
            except OSError:
                continue
            open_fds.append(fd)
        handlers = {
            name: repr(signal.getsignal(getattr(signal, name)))
            for name in ("SIGINT", "SIGTERM", "SIGPIPE", "SIGXFSZ", "SIGCHLD", "SIGHUP")
        }
        streams = {
            name: [s.encoding, s.errors, s.line_buffering, s.write_through, s.isatty()]
            for name, s in (("stdin", sys.stdin), ("stdout", sys.stdout), ("stderr", sys.stderr))
        }
        cli = sys.modules.get("gembatch_async.cli")
        facts = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "argv": sys.argv,
            "path0": sys.path[0],
            "main": sys.modules["__main__"].__file__,
            "fds": sorted(open_fds),
            "signals": handlers,
            "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "streams": streams,
            "std_is_dunder": [sys.stdout is sys.__stdout__, sys.stderr is sys.__stderr__],
            "leaked": getattr(cli, "LEAKED", None),
        }
        with open(path, "w") as out:
            json.dump(facts, out)

    command, *rest = sys.argv[1:]
    if command == "report":
        report(rest[0])
    elif command == "exit":
        sys.exit(int(rest[0]) if rest[0].isdigit() else rest[0])
    elif command == "raise":
        raise ValueError("probe failed")
    elif command == "echo":
        text = sys.stdin.read()
        print(text.upper(), end="")
        print("to stderr", file=sys.stderr)
    elif command == "leak":
        import gembatch_async.cli
        gembatch_async.cli.LEAKED = True
        os.environ["ZYGOTE_LEAK"] = "1"
        os.chdir("/")
    elif command == "lock":
        with open(rest[0], "r+b") as handle:
            try:
                import fcntl
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                print("locked")
            except OSError:
                print("busy")
    elif command == "sleep":
        print("ready", flush=True)
        time.sleep(60)
    """
)

needs_zygote = pytest.mark.skipif(
    fresh_processes(), reason="GEMBATCH_TEST_FRESH_PROCESSES=1: every child is fresh"
)


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def probe(folder: Path, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
    kwargs.setdefault("env", cli_env(None))
    return python_m_popen("probe", list(args), cwd=folder, **kwargs)


def report_of(folder: Path, name: str = "report.json", **kwargs: Any) -> dict[str, Any]:
    process = probe(folder, "report", str(folder / name), **kwargs)
    assert process.wait(timeout=30) == 0
    facts: dict[str, Any] = json.loads((folder / name).read_text())
    return facts


def fresh_report_of(folder: Path, name: str = "report.json", **kwargs: Any) -> dict[str, Any]:
    """The same probe in a fresh interpreter: what the zygote's child must match."""
    kwargs.setdefault("env", cli_env(None))
    command = [sys.executable, "-m", "probe", "report", str(folder / name)]
    assert subprocess.run(command, cwd=folder, check=False, timeout=30, **kwargs).returncode == 0
    facts: dict[str, Any] = json.loads((folder / name).read_text())
    return facts


#: What a child's report says about how its interpreter was set up.
SETUP = ("argv", "path0", "main", "fds", "signals", "blocked", "streams", "std_is_dunder")


def setup_of(facts: dict[str, Any]) -> dict[str, Any]:
    return {name: facts[name] for name in SETUP}


@needs_zygote
def test_a_child_is_set_up_as_a_fresh_interpreter_is(probe_dir: Path) -> None:
    """stdio encodings, error handlers and buffering, signal dispositions and mask, open
    fds (0, 1, 2 only), argv, sys.path[0] and __main__: the fresh interpreter's."""
    # Another child running meanwhile: the zygote holds its connection and pidfd.
    other = probe(probe_dir, "sleep", stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        assert other.stdout.readline() == "ready\n"
        child = report_of(probe_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        other.kill()
        other.communicate()
    fresh = fresh_report_of(probe_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert setup_of(child) == setup_of(fresh)
    assert child["fds"] == [0, 1, 2]
    assert child["argv"][0] == str(probe_dir / "probe.py")


@needs_zygote
def test_stdout_on_a_terminal_is_line_buffered_as_in_a_fresh_interpreter(probe_dir: Path) -> None:
    """A pseudo-terminal as stdin and stdout: isatty and (buffered) line buffering, as a
    fresh child gets them (the live view draws only on a terminal)."""
    primary, secondary = pty.openpty()
    try:
        child = report_of(probe_dir, stdin=secondary, stdout=secondary)
        fresh = fresh_report_of(probe_dir, stdin=secondary, stdout=secondary)
    finally:
        os.close(secondary)
        os.close(primary)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))  # then write-through instead
    assert child["streams"]["stdout"][2:] == [not unbuffered, unbuffered, True]
    assert child["streams"]["stdin"][2:] == [not unbuffered, unbuffered, True]
    assert setup_of(child) == setup_of(fresh)


@pytest.mark.parametrize(
    ("args", "code", "stderr"),
    [
        (["exit", "0"], 0, ""),
        (["exit", "3"], 3, ""),
        (["exit", "text"], 1, "text\n"),
        (["raise"], 1, "ValueError: probe failed\n"),
        (["echo"], 0, "to stderr\n"),
    ],
)
def test_exit_codes_and_stderr_are_those_of_python_m(
    probe_dir: Path, args: list[str], code: int, stderr: str
) -> None:
    """sys.exit(N), sys.exit(text), an uncaught exception (traceback), a normal end."""
    process = probe(probe_dir, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = process.communicate(timeout=30)
    assert process.returncode == code
    assert err.endswith(stderr)
    assert ("Traceback (most recent call last)" in err) == (args == ["raise"])


def test_the_cli_runs_as_python_m_gembatch_async_does(tmp_path: Path) -> None:
    """The CLI's own exit codes and output through cli_run."""
    env = cli_env(None)
    missing = cli_run(["show", "nothing.jsonl"], cwd=tmp_path, env=env, capture_output=True)
    assert (missing.returncode, missing.stdout) == (2, b"")
    assert missing.stderr == b"error: nothing.jsonl: No such file or directory\n"
    version = cli_run(["--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert version.returncode == 0
    assert version.stdout.startswith("gembatch-async ")
    usage = cli_run(["--no-such-flag"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: gembatch-async")


def test_stdin_stdout_and_stderr_are_the_callers_pipes(probe_dir: Path) -> None:
    process = probe(
        probe_dir,
        "echo",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate("some input\n", timeout=30)
    assert (process.returncode, out, err) == (0, "SOME INPUT\n", "to stderr\n")


@pytest.mark.parametrize(
    ("signum", "returncode"),
    [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, -signal.SIGTERM), (signal.SIGKILL, -9)],
    ids=["int", "term", "kill"],
)
def test_a_signal_ends_a_child_as_it_ends_a_fresh_one(
    probe_dir: Path, signum: int, returncode: int
) -> None:
    """returncode -signum; an uncaught KeyboardInterrupt ends the child by SIGINT,
    after its traceback, as CPython does."""
    process = probe(probe_dir, "sleep", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == returncode
    assert ("KeyboardInterrupt" in err) == (signum == signal.SIGINT)


def test_wait_times_out_and_kill_ends_the_child(probe_dir: Path) -> None:
    process = probe(probe_dir, "sleep", stdout=subprocess.DEVNULL)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    assert process.poll() is None
    process.kill()
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert process.poll() == -signal.SIGKILL


def test_two_children_each_have_their_own_folder_and_environment(tmp_path: Path) -> None:
    """Started side by side, each sees only the cwd and environment it was given."""
    folders = [tmp_path / "a", tmp_path / "b"]
    running = []
    for index, folder in enumerate(folders):
        folder.mkdir()
        (folder / "probe.py").write_text(PROBE)
        running.append(probe(folder, "report", str(folder / "r.json"), env=_env_of(index)))
    for process in running:
        assert process.wait(timeout=30) == 0
    for index, folder in enumerate(folders):
        facts = json.loads((folder / "r.json").read_text())
        assert facts["cwd"] == str(folder)
        assert facts["env"] == _env_of(index)
        assert facts["path0"] == str(folder)


def _env_of(index: int) -> dict[str, str]:
    """An environment of its own: a variable more, and HOME (which the zygote has) less."""
    env = cli_env(None, ZYGOTE_TEST=str(index))
    del env["HOME"]
    return env


def test_what_a_child_changes_does_not_reach_the_next_child(probe_dir: Path) -> None:
    """A child sets module state, an environment variable and its folder: the next
    child starts clean."""
    assert probe(probe_dir, "leak").wait(timeout=30) == 0
    facts = report_of(probe_dir)
    assert facts["leaked"] is None
    assert "ZYGOTE_LEAK" not in facts["env"]
    assert facts["cwd"] == str(probe_dir)


def test_a_child_is_a_process_of_its_own(probe_dir: Path) -> None:
    """Another pid than the test process's: the POSIX record lock this process holds
    keeps the child out (per-process locks, as the journal's)."""
    facts = report_of(probe_dir)
    assert facts["pid"] != os.getpid()
    locked = probe_dir / "locked"
    locked.write_bytes(b"x")
    with locked.open("r+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        busy = probe(probe_dir, "lock", str(locked), stdout=subprocess.PIPE, text=True)
        assert busy.communicate(timeout=30)[0] == "busy\n"
    free = probe(probe_dir, "lock", str(locked), stdout=subprocess.PIPE, text=True)
    assert free.communicate(timeout=30)[0] == "locked\n"


@needs_zygote
def test_children_are_forked_by_the_zygote(probe_dir: Path) -> None:
    process = probe(probe_dir, "report", str(probe_dir / "r.json"))
    assert isinstance(process, ZygotePopen)
    assert process.wait(timeout=30) == 0
    facts = json.loads((probe_dir / "r.json").read_text())
    assert facts["ppid"] == zygote_pid() != os.getpid()


def test_fresh_interpreters_where_the_zygote_cannot_stand_in(
    probe_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other interpreter settings (an encoding), a preexec_fn, or
    GEMBATCH_TEST_FRESH_PROCESSES=1: a real fresh process."""
    other_encoding = cli_env(None, PYTHONIOENCODING="latin-1")
    for kwargs in ({"env": other_encoding}, {"preexec_fn": os.getpid}):
        process = probe(probe_dir, "exit", "0", **kwargs)
        assert not isinstance(process, ZygotePopen)
        assert process.wait(timeout=30) == 0
    monkeypatch.setenv("GEMBATCH_TEST_FRESH_PROCESSES", "1")
    process = cli_popen(["--version"], stdout=subprocess.DEVNULL, env=cli_env(None))
    assert not isinstance(process, ZygotePopen)
    assert process.wait(timeout=30) == 0


ABANDON = """
import os, subprocess, sys
from tests.zygote import _Zygote, python_m_popen, zygote_pid
child = python_m_popen("probe", ["sleep"], cwd=sys.argv[1], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(zygote_pid(), child.pid, _Zygote._address, flush=True)
os._exit(0)  # no atexit: as if the test worker were killed
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"  # ended, not yet reaped by whoever adopted it


@needs_zygote
def test_the_zygote_and_its_children_end_with_the_test_process(probe_dir: Path) -> None:
    """The test process dies without stopping its zygote: the zygote sees its lifeline
    close, kills the child still running, and ends."""
    result = subprocess.run(
        [sys.executable, "-c", ABANDON, str(probe_dir)],
        cwd=REPO,
        env={**cli_env(None), "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    zygote, child, address = result.stdout.split()
    wait_until(lambda: _gone(int(child)) and _gone(int(zygote)), timeout=20)
    assert not Path(address).parent.exists(), "the zygote removes its socket's folder"


@needs_zygote
def test_a_dead_zygote_is_started_again(probe_dir: Path) -> None:
    """The zygote killed between two children: the next child gets a new zygote."""
    assert probe(probe_dir, "exit", "0").wait(timeout=30) == 0
    first = zygote_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: _gone(first), timeout=20)
    process = probe(probe_dir, "exit", "4")
    assert process.wait(timeout=30) == 4
    assert zygote_pid() not in (None, first)
