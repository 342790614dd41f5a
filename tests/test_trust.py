"""Trust, tried as a hostile or unlucky user would: one file is one batch however it is
named, nothing of the user's is damaged, every failure is one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gembatch_async.emulator import RunningEmulator

from .helpers import cli_env, read_journal, run_cli, write_jsonl

FAST = ["--retry-max-delay", "0.05"]


def live_batches(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [b for b in emulator.state()["batches"] if b["state"] != "BATCH_STATE_CANCELLED"]


def uploads(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [f for f in emulator.state()["files"] if f["source"] == "UPLOADED"]


# -- identity: one file, one batch ---------------------------------------------------------
def test_every_spelling_of_one_file_is_one_batch(emulator: RunningEmulator, tmp_path: Path) -> None:
    """./a, sub/../a, the absolute path, a symlink, and another working directory: one batch."""
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    write_jsonl(project / "a.jsonl", 3)
    (project / "link.jsonl").symlink_to(project / "a.jsonl")
    env = cli_env(emulator)
    first = run_cli(["submit", "a.jsonl"], cwd=project, env=env)
    assert first.returncode == 0, first.stderr
    spellings = ["./a.jsonl", "sub/../a.jsonl", str(project / "a.jsonl"), "link.jsonl"]
    for spelling in spellings:
        again = run_cli(["submit", spelling], cwd=project, env=env)
        assert again.returncode == 0, again.stderr
        assert "skipped" in again.stdout, (spelling, again.stdout)
    elsewhere = run_cli(
        ["--job-info", "../job-info.jsonl", "submit", "../a.jsonl"], cwd=project / "sub", env=env
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "skipped" in elsewhere.stdout
    assert len(live_batches(emulator)) == 1
    assert len(uploads(emulator)) == 1
    (line,) = read_journal(project / "job-info.jsonl")
    assert line["input_file"] == "a.jsonl", "input_file stays as the user gave it"
    assert line["input_identity"] == "a.jsonl"


def test_two_spellings_in_one_run_are_one_file(emulator: RunningEmulator, tmp_path: Path) -> None:
    """Naming one file twice in one command submits it once."""
    write_jsonl(tmp_path / "a.jsonl", 3)
    (tmp_path / "alias.jsonl").symlink_to("a.jsonl")
    result = run_cli(
        ["submit", "a.jsonl", str(tmp_path / "a.jsonl"), "alias.jsonl"],
        cwd=tmp_path,
        env=cli_env(emulator),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("submitted 1, skipped 0, failed 0")
    assert len(live_batches(emulator)) == 1


def test_another_journal_never_adopts_our_batch(emulator: RunningEmulator, tmp_path: Path) -> None:
    """Two project folders, same relative path and content, one API project: two batches.

    The first folder's batch is cancelled, as a user might: the second folder must
    neither adopt it nor reuse its upload.
    """
    north, south = tmp_path / "north", tmp_path / "south"
    for folder in (north, south):
        folder.mkdir()
        write_jsonl(folder / "data.jsonl", 3, tag="same")
    env = cli_env(emulator)
    assert run_cli(["submit", "data.jsonl"], cwd=north, env=env).returncode == 0
    assert run_cli(["cancel"], cwd=north, env=env).returncode == 0
    result = run_cli(["submit", "data.jsonl"], cwd=south, env=env)
    assert result.returncode == 0, result.stderr
    assert "adopted" not in result.stdout
    (mine,) = read_journal(south / "job-info.jsonl")
    (theirs,) = read_journal(north / "job-info.jsonl")
    assert mine["batch"]["name"] != theirs["batch"]["name"]
    assert mine["uploaded_file_name"] != theirs["uploaded_file_name"]
    assert mine["batch"]["state"] == "JOB_STATE_PENDING"
    assert mine["journal_id"] != theirs["journal_id"]


def test_scope_id_survives_a_lost_lock_file(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The scope id is kept in the lock file and in every line: deleting the lock keeps it."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    write_jsonl(tmp_path / "b.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "job-info.jsonl.lock").unlink()
    assert run_cli(["submit", "b.jsonl"], cwd=tmp_path, env=env).returncode == 0
    ids = {line["journal_id"] for line in read_journal(tmp_path / "job-info.jsonl")}
    assert len(ids) == 1
    assert (tmp_path / "job-info.jsonl.lock").read_text().strip() == ids.pop()


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777
