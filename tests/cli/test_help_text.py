"""What --help says: every command names its values in one short word, the emulator's too
(issue 19, item 7: no argparse-made ``PROCESSING_SECONDS`` beside ``S``), and cleanup's
--outputs reads as what it deletes (item 6)."""

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


def test_cleanup_outputs_says_it_deletes_service_files_not_results(tmp_path: Path) -> None:
    """--outputs deletes the service's output files; the help must not read as "delete my
    local results"."""
    result = run_cli(["cleanup", "--help"], cwd=tmp_path, env=cli_env(None))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    found = re.search(r"--outputs (.*?)(?= --|$)", text)
    assert found, text
    assert "output files the service wrote" in found[1]
    assert "downloaded results are never touched" in found[1]
