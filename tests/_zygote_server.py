"""The zygote: a pre-imported CLI process that forks one child per request (tests only).

Run as ``python tests/_zygote_server.py FD`` by ``tests/zygote.py``, FD the listening Unix
socket it inherits, and a pipe from the test process as stdin (its lifeline: EOF, the test
process is gone, and the zygote ends, killing any child still running). It imports the
CLI and the SDK once (~1.6 CPU s that every ``python -m gembatch_async`` pays), then for
each connection: receives the request (module, argv, cwd, env) and the child's three stdio fds
(SCM_RIGHTS), forks, answers ``{"pid": N}``, and later ``{"exit": code}`` (``-signum``
if a signal ended the child, as ``Popen.returncode`` says it).

The child makes itself what ``python -m gembatch_async ARGS`` would be at that point:
the zygote's fds closed, stdio on the given fds with the text wrappers a fresh
interpreter would build for them (line-buffered on a terminal), fresh signal
dispositions, the working folder, the environment, ``sys.argv`` and ``sys.path[0]``;
then it runs ``gembatch_async.__main__`` and exits as the interpreter would (SystemExit
codes, a traceback and 1 for an uncaught exception, death by SIGINT for an uncaught
KeyboardInterrupt, 120 when stdout cannot be flushed at exit).

The zygote stays single-threaded (``fork`` copies only the calling thread) and never
runs the CLI itself, so every child starts from the same freshly imported state.
Standard library only at the top: its own folder (tests/) is taken off ``sys.path``
before anything else is imported.
"""

import sys

del sys.path[0]  # tests/, the script's folder: `python -m` would put the cwd there

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import selectors  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

#: Each message: a 4-byte big-endian length, then that much JSON.
HEADER = struct.Struct(">I")


#: What a CLI child would import on its way, the lazy imports of every command too.
PREIMPORTS = (
    "gembatch_async.cli",
    "gembatch_async.cli._commands",
    "gembatch_async.cli._live",
    "gembatch_async._submit",
    "gembatch_async._run",
    "gembatch_async._jobs",
    "gembatch_async._backends._genai",
    "gembatch_async.emulator",  # `gembatch-async emulator`
    "rich.console",
    "google.genai.types",
    # What the first client, request and event loop of a run import.
    "anyio._backends._asyncio",
    "anyio._core._signals",
    "concurrent.futures.thread",
)
#: The SDK's transport and credentials of this release, the price table, and the
#: Vertex backend's storage client: when installed.
OPTIONAL_PREIMPORTS = (
    "httpcore2",
    "httpcore",
    "truststore",
    "google.auth.aio.credentials",
    "genai_prices",
    "genai_prices.data_snapshot",
    "genai_prices.data",
    "gembatch_async._backends.vertex",
    "google.api_core.exceptions",
    "google.auth.transport.requests",
    "google.cloud.storage",
)


def preimport() -> None:
    """Import what a CLI child would, and warm the pydantic schemas the SDK builds on
    first use of its types."""
    import importlib

    for name in PREIMPORTS:
        importlib.import_module(name)
    for name in OPTIONAL_PREIMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    types: Any = sys.modules["google.genai.types"]
    types.BatchJob.model_validate({"name": "batches/warm", "state": "JOB_STATE_PENDING"})
    types.File.model_validate({"name": "files/warm", "sizeBytes": "1"})
    if threading.active_count() != 1:  # fork copies only the calling thread
        raise RuntimeError(f"an import started a thread: {threading.enumerate()}")


def main() -> None:
    lifeline = 0
    listener = socket.socket(fileno=int(sys.argv[1]))  # bound by the test process
    preimport()
    parent = os.getppid()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(lifeline, selectors.EVENT_READ, "lifeline")
    children: dict[int, tuple[socket.socket, int | None]] = {}  # pid -> (connection, pidfd)
    try:
        while True:
            # A child without a pidfd to wake us is polled for often.
            polled = any(pidfd is None for _, pidfd in children.values())
            for key, _ in selector.select(timeout=0.05 if polled else 1.0):
                if key.data == "lifeline" and not os.read(lifeline, 4096):
                    return
                if key.data == "accept":
                    _serve(listener, selector, children)
            _reap(selector, children)
            if os.getppid() != parent:
                return  # the test process died without closing the lifeline
    finally:
        for pid in children:
            _kill(pid)
        _reap(selector, children, block=True)
        with contextlib.suppress(OSError):  # its folder, left when the test process died
            address = listener.getsockname()
            os.unlink(address)
            os.rmdir(os.path.dirname(address))


