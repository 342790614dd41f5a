"""Every command's --help names its values in one short word, the emulator's too (issue 19,
item 7: no argparse-made ``PROCESSING_SECONDS`` beside ``S``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..helpers import cli_env, run_cli

COMMANDS = ["submit", "run", "status", "download", "cancel", "cleanup", "emulator", "show"]


@pytest.mark.parametrize("command", COMMANDS)
def test_metavars_are_short(tmp_path: Path, command: str) -> None:
    """One word in capitals of at most 6 letters, no underscores, for every option."""
    result = run_cli([command, "--help"], cwd=tmp_path, env=cli_env(None))
    assert result.returncode == 0, result.stderr
    metavars = set(re.findall(r"--[a-z-]+ ([A-Z][A-Z_]*)\b", result.stdout))
    long = sorted(m for m in metavars if "_" in m or len(m) > 6)
    assert not long, f"{command} --help has long metavars {long}"
