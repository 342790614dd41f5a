"""What "the same input" is, and that a journal never steers where we read or write
(issue 17: hard links, a journal moved behind a symlink, a new split, hostile lines)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import cli_env, finish_jobs, read_journal, run_cli, write_jsonl

FAST = pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=0.3, latency_ms=5), id="fast")],
)
RUN = ["run", "--interval", "0.2", "--retry-max-delay", "0.05"]


def batches(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return list(emulator.state()["batches"])


def warnings(stderr: str) -> list[str]:
    return [w for w in stderr.splitlines() if w.startswith("warning: ")]


# -- item 1: a hard link is the same file ---------------------------------------------------
@pytest.mark.promise("one-file-one-input")
def test_hard_links_named_together_are_one_input(emulator: RunningEmulator, tmp_path: Path) -> None:
    """`ln a.jsonl b.jsonl; submit a.jsonl b.jsonl`: one file (device and inode), one batch."""
    write_jsonl(tmp_path / "a.jsonl", 3)
    os.link(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    result = run_cli(["submit", "a.jsonl", "b.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("submitted 1, skipped 0, failed 0")
    assert len(batches(emulator)) == 1


@pytest.mark.promise("one-file-one-input")
def test_a_hard_link_made_after_submission_is_the_recorded_input(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Submitted as a.jsonl, then hard-linked as b.jsonl: b is recognised (same inode at
    the recorded place, found by its content), skipped, and the job commands know it."""
    write_jsonl(tmp_path / "a.jsonl", 3)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    os.link(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    again = run_cli(["submit", "b.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1].startswith("submitted 0, skipped 1"), again.stdout
    assert len(batches(emulator)) == 1
    status = run_cli(["status", "b.jsonl"], cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert len(read_journal(tmp_path / "job-info.jsonl")) == 1


# -- item 3: a journal moved behind a symlink keeps its identities ---------------------------
@FAST
def test_journal_moved_into_a_subfolder_behind_a_symlink_keeps_its_inputs(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """mv job-info.jsonl sub/ && ln -s sub/job-info.jsonl job-info.jsonl: the inputs keep
    their identities (no ../a.jsonl), nothing is submitted twice, results land beside a."""
    write_jsonl(tmp_path / "a.jsonl", 3)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "sub").mkdir()
    (tmp_path / "job-info.jsonl").rename(tmp_path / "sub" / "job-info.jsonl")
    (tmp_path / "job-info.jsonl").symlink_to("sub/job-info.jsonl")
    again = run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1].startswith("submitted 0, skipped 1"), again.stdout
    assert len(batches(emulator)) == 1
    finish_jobs(emulator, 0.3)
    done = run_cli(["download"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "results" / "a.jsonl").exists()
    assert not (tmp_path / "sub" / "results").exists()
    (line,) = read_journal(tmp_path / "sub" / "job-info.jsonl")
    assert line["input_identity"] == "a.jsonl"


def test_identities_recorded_against_a_symlinked_journals_target_still_match(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A journal that was a symlink all along: earlier versions recorded identities
    relative to its target's folder (../a.jsonl from store/); they are still a.jsonl."""
    write_jsonl(tmp_path / "a.jsonl", 3)
    (tmp_path / "store").mkdir()
    (tmp_path / "job-info.jsonl").symlink_to("store/real.jsonl")
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    real = tmp_path / "store" / "real.jsonl"
    (line,) = read_journal(real)
    real.write_text(json.dumps({**line, "input_identity": "../a.jsonl"}) + "\n")
    again = run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1].startswith("submitted 0, skipped 1"), again.stdout
    assert len(batches(emulator)) == 1


# -- item 5: a recorded input keeps its recorded split ---------------------------------------
@FAST
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            ["run", "--max-requests-per-job", "2"], ["--max-requests-per-job", "3"], id="run-run"
        ),
        pytest.param(["submit", "--max-requests-per-job", "2"], [], id="submit-run"),
        pytest.param(["submit"], ["--max-requests-per-job", "2"], id="whole-then-split"),
    ],
)
def test_a_new_split_of_an_unchanged_input_follows_the_recorded_jobs(
    emulator: RunningEmulator, tmp_path: Path, first: list[str], second: list[str]
) -> None:
    """run after a run (or submit) with other --max-requests-per-job: the file did not
    change, so it is not "changed", nothing is paid again, and run finishes with its
    results from the recorded jobs."""
    write_jsonl(tmp_path / "a.jsonl", 6)
    env = cli_env(emulator)
    if first[0] == "run":
        first = [*RUN, *first[1:]]
    made = run_cli([*first, "a.jsonl"], cwd=tmp_path, env=env, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    before = len(batches(emulator))
    again = run_cli([*RUN, *second, "a.jsonl"], cwd=tmp_path, env=env, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "changed" not in again.stdout + again.stderr
    assert len(batches(emulator)) == before, "a recorded, unchanged file was submitted again"
    rows = (tmp_path / "results" / "a.jsonl").read_text().splitlines()
    assert [json.loads(row)["key"] for row in rows] == [f"k{i}" for i in range(6)]
    named = run_cli(["status", "a.jsonl"], cwd=tmp_path, env=env)
    assert named.returncode == 0, named.stderr  # a split input is found by its name too


# -- item 7: a journal line never steers a read or write ------------------------------------
@pytest.mark.promise("journal-never-steers")
@FAST
def test_journal_lines_never_steer_reads_or_writes_outside_the_project(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Lines whose identity is absolute, escapes the folder, or goes through a symlink out
    of it: download reads and writes nothing there; each is reported with its line."""
    project, victim = tmp_path / "project", tmp_path / "victim"
    project.mkdir()
    victim.mkdir()
    (victim / "secret.jsonl").write_text("private text\n")
    (project / "link").symlink_to(victim)
    write_jsonl(project / "a.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=project, env=env).returncode == 0
    finish_jobs(emulator, 0.3)
    journal = project / "job-info.jsonl"
    (line,) = read_journal(journal)
    hostile = [
        str(victim / "secret.jsonl"),
        "../victim/secret.jsonl",
        "link/secret.jsonl",
        ".",  # the project folder itself: its results/ would be beside the project
    ]
    with journal.open("a") as handle:
        for identity in hostile:
            handle.write(json.dumps({**line, "input_identity": identity}) + "\n")
    result = run_cli(["download"], cwd=project, env=env)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    assert not (victim / "results").exists(), "a journal line made us write outside the project"
    assert not (tmp_path / "results").exists()
    assert (project / "results" / "a.jsonl").exists(), "the user's own input still gets results"
    assert [w.split(":")[2] for w in warnings(result.stderr)] == ["2"]
    assert "not a relative path" in result.stderr
    refused = [x for x in result.stdout.splitlines() if x.startswith("error ")]
    assert len(refused) == 3, result.stdout
    assert sorted(x.split(" line ")[1].split(":")[0] for x in refused) == ["3", "4", "5"]
    assert all("outside the journal's folder" in x for x in refused)
    assert (victim / "secret.jsonl").read_text() == "private text\n"


@pytest.mark.promise("journal-never-steers")
@FAST
def test_an_input_outside_the_journal_folder_is_downloaded_when_named(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A journal in a sub-folder records ../a.jsonl (legitimately): a bare download does
    not follow it, naming the file does, and run (which names it) writes its results."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    write_jsonl(tmp_path / "b.jsonl", 2, tag="b")
    env = cli_env(emulator)
    journal = ["--job-info", "sub/j.jsonl"]
    assert run_cli([*journal, "submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    assert read_journal(tmp_path / "sub" / "j.jsonl")[0]["input_identity"] == "../a.jsonl"
    finish_jobs(emulator, 0.3)
    bare = run_cli([*journal, "download"], cwd=tmp_path, env=env)
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert "name the file" in bare.stdout
    assert not (tmp_path / "results").exists()
    named = run_cli([*journal, "download", "a.jsonl"], cwd=tmp_path, env=env)
    assert named.returncode == 0, named.stdout + named.stderr
    assert (tmp_path / "results" / "a.jsonl").exists()
    ran = run_cli([*journal, *RUN, "b.jsonl"], cwd=tmp_path, env=env, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (tmp_path / "results" / "b.jsonl").exists()


# -- item 15: part numbers -----------------------------------------------------------------
def test_part_numbers_are_whole_numbers_from_one(emulator: RunningEmulator, tmp_path: Path) -> None:
    """ "part": true is not a part number (bool is not a number); "part": 0 is a whole
    number but not a part number: both lines are reported and kept, with that reason."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    journal = tmp_path / "job-info.jsonl"
    (line,) = read_journal(journal)
    with journal.open("a") as handle:
        for part in (True, 0, -1, 1.5):
            handle.write(json.dumps({**line, "part": part, "parts": 2}) + "\n")
        handle.write(json.dumps({**line, "part": 3, "parts": 2}) + "\n")
    result = run_cli(["status"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = warnings(result.stderr)
    assert [w.split(":")[2] for w in shown] == ["2", "3", "4", "5", "6"], result.stderr
    assert all('"part" is not a part number from 1' in w for w in shown[:4]), shown
    assert '"part" is over "parts"' in shown[4]


def test_older_part_lines_cut_otherwise_are_one_clear_line(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Part lines from before the split was recorded, and a run cutting the file
    otherwise: exit 2 saying what to do, never a wait for jobs that do not exist."""
    write_jsonl(tmp_path / "a.jsonl", 6)
    env = cli_env(emulator)
    made = run_cli(["submit", "--max-requests-per-job", "2", "a.jsonl"], cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    journal = tmp_path / "job-info.jsonl"
    older = [
        {k: v for k, v in line.items() if k not in ("split", "input_sha256")}
        for line in read_journal(journal)
    ]
    journal.write_text("".join(json.dumps(line) + "\n" for line in older))
    again = run_cli([*RUN, "a.jsonl"], cwd=tmp_path, env=env, timeout=60)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "--max-requests-per-job" in again.stderr
    assert len(batches(emulator)) == 3
    same = run_cli(["submit", "--max-requests-per-job", "2", "a.jsonl"], cwd=tmp_path, env=env)
    assert same.returncode == 0, same.stderr
    assert "submitted 0, skipped 3" in same.stdout


@FAST
def test_a_changed_input_cut_otherwise_is_skipped_as_changed_not_waited_for(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Recorded in 3 parts, then edited so that its recorded limits now cut 4 (and this
    run's, 2): run says it changed, pays nothing, and ends (it follows the recorded jobs)."""
    write_jsonl(tmp_path / "a.jsonl", 6)
    env = cli_env(emulator)
    made = run_cli([*RUN, "--max-requests-per-job", "2", "a.jsonl"], cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    write_jsonl(tmp_path / "a.jsonl", 7)
    again = run_cli(
        [*RUN, "--max-requests-per-job", "4", "a.jsonl"], cwd=tmp_path, env=env, timeout=60
    )
    assert "Traceback" not in again.stderr
    assert "changed" in again.stdout + again.stderr
    assert len(batches(emulator)) == 3