def _pidfd(pid: int) -> int | None:
    """An fd that turns readable when the child ends (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _serve(
    listener: socket.socket,
    selector: selectors.BaseSelector,
    children: dict[int, tuple[socket.socket, int | None]],
) -> None:
    connection, _ = listener.accept()
    try:
        request, fds = _receive(connection)
    except (OSError, ValueError):
        connection.close()
        return
    problem = _cwd_problem(request["cwd"])
    if problem is not None:
        for fd in fds:
            os.close(fd)
        _send(connection, {"error": problem})
        connection.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(request, fds, [listener, connection, *(c for c, _ in children.values())], selector)
    for fd in fds:
        os.close(fd)
    pidfd = _pidfd(pid)
    if pidfd is not None:
        selector.register(pidfd, selectors.EVENT_READ, "child")
    children[pid] = (connection, pidfd)
    # The test process may have let go of the child: it runs and is reaped all the same.
    with contextlib.suppress(OSError):
        _send(connection, {"pid": pid})


def _cwd_problem(cwd: str) -> list[Any] | None:
    """What Popen raises (in the test process) for a working folder a child cannot enter."""
    try:
        os.stat(cwd)
        if not os.path.isdir(cwd):
            raise NotADirectoryError(20, os.strerror(20), cwd)
    except OSError as exc:
        return [exc.errno, exc.strerror, cwd]
    return None


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    head, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
    if len(head) < HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("a request carries a length and three fds")
    (size,) = HEADER.unpack(head)
    body = b""
    while len(body) < size:
        chunk = connection.recv(size - len(body))
        if not chunk:
            raise ValueError("the request ended early")
        body += chunk
    return json.loads(body), fds


def _send(connection: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    connection.sendall(HEADER.pack(len(data)) + data)


def _reap(
    selector: selectors.BaseSelector,
    children: dict[int, tuple[socket.socket, int | None]],
    block: bool = False,
) -> None:
    """Wait for every child that has ended; tell its connection how."""
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid not in children:
            continue
        connection, pidfd = children.pop(pid)
        if pidfd is not None:
            selector.unregister(pidfd)
            os.close(pidfd)
        with contextlib.suppress(OSError):
            _send(connection, {"exit": os.waitstatus_to_exitcode(status)})
        connection.close()


# -- the child ---------------------------------------------------------------------------


def _child(
    request: dict[str, Any],
    fds: list[int],
    sockets: list[socket.socket],
    selector: selectors.BaseSelector,
) -> None:
    """Become ``python -m MODULE ARGV`` in the request's folder and environment."""
    code = 1
    try:
        _let_go_of_the_zygote(sockets, selector)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)  # dup2 makes 0, 1, 2 inheritable, as a child's are
        for fd in set(fds):
            if fd > 2:
                os.close(fd)
        os.closerange(3, _max_fd())  # close_fds=True: the child has 0, 1, 2 only
        _fresh_signals()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _fresh_stdio()
        code = _run_main(request["module"], request["argv"])
    except BaseException:  # a bug here: say so on the child's stderr, never return
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(1)
    os._exit(code)


def _let_go_of_the_zygote(sockets: list[socket.socket], selector: selectors.BaseSelector) -> None:
    """Close the zygote's sockets and selector through their objects, so no object
    closes a reused fd number later (a bare closerange would leave that trap)."""
    for sock in sockets:
        sock.close()
    selector.close()


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 4096


def _fresh_signals() -> None:
    """The dispositions a fresh interpreter sets up (Python/pylifecycle.c: SIGPIPE and
    SIGXFSZ ignored, SIGINT raising KeyboardInterrupt), everything else the default."""
    for number in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _fresh_stdio() -> None:
    """sys.stdin/stdout/stderr as the interpreter builds them (Python/pylifecycle.c,
    create_stdio): the encoding and error handlers the zygote got for the same
    environment, "\\n" newlines; unbuffered (-u / PYTHONUNBUFFERED): write-through
    and stdout/stderr unbuffered, else line-buffered on a terminal and for stderr."""
    unbuffered: bool = getattr(
        sys.stdout, "write_through", False
    )  # what -u / PYTHONUNBUFFERED gave the zygote
    streams = []
    for fd, old, write in ((0, sys.stdin, False), (1, sys.stdout, True), (2, sys.stderr, True)):
        raw = io.FileIO(fd, "wb" if write else "rb", closefd=False)
        buffer: Any = (
            raw
            if (write and unbuffered)
            else (io.BufferedWriter(raw) if write else io.BufferedReader(raw))
        )
        line_buffering = not unbuffered and (fd == 2 or raw.isatty())
        stream = io.TextIOWrapper(
            buffer,
            encoding=old.encoding,
            errors=old.errors,
            newline="\n",
            line_buffering=line_buffering,
            write_through=unbuffered,
        )
        stream.mode = "w" if write else "r"  # type: ignore[misc]
        streams.append(stream)
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc]


def _run_main(module: str, argv: list[str]) -> int:
    """``python -m MODULE ARGV``'s run and exit: the code it exits with."""
    import runpy

    sys.argv = ["-m", *argv]  # runpy sets argv[0] to the module's file, as `-m` does
    sys.path.insert(0, os.getcwd())
    interrupted = False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _system_exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted, code = True, 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    code = _finalize(code)
    if interrupted:  # CPython exits "via SIGINT" after an uncaught KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _finalize(code: int) -> int:
    """The interpreter's exit: join non-daemon threads, atexit, flush (120 when the
    flush of stdout fails)."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout:
                code = 120
    return code


if __name__ == "__main__":
    main()
