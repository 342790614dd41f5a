"""CLI processes for tests without the ~1.6 CPU s of imports each: forks of a zygote.

A test that needs a real CLI process (to signal or kill it, to hold journal locks
against it, to read its exit code) but not a fresh interpreter starts it with
``cli_popen(ARGS, ...)`` (a ``subprocess.Popen``) or ``cli_run(ARGS, ...)`` (a
``subprocess.run``): ``gembatch-async ARGS`` as ``python -m gembatch_async ARGS``
would run it, but forked from a per-worker process that imported the CLI and the SDK
once (tests/_zygote_server.py). The handle is a real ``subprocess.Popen``: pid, poll,
wait(timeout), send_signal/terminate/kill, communicate, pipes and text mode behave as
for any child; only the start and the wait go through the zygote, which is the
child's parent and reports its exit status (``-signum`` for a signal, as Popen does).

A fresh ``python -m gembatch_async`` is used instead when the zygote cannot stand in
for one: ``GEMBATCH_TEST_FRESH_PROCESSES=1`` (every site, to check nothing depends on
the zygote), an environment whose interpreter settings (``PYTHON*``, the locale
variables) differ from the zygote's, or Popen options a fork cannot honour
(``preexec_fn``, ``start_new_session``, ``pass_fds``, ...). Where a fresh interpreter
is the point (start-up, --version, memory, shell pipelines) call Popen yourself.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

FRESH_ENV = "GEMBATCH_TEST_FRESH_PROCESSES"
_SERVER = Path(__file__).with_name("_zygote_server.py")
_HEADER = struct.Struct(">I")
#: Environment variables the interpreter reads at start-up (encodings, paths, flags):
#: the zygote's must equal the child's, or the child would differ from a fresh one.
_LOCALE = ("LC_ALL", "LC_CTYPE", "LANG")
#: Popen options only a fresh child honours (their defaults are fine).
_FRESH_ONLY = {
    "preexec_fn": None,
    "start_new_session": False,
    "process_group": None,
    "pass_fds": (),
    "user": None,
    "group": None,
    "extra_groups": None,
    "umask": -1,
    "executable": None,
    "shell": False,
    "close_fds": True,
    "restore_signals": True,
}


def interpreter_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``env`` a Python reads as it starts (before any code of ours runs)."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k in _LOCALE}


def fresh_processes() -> bool:
    return os.environ.get(FRESH_ENV, "") not in ("", "0")


def cli_popen(args: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen([python, -m, gembatch_async, *ARGS], **kwargs)``, forked from
    the zygote when it can stand in for a fresh interpreter."""
    return python_m_popen("gembatch_async", args, **kwargs)


def python_m_popen(
    module: str, args: Sequence[str | os.PathLike[str]], **kwargs: Any
) -> subprocess.Popen[Any]:
    """``python -m MODULE ARGS`` (the zygote's tests run modules of their own)."""
    command = [sys.executable, "-m", module, *(os.fspath(arg) for arg in args)]
    if not _zygote_can_start(kwargs.get("env"), kwargs):
        return subprocess.Popen(command, **kwargs)
    return ZygotePopen(command, **kwargs)


