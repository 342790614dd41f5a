"""The README's promises: its library example runs, its quick start names real commands."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .helpers import cli_env, read_journal

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


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


def test_quick_start_has_two_commands() -> None:
    """Exactly two commands: the main job offline, and the tests (which .ci/run runs)."""
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)
    assert len(commands) == 2
    assert "--emulator submit examples/*.jsonl" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
