"""The CLI in the test process: ``gembatch_async.cli.main(argv)`` as a subprocess would see it.

A subprocess pays about a second of imports (google.genai) before it does anything; most
CLI tests only need the exit code and the output, so they run ``main`` here instead, with
the process-wide state a child would have set up for itself, and restored afterwards:

- ``os.environ`` is exactly the given environment (plus mutmut's MUTANT_UNDER_TEST, which
  its trampolines read at call time, so mutants reach the CLI too);
- the working directory is ``cwd``;
- ``sys.stdout``/``sys.stderr`` are byte buffers with a child's encoding and error
  handlers (utf-8; surrogateescape on stdout, backslashreplace on stderr), decoded back
  the way ``subprocess.run(text=True)`` does;
- warnings follow Python's default filters (not the suite's warnings-as-errors) and
  print to the captured stderr, as in a child (not to pytest's warnings summary); log records at WARNING and above print
  there too (a child's logging last resort);
- a ``SystemExit`` (argparse's errors, --help, --version) gives its exit code, and an
  exception escaping ``main`` prints its traceback and gives 1, as the interpreter does.

``main`` calls ``anyio.run`` and (for submit and run) installs signal handlers, which
only the main thread may do, so this runs only in the main thread with no event loop
running; ``helpers.run_cli`` falls back to a subprocess elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import subprocess
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

# The SDK seam loads lazily (the CLI starts without the SDK); import it now so its
# import-time warning filter is in place before pytest's per-test contexts can drop it.
import gembatch_async._backends._genai  # noqa: F401
from gembatch_async.cli import main

#: Kept from the test process's environment: mutmut selects the mutant through it.
_INHERITED = ("MUTANT_UNDER_TEST",)


def can_run_in_process() -> bool:
    """The CLI can run here: the main thread (signal handlers), no event loop running."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def run_cli_in_process(
    args: Sequence[str], *, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``gembatch-async ARGS`` in this process; the result a subprocess would give."""
    argv = [str(arg) for arg in args]
    out, err = _child_stream("surrogateescape"), _child_stream("backslashreplace")
    with _child_state(cwd, env, out, err):
        code = _exit_code(argv, err)
    return subprocess.CompletedProcess(
        ["gembatch-async", *argv], code, _decoded(out), _decoded(err)
    )


def _exit_code(argv: list[str], err: io.TextIOWrapper) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=err)
        return 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc(file=err)
        return 1


def _child_stream(errors: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors, write_through=True)


def _decoded(stream: io.TextIOWrapper) -> str:
    """What ``subprocess.run(text=True)`` makes of the bytes: strict utf-8, \\n newlines."""
    stream.flush()
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    assert isinstance(raw, bytes)
    return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


@contextlib.contextmanager
def _child_state(
    cwd: Path, env: dict[str, str], out: io.TextIOWrapper, err: io.TextIOWrapper
) -> Iterator[None]:
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    kept = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    log_handler = logging.StreamHandler(err)
    log_handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    try:
        os.environ.clear()
        os.environ.update({**env, **kept})
        os.chdir(cwd)
        root.addHandler(log_handler)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            _default_warning_filters()
            warnings.showwarning = _printer_to(err)
            try:
                yield
            finally:
                _remember_package_filters()
    finally:
        root.removeHandler(log_handler)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _printer_to(stream: io.TextIOWrapper) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints to ``stream``: set explicitly, as pytest's
    own recording would otherwise take the warning off the child's stderr."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))

    return show


def _own_filters(filters: Sequence[Any]) -> list[Any]:
    """The warning filters naming the package's modules (it adds them when imported)."""
    return [f for f in filters if "gembatch_async" in str(getattr(f[3], "pattern", f[3]))]


#: The package's import-time filters. A child installs them on import; here they may have
#: been installed inside pytest's per-test warning context and dropped with it, so they
#: are kept here: those present now, and any a run installs (a lazy import).
_PACKAGE_FILTERS: list[Any] = _own_filters(warnings.filters)


def _default_warning_filters() -> None:
    """Python's default filters (``python -W`` unset) and the package's own, as in a child."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    for entry in reversed(_PACKAGE_FILTERS):
        warnings.filters.insert(0, entry)  # type: ignore[attr-defined]


def _remember_package_filters() -> None:
    for entry in _own_filters(warnings.filters):
        if entry not in _PACKAGE_FILTERS:
            _PACKAGE_FILTERS.append(entry)