def cli_run(
    args: Sequence[str | os.PathLike[str]],
    *,
    input: Any = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` of ``gembatch-async ARGS`` (see ``cli_popen``)."""
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with cli_popen(args, **kwargs) as process:
        try:
            out, err = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            exc.stdout, exc.stderr = process.communicate()
            raise
        except BaseException:
            process.kill()
            raise
        code = process.poll()
        assert code is not None
    if check and code:
        raise subprocess.CalledProcessError(code, process.args, out, err)
    return subprocess.CompletedProcess(process.args, code, out, err)


def _zygote_can_start(env: Mapping[str, str] | None, kwargs: Mapping[str, Any]) -> bool:
    if fresh_processes() or sys.platform != "linux":
        return False
    if any(kwargs.get(name, default) != default for name, default in _FRESH_ONLY.items()):
        return False
    child_env = os.environ if env is None else env
    return interpreter_settings(child_env) == _Zygote.settings()


class ZygotePopen(subprocess.Popen[Any]):
    """A Popen whose child is forked by the zygote: the start and the wait go through
    the zygote's connection (the zygote is the child's parent); pipes, signals,
    communicate and timeouts are Popen's own."""

    _connection: socket.socket | None = None
    _inbox = b""

    # Called by Popen.__init__ (POSIX) with the child's ends of the pipes (-1: inherit).
    def _execute_child(
        self,
        args: list[str],
        executable: object,
        preexec_fn: object,
        close_fds: object,
        pass_fds: object,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
        startupinfo: object,
        creationflags: object,
        shell: object,
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        *rest: object,
    ) -> None:
        request = {
            "module": args[2],  # [python, -m, MODULE, *ARGV]
            "argv": list(args[3:]),
            "cwd": os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd()),
            "env": dict(os.environ if env is None else env),
        }
        stdio = [p2cread, c2pwrite, errwrite]
        fds = [fd if fd != -1 else target for target, fd in enumerate(stdio)]
        try:
            connection = _Zygote.connect()
            try:
                data = json.dumps(request).encode()
                socket.send_fds(connection, [_HEADER.pack(len(data))], fds)
                connection.sendall(data)
                self._connection = connection
                answer = self._message(timeout=None)
            except BaseException:
                connection.close()
                self._connection = None
                raise
            if "error" in answer:
                number, text, name = answer["error"]
                raise OSError(number, text, name)
            self.pid = int(answer["pid"])
            self._child_created = True
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # type: ignore[attr-defined]

    def _message(self, timeout: float | None) -> dict[str, Any]:
        """The zygote's next message on this child's connection; TimeoutExpired if none
        comes within ``timeout``."""
        connection = self._connection
        assert connection is not None
        while True:
            if len(self._inbox) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._inbox)
                if len(self._inbox) >= _HEADER.size + size:
                    body = self._inbox[_HEADER.size : _HEADER.size + size]
                    self._inbox = self._inbox[_HEADER.size + size :]
                    message: dict[str, Any] = json.loads(body)
                    return message
            if timeout is not None:
                ready, _, _ = select.select([connection], [], [], timeout)
                if not ready:
                    raise subprocess.TimeoutExpired(self.args, timeout)
            chunk = connection.recv(65536)
            if not chunk:
                raise ChildProcessError(f"the zygote went away before {self.pid} ended")
            self._inbox += chunk

    def _exit_status(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for the zygote's word on how the child ended."""
        answer = self._message(timeout)
        self.returncode = int(answer["exit"])
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _internal_poll(self, _deadstate: int | None = None, **_: Any) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):  # type: ignore[attr-defined]
            try:
                if self.returncode is None:
                    self._exit_status(timeout=0)
            except subprocess.TimeoutExpired:
                pass
            except OSError:
                if _deadstate is not None:
                    self.returncode = _deadstate
            finally:
                self._waitpid_lock.release()  # type: ignore[attr-defined]
        return self.returncode

    def _wait(self, timeout: float | None) -> int:
        if self.returncode is None:
            with self._waitpid_lock:  # type: ignore[attr-defined]
                if self.returncode is None:
                    self._exit_status(timeout)
        assert self.returncode is not None
        return self.returncode


class _Zygote:
    """This process's zygote, started at first use and stopped at exit."""

    _lock = threading.Lock()
    _process: subprocess.Popen[bytes] | None = None
    _owner = 0
    _address = ""
    _settings: ClassVar[dict[str, str]] = {}

    @classmethod
    def settings(cls) -> dict[str, str]:
        """The interpreter settings the zygote runs (or will run) with."""
        return interpreter_settings(os.environ if cls._process is None else cls._settings)

    @classmethod
    def connect(cls) -> socket.socket:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(cls._started())
        except BaseException:
            connection.close()
            raise
        return connection

    @classmethod
    def _started(cls) -> str:
        with cls._lock:
            process = cls._process
            if process is None or cls._owner != os.getpid() or process.poll() is not None:
                cls._start()  # the first use, a forked test process, or the zygote died
            return cls._address

    @classmethod
    def _start(cls) -> None:
        """Bind the socket here (so connecting never races the zygote's start-up: the
        kernel queues connections until it accepts) and hand its fd down."""
        folder = tempfile.mkdtemp(prefix="gembatch-zygote-")
        address = os.path.join(folder, "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(address)
            listener.listen(128)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("GOOGLE_", "GEMINI_", "GEMBATCH_"))
            }
            fd = listener.fileno()
            process = subprocess.Popen(
                [sys.executable, str(_SERVER), str(fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env=env,
                pass_fds=[fd],
            )
        finally:
            listener.close()
        cls._process, cls._owner, cls._address = process, os.getpid(), address
        cls._settings = interpreter_settings(env)
        atexit.register(cls._stop, process, folder)

    @staticmethod
    def _stop(process: subprocess.Popen[bytes], folder: str) -> None:
        """Close the lifeline: the zygote kills what still runs and ends."""
        stdin: IO[bytes] | None = process.stdin
        if stdin is not None:
            stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)  # the zygote may have removed it


def zygote_pid() -> int | None:
    """The running zygote's pid (None before the first child): for tests of the zygote."""
    process = _Zygote._process
    return None if process is None or _Zygote._owner != os.getpid() else process.pid
