"""The command line: parse, run, render events, own the exit codes.

The package is the only place that prints or exits (``main`` here; the grammar in
``_args``, the commands in ``_commands``, their endpoints in ``_endpoints``). Exit codes: 0 all good, 1 some
file failed, 2 usage or pre-flight error (nothing was sent), 3 some files wait
for service capacity (run submit again later, or use run), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from .._backends import BACKEND_ENV, BACKENDS
from .._errors import GembatchError, leaf_errors
from .._names import display_path, model_problem
from .._settings import MODEL_ENV, api_key_from_env, default_model, redact
from ._args import build_parser as build_parser
from ._commands import _jobs_command, _run_command, _serve_emulator, _show_command, _submit_command
from ._console import EXIT_FAILED, EXIT_INTERRUPTED, _print

EMULATOR_STATE_DIR = ".gembatch-emulator"


DEBUG_ENV = "GEMBATCH_DEBUG"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend not in BACKENDS:  # argparse checks the flag, not the env default
        parser.error(f"{BACKEND_ENV}={args.backend!r}: choose one of {', '.join(BACKENDS)}")
    if args.command in ("submit", "run") and args.model is None:
        problem = model_problem(default_model())  # the env default, checked as -m is
        if problem is not None:
            parser.error(f"{MODEL_ENV}: {problem}")
    # Beside the journal, so each project folder keeps its own offline state.
    args.emulator_state_dir = Path(os.path.abspath(args.job_info)).parent / EMULATOR_STATE_DIR
    command = {
        "emulator": _serve_emulator,
        "submit": _submit_command,
        "run": _run_command,
        "show": _show_command,
    }.get(args.command, _jobs_command)
    try:
        return anyio.run(command, args, backend="asyncio")
    except KeyboardInterrupt:
        _print("interrupted", sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:
        # Jobs run side by side, so errors come out as a (nested) group: each error
        # in it is one clear line (the same line once); the exit code is the gravest.
        errors = leaf_errors(exc)
        if any(isinstance(error, (SystemExit, KeyboardInterrupt)) for error in errors):
            raise
        shown: dict[str, int] = {}
        for error in errors:
            if isinstance(error, GembatchError):
                text, code = str(error), error.exit_code
            else:
                text, code = _unexpected(error), EXIT_FAILED
            if text not in shown:
                shown[text] = code
                _print(f"error: {text}", sys.stderr)
        return max(shown.values())


def _unexpected(error: BaseException) -> str:
    """The line for an error not of ours: still one line, no traceback (unless
    asked), never the key."""
    if os.environ.get(DEBUG_ENV):
        raise error
    if isinstance(error, OSError) and error.strerror:
        where = f"{display_path(error.filename)}: " if isinstance(error.filename, str) else ""
        text = f"{where}{error.strerror}"
    else:
        text = f"unexpected {type(error).__name__}: {error}"
    return f"{redact(text, api_key_from_env())} (set {DEBUG_ENV}=1 for the traceback)"
