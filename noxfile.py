"""The control panel: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``sdk_tests``,
``sdk_oldest``, ``sdk_newest``, ``mutants``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def pyenv_bin_folders(versions: list[str]) -> list[str]:
    """The bin folders of pyenv's newest install of each version (``~/.pyenv/versions/3.10.13/bin``).

    nox looks for ``python3.10`` on PATH, where pyenv has only a shim that fails unless 3.10
    is the selected version ("command not found"); the installs themselves are complete.
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    folders = []
    for version in versions:
        installs = [p for p in root.glob(f"{version}.*/bin/python{version}") if p.is_file()]
        newest = max(installs, key=lambda p: [int(n) for n in p.parts[-3].split(".")], default=None)
        if newest is not None:
            folders.append(str(newest.parent))
    return folders


# Put before the shims, so each session finds the interpreter nox asks for by name.
os.environ["PATH"] = os.pathsep.join([*pyenv_bin_folders(PYTHONS), os.environ.get("PATH", "")])


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against the emulator on 127.0.0.1."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


def sdk_range() -> tuple[str, str]:
    """The google-genai range pyproject.toml allows on Python 3.11+ (one source of truth):
    ``(">=3.0.0", "<4")``."""
    text = Path(__file__).with_name("pyproject.toml").read_text()
    found = re.search(r'"google-genai(>=[^,]+),(<[^;"]+); python_version >= \'3\.11\'"', text)
    if found is None:
        raise RuntimeError("no google-genai range for Python 3.11+ in pyproject.toml")
    return found.group(1), found.group(2)


@nox.session(python="3.11")
def sdk_oldest(session: nox.Session) -> None:
    """The test suite against the oldest google-genai the range allows (not in CI yet)."""
    oldest, _ = sdk_range()
    session.install("-e", ".[test]")
    session.install(f"google-genai=={oldest.removeprefix('>=')}")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def sdk_newest(session: nox.Session) -> None:
    """The test suite against the newest google-genai the range allows (not in CI yet)."""
    oldest, below = sdk_range()
    session.install("-e", ".[test]")
    session.install("--upgrade", f"google-genai{oldest},{below}")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests, the benchmarks and this file."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: prints a table and one JSON line per measurement."""
    session.install("-e", ".[test]")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def sdk_tests(session: nox.Session) -> None:
    """google-genai's own batches and files tests, in API mode, against the emulator."""
    # httpx and requests: two of the suite's modules import them; the SDK does not.
    session.install("-e", ".[test]", "httpx", "requests")
    session.run("python", "tools/sdk_suite/run_suite.py", *session.posargs)


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation check (mutmut) of the exactly-once and journal modules. By hand, not in CI.

    ``nox -s mutants`` tries every mutant of the modules listed under
    [tool.mutmut] in pyproject.toml (hours on 2 cores); ``nox -s mutants --
    "gembatch_async._retry*"`` only those of one module. Results are kept in
    mutants/, so a rerun checks only what changed. Triage: docs/mutants.md.
    """
    session.install("-e", ".[test]", "mutmut>=3.8,<4")
    workers = str(os.cpu_count() or 2)
    session.run("mutmut", "run", "--max-children", workers, *session.posargs)
    session.run("mutmut", "results")
