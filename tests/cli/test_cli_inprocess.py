"""The in-process CLI runner gives what a real process gives, and leaves the test process as
it found it: most CLI tests rely on it (tests/cli_inprocess.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gembatch_async.emulator import RunningEmulator

from ..helpers import cli_env, run_cli, write_jsonl
from ..results.test_embeddings import EMBED_MODEL, write_embed_jsonl


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--help"], id="help-exit-0"),
        pytest.param(["submit", "-c", "nan", "a.jsonl"], id="usage-error-exit-2"),
        pytest.param(["status"], id="no-journal"),
        pytest.param(["submit", "--dry-run", "dönnées.jsonl"], id="non-ascii-name"),
        pytest.param(["submit", "a.jsonl"], id="no-api-key"),
    ],
)
def test_in_process_matches_a_real_process(tmp_path: Path, args: list[str]) -> None:
    """Exit code, stdout and stderr are those of ``python -m gembatch_async``."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    write_jsonl(tmp_path / "dönnées.jsonl", 2)
    env = cli_env(None, GEMBATCH_MODEL="gemini-2.5-flash")
    inside = run_cli(args, cwd=tmp_path, env=env)
    child = run_cli(args, cwd=tmp_path, env=env, process=True)
    assert (inside.returncode, inside.stdout, inside.stderr) == (
        child.returncode,
        child.stdout,
        child.stderr,
    )


def test_the_test_process_is_left_as_it_was(tmp_path: Path) -> None:
    """Environment and working folder come back; the CLI saw only the given ones."""
    before_env, before_cwd = dict(os.environ), os.getcwd()
    env = cli_env(None, GEMBATCH_BACKEND="bogus-backend")
    result = run_cli(["status"], cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "bogus-backend" in result.stderr  # the given env reached the CLI
    assert "GEMBATCH_BACKEND" not in os.environ
    assert (dict(os.environ), os.getcwd()) == (before_env, before_cwd)


def test_a_warning_reaches_stderr_as_in_a_real_process(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The SDK warns that embedding batches are experimental: a child prints it on stderr,
    so the in-process run does too (not into pytest's warnings summary)."""
    write_embed_jsonl(tmp_path / "docs.jsonl", 2)
    args = ["submit", "-m", EMBED_MODEL, "docs.jsonl"]
    child = run_cli(
        [*args, "--job-info", "child.jsonl"], cwd=tmp_path, env=cli_env(emulator), process=True
    )
    inside = run_cli([*args, "--job-info", "inside.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert (inside.returncode, child.returncode) == (0, 0), inside.stderr + child.stderr
    assert "ExperimentalWarning" not in child.stderr  # the package silences its own calls
    assert inside.stderr == child.stderr
