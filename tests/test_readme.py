"""The README's promises: its quick start and tutorial run in order on a fresh copy and leave
the copy as it was, every command line it shows parses, every link inside it resolves, and
its library example runs."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gembatch_async.cli import build_parser
from gembatch_async.emulator import EmulatorConfig, EmulatorThread

from .helpers import cli_env, read_journal
from .zygote import cli_run

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: The part a new user follows step by step; the reference starts at the `run` section.
WALKTHROUGH = README.split("## Quick start", 1)[1].split("\n## `run`", 1)[0]
SH_BLOCK = re.compile(r"```sh\n(.*?)\n```", flags=re.S)
#: What the walkthrough's install and test blocks say; the test cannot pip-install, so it
#: stands a venv of the code under test in for them (.ci/run runs the test block itself).
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e ."
TESTS = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
#: Where a command line ends and the shell takes over.
SHELL = {"|", "||", "&&", ";", ">", ">>", "<"}
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".ci-venv*", ".nox", "__pycache__", "*.egg-info", ".*_cache",
    ".hypothesis", "mutants", ".gembatch-emulator", "job-info.jsonl*", "library-demo-jobs*",
    "results", "out",
)  # fmt: skip


def test_quick_start_installs_from_the_clone_and_tests_as_ci_does() -> None:
    """The first command installs from the clone (no unpublished package name); the test
    command is the one .ci/run runs word for word."""
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = SH_BLOCK.findall(section)
    assert commands[0] == INSTALL
    assert commands[-1] == TESTS
    assert TESTS in (ROOT / ".ci" / "run").read_text()
    assert "pip install 'gembatch-async" not in README, "that package is not published"


def _fake_venv(clone: Path) -> None:
    """``.venv`` as the install block makes it, running the code under test (no pip)."""
    bin_dir = clone / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"; export PATH\n')
    script = bin_dir / "gembatch-async"
    script.write_text(
        f'#!/bin/sh\nPYTHONPATH="{clone}" PYTHONDONTWRITEBYTECODE=1 '
        f'exec "{sys.executable}" -m gembatch_async "$@"\n'
    )
    script.chmod(0o755)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the stand-in venv) and a hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".venv" not in path.relative_to(folder).parts
    }


def test_walkthrough_runs_in_order_on_a_fresh_copy_and_changes_nothing_in_it(
    tmp_path: Path,
) -> None:
    """Quick start and tutorial, block after block in one shell: exit 0, results in the
    demo folder, and the copy of the repository byte for byte as before (no
    examples/results/, no examples/job-info.jsonl for the next glob or test to find)."""
    blocks = SH_BLOCK.findall(WALKTHROUGH)
    assert blocks.count(INSTALL) == 1, blocks
    assert blocks.count(TESTS) == 1, blocks
    clone, home = tmp_path / "clone", tmp_path / "home"
    shutil.copytree(ROOT, clone, ignore=COPY_IGNORE)
    home.mkdir()
    _fake_venv(clone)
    before = _snapshot(clone)
    script = "\n".join(["set -euo pipefail", *(b for b in blocks if b not in (INSTALL, TESTS))])
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=clone,
        env={**cli_env(None), "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=100,  # inside the suite's 120 s per test
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = _snapshot(clone)
    changed = sorted({p for p in before.keys() | after.keys() if before.get(p) != after.get(p)})
    assert not changed, f"the walkthrough changed the repository: {changed}"
    demo = home / "gembatch-demo"
    inputs = sorted(p.name for p in (clone / "examples").glob("*.jsonl"))
    assert sorted(p.name for p in (demo / "results").glob("*.jsonl")) == inputs
    assert len(read_journal(demo / "job-info.jsonl")) == len(inputs)
    assert re.search(r"^request_1\tEmulated answer", result.stdout, flags=re.M), result.stdout
    printed = _normalised(result.stdout).splitlines()
    if importlib.util.find_spec("genai_prices") is None:
        return  # Python 3.10: no price table, so the pasted costs read "unknown" there
    for line in _intro_output():
        assert _normalised(line) in printed, f"not printed: {line}\n{result.stdout}"


def _intro_output() -> list[str]:
    """The lines of the run the README opens with (its ``...`` marks lines left out)."""
    block = README.split("```text\n$ gembatch-async run", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines()[1:] if line and line != "..."]


def _normalised(text: str) -> str:
    """Output with what changes every run (batch ids, durations, the order files finish
    their upload in) made constant."""
    text = re.sub(r"batches/[a-z0-9]+", "batches/ID", text)
    text = re.sub(r"^\[\d+/", "[n/", text, flags=re.M)
    text = re.sub(r"rates of \d{4}-\d\d-\d\d", "rates of DATE", text)  # the day the job ran
    return re.sub(r"in \d+\.\d+s", "in Ts", text)


def test_failed_requests_paste_is_what_run_prints(tmp_path: Path) -> None:
    """The tutorial's run with --request-errors 0.3 prints the pasted lines, exit 0."""
    pytest.importorskip("genai_prices")  # the pasted costs; Python 3.10 prices "unknown"
    pasted = [
        line.strip()
        for line in WALKTHROUGH.split("the end of a run reads:", 1)[1].split("```")[1].splitlines()
        if line.strip() and line.strip() != "text"
    ]
    for path in sorted((ROOT / "examples").glob("*.jsonl")):
        shutil.copy(path, tmp_path)
    # What `gembatch-async emulator --request-errors 0.3` serves; the seed picks the requests.
    config = EmulatorConfig(port=0, processing_seconds=1.0, request_errors=0.3, fault_seed=7)
    with EmulatorThread(config) as emulator:
        names = sorted(p.name for p in tmp_path.glob("*.jsonl"))
        result = cli_run(
            ["run", "--interval", "0.3", *names],
            cwd=tmp_path,
            env={**cli_env(emulator), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=100,
        )
    assert result.returncode == 0, result.stderr
    printed = _normalised(result.stdout).splitlines()
    for line in pasted:
        assert _normalised(line) in printed, f"not printed: {line}\n{result.stdout}"


def _command_lines() -> list[str]:
    """Every ``gembatch-async ...`` the README shows as a command to type: lines of its sh
    and text blocks (after a ``$`` prompt in text) and inline code spans. Synopses, with
    ``[optional]`` parts or placeholders in capitals, are not commands."""
    lines = []
    for block in SH_BLOCK.findall(README):
        # A shell line continuation joins two lines into one command.
        block = block.replace("\\\n", " ")
        lines += [line for line in block.splitlines() if "gembatch-async " in line]
    for block in re.findall(r"```text\n(.*?)```", README, flags=re.S):
        lines += [line[2:] for line in block.splitlines() if line.startswith("$ gembatch-async")]
    lines += re.findall(r"`((?:\.venv/bin/)?gembatch-async [^`]*)`", README)
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        for start, word in enumerate(words):
            if word.endswith("gembatch-async"):
                end = next((i for i, w in enumerate(words) if i > start and w in SHELL), None)
                commands.append(shlex.join(words[start:end]))
                break
    return [c for c in commands if not re.search(r"\[|\.\.\.|…|\b[A-Z]{2,}\b|\bSIZE\b", c)]


COMMANDS = _command_lines()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_shown_parses(command: str) -> None:
    """Each command line the README shows is accepted by the CLI's parser as written."""
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"the README's `{command}` does not parse (exit {exit_.code})")


def test_the_command_lines_are_found() -> None:
    """The scan above sees the README's commands (so the parse test cannot pass empty)."""
    assert len(COMMANDS) >= 15, COMMANDS


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_inside_the_readme_resolve() -> None:
    """Every ``](#anchor)`` names a heading of the README."""
    anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", README, flags=re.M)}
    missing = sorted(set(re.findall(r"\]\(#([^)]+)\)", README)) - anchors)
    assert not missing, f"links to no heading: {missing}"


def test_library_example_runs(tmp_path: Path) -> None:
    """The README's Python example runs as written and submits both files."""
    (code,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=cli_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "2 0"
    assert len(read_journal(tmp_path / "library-demo-jobs.jsonl")) == 2


def test_readme_examples_do_not_write_into_the_repository() -> None:
    """No example names the repository's examples/ folder as inputs of run or download
    (their results would land in examples/results/, which test_examples_pass scans)."""
    offending = [c for c in COMMANDS if re.search(r"\b(run|download)\b.*examples/", c)]
    assert not offending, offending
