"""Trust, tried as a hostile or unlucky user would: one file is one batch however it is
named, nothing of the user's is damaged, every failure is one clear line."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gembatch_async import Event, FileFailed, Retrying, SubmitSettings, submit
from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator

from .helpers import (
    FAST_RETRY,
    TEST_API_KEY,
    assert_converged,
    cli_env,
    creates_reached,
    finish_jobs,
    read_journal,
    run_cli,
    wait_until,
    write_jsonl,
)
from .zygote import cli_popen

FAST = ["--retry-max-delay", "0.05"]


def live_batches(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [b for b in emulator.state()["batches"] if b["state"] != "BATCH_STATE_CANCELLED"]


def uploads(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [f for f in emulator.state()["files"] if f["source"] == "UPLOADED"]


# -- identity: one file, one batch ---------------------------------------------------------
@pytest.mark.promise("one-file-one-input")
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


@pytest.mark.promise("one-file-one-input")
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


@pytest.mark.promise("other-journal-never-adopts")
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


@pytest.mark.promise("other-journal-never-adopts")
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


# -- never damage what the user owns ------------------------------------------------------
REQUEST_LINE = '{"key": "k0", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}'


@pytest.mark.promise("journal-handled-with-care")
def test_a_request_file_as_journal_is_refused_untouched(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """--job-info naming a request JSONL (no final newline): exit 2, byte-identical, nothing sent."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    victim = tmp_path / "requests.jsonl"
    victim.write_text("\n".join([REQUEST_LINE] * 50))  # no final newline
    before = victim.read_bytes()
    env = cli_env(emulator)
    for args in (
        ["--job-info", "requests.jsonl", "submit", "a.jsonl"],
        ["--job-info", "requests.jsonl", "submit", "--dry-run", "a.jsonl"],
        ["--job-info", "requests.jsonl", "status"],
        ["--job-info", "requests.jsonl", "download"],
        ["--job-info", "requests.jsonl", "cleanup"],
    ):
        result = run_cli(args, cwd=tmp_path, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert "not a gembatch journal" in result.stderr
        assert "line 1" in result.stderr
        assert "Traceback" not in result.stderr
        assert victim.read_bytes() == before
    assert not (tmp_path / "requests.jsonl.lock").exists()
    assert emulator.state()["files"] == []


@pytest.mark.promise("dry-run-writes-nothing")
def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    """--dry-run against the built-in emulator leaves the folder exactly as it was."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    result = run_cli(
        ["--emulator", "submit", "--dry-run", "a.jsonl"], cwd=tmp_path, env=cli_env(None)
    )
    assert result.returncode == 0, result.stderr
    assert "would submit a.jsonl" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


@pytest.mark.promise("dry-run-writes-nothing")
def test_dry_run_leaves_a_torn_journal_alone(emulator: RunningEmulator, tmp_path: Path) -> None:
    """A dry run reports a torn last line but does not repair (write) it."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    journal = tmp_path / "job-info.jsonl"
    with journal.open("a") as handle:
        handle.write('{"input_file": "b.jso')
    before = journal.read_bytes()
    result = run_cli(["submit", "--dry-run", "a.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "unfinished" in result.stderr
    assert journal.read_bytes() == before


@pytest.mark.promise("journal-handled-with-care")
def test_rewrite_keeps_mode_and_owner(emulator: RunningEmulator, tmp_path: Path) -> None:
    """status rewrites the journal: its permission bits and owner stay as they were."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    journal = tmp_path / "job-info.jsonl"
    journal.chmod(0o640)
    owner = (os.stat(journal).st_uid, os.stat(journal).st_gid)
    if os.geteuid() == 0:  # root can give it away, as a shared project folder might
        os.chown(journal, 4321, 4322)
        owner = (4321, 4322)
    inode = os.stat(journal).st_ino
    result = run_cli(["status"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert os.stat(journal).st_ino != inode, "status rewrote the journal"
    assert _mode(journal) == 0o640
    assert (os.stat(journal).st_uid, os.stat(journal).st_gid) == owner


@pytest.mark.promise("journal-handled-with-care")
def test_symlinked_journal_stays_a_symlink(emulator: RunningEmulator, tmp_path: Path) -> None:
    """A journal reached through a symlink is rewritten in place of its target."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    (tmp_path / "store").mkdir()
    (tmp_path / "job-info.jsonl").symlink_to("store/real.jsonl")
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    assert run_cli(["status"], cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "job-info.jsonl").is_symlink()
    assert len(read_journal(tmp_path / "store" / "real.jsonl")) == 1


@pytest.mark.promise("journal-handled-with-care")
def test_non_regular_journals_are_refused(emulator: RunningEmulator, tmp_path: Path) -> None:
    """/dev/null or a folder as --job-info: exit 2 with one clear line."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    (tmp_path / "folder").mkdir()
    for journal in ("/dev/null", "folder"):
        result = run_cli(
            ["--job-info", journal, "submit", "a.jsonl"], cwd=tmp_path, env=cli_env(emulator)
        )
        assert result.returncode == 2, result.stderr
        assert "not a regular file" in result.stderr
        assert "Traceback" not in result.stderr
    assert emulator.state()["files"] == []


# -- journal lines of every shape ---------------------------------------------------------
@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=60), id="slow")]
)
def test_older_line_format_is_read(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The original tool's older lines (job_name, no batch object) are records like any other."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    (line,) = read_journal(tmp_path / "job-info.jsonl")
    old = {
        "input_file": "a.jsonl",
        "job_name": line["batch"]["name"],
        "uploaded_file_name": line["uploaded_file_name"],
    }
    (tmp_path / "job-info.jsonl").write_text(json.dumps(old) + "\n")
    again = run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert f"already submitted as {line['batch']['name']}" in again.stdout
    status = run_cli(["status", "--json"], cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    (shown,) = _json_lines(status.stdout)
    assert shown["batch_name"] == line["batch"]["name"]
    assert shown["state"] in {"JOB_STATE_PENDING", "JOB_STATE_RUNNING"}
    assert len(live_batches(emulator)) == 1


@pytest.mark.promise("bad-journal-lines-kept")
def test_wrong_shape_lines_are_reported_and_kept(emulator: RunningEmulator, tmp_path: Path) -> None:
    """Valid JSON of the wrong shape: reported once with its number, kept, no crash anywhere."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    journal = tmp_path / "job-info.jsonl"
    bad = [
        '{"input_file": "b.jsonl", "batch": "notadict"}',
        '{"input_file": "c\\u0000.jsonl", "batch": {"name": "batches/x"}}',
        '{"input_file": "d.jsonl", "batch": {"state": "JOB_STATE_PENDING"}}',
        '{"input_file": "e.jsonl", "batch": {"name": 7}}',
        "[1, 2]",
    ]
    with journal.open("a") as handle:
        handle.write("\n".join(bad) + "\n")
    write_jsonl(tmp_path / "d.jsonl", 2)
    for args in (
        ["submit", "a.jsonl", "d.jsonl"],
        ["status"],
        ["download"],
        ["cancel"],
        ["cleanup"],
    ):
        result = run_cli(args, cwd=tmp_path, env=env)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.returncode in (0, 1), (args, result.stderr)
        warned = sorted(
            int(w.split(":")[2])
            for w in result.stderr.splitlines()
            if w.startswith("warning: ") and "job-info.jsonl:" in w
        )
        assert warned == [2, 3, 4, 5, 6], (args, result.stderr)
        assert "already submitted as )" not in result.stdout
        assert "already submitted as  " not in result.stdout
    lines = journal.read_text().splitlines()
    for raw in bad:
        assert raw in lines, "every unreadable line is kept verbatim"
    # d.jsonl was submitted; `cancel` above may have ended its job (if it ran within the
    # job's 2 s, as the in-process CLI does), so any state counts.
    batches = emulator.state()["batches"]
    assert any(b["displayName"].startswith("d.jsonl ") for b in batches)


# -- inputs -------------------------------------------------------------------------------
NO_AIOHTTP = (
    "import sys; sys.modules['aiohttp'] = None; "  # the quick start installs no aiohttp
    "from gembatch_async.cli import main; sys.exit(main())"
)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_non_ascii_file_names_submit(
    emulator: RunningEmulator, tmp_path: Path, transport: str
) -> None:
    """Accents and CJK in folder and file names, on both of the SDK's async transports."""
    folder = tmp_path / "résumé"
    folder.mkdir()
    write_jsonl(folder / "données-日本.jsonl", 2)
    args = ["submit", "--retry-attempts", "1", "résumé/données-日本.jsonl"]
    if transport == "httpx":
        result = subprocess.run(
            [sys.executable, "-c", NO_AIOHTTP, *args],
            cwd=tmp_path,
            env=cli_env(emulator),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    else:
        result = run_cli(args, cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = read_journal(tmp_path / "job-info.jsonl")
    assert line["input_file"] == "résumé/données-日本.jsonl"
    (batch,) = live_batches(emulator)
    assert batch["displayName"].startswith("résumé/données-日本.jsonl [gba-")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('{"key": "a", "request": {"x": NaN}}', "NaN", id="nan"),
        pytest.param('{"key": "a", "request": {"x": Infinity}}', "Infinity", id="inf"),
        pytest.param('{"key": "a", "request": {"x": -Infinity}}', "-Infinity", id="-inf"),
        pytest.param(
            '\ufeff{"key": "a", "request": {"contents": []}}', "byte order mark", id="bom"
        ),
    ],
)
@pytest.mark.promise("bad-input-uploads-nothing")
def test_not_quite_json_is_refused(
    emulator: RunningEmulator, tmp_path: Path, text: str, expected: str
) -> None:
    """NaN and the infinities are not JSON; a BOM is refused clearly: exit 2, file and line."""
    good = '{"key": "b", "request": {"contents": []}}'
    (tmp_path / "a.jsonl").write_text(f"{good}\n{text}\n" if "\ufeff" not in text else f"{text}\n")
    result = run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 2, result.stderr
    where = "a.jsonl:1:" if "\ufeff" in text else "a.jsonl:2:"
    (problem,) = [line for line in result.stderr.splitlines() if where in line]
    assert expected in problem
    assert emulator.state()["files"] == []


@pytest.mark.asyncio
async def test_a_file_that_vanishes_or_changes_after_preflight_fails_alone(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Pre-flight passed; then one file is deleted and one rewritten: those two fail, the
    third is submitted, and nothing of the two is left on the server."""
    paths = [write_jsonl(tmp_path / f"{name}.jsonl", 3, tag=name) for name in "abc"]
    emulator.set_faults("upload:1:503")  # every first upload waits for a retry ...
    events: list[Event] = []

    def mutate_on_first_retry(event: Event) -> None:
        events.append(event)
        if isinstance(event, Retrying) and sum(isinstance(e, Retrying) for e in events) == 1:
            paths[0].unlink()
            write_jsonl(paths[1], 4, tag="changed")
            emulator.set_faults("")  # ... and then goes through

    summary = await submit(
        [str(p) for p in paths],
        # One at a time: the first file's retry is the first Retrying event, so the
        # mutation lands between pre-flight and every upload that reads the files.
        settings=SubmitSettings(concurrency=1, retry=FAST_RETRY),
        job_info=tmp_path / "job-info.jsonl",
        api_key=TEST_API_KEY,
        base_url=emulator.base_url,
        on_event=mutate_on_first_retry,
    )
    failed = {Path(e.path).name: e.reason for e in events if isinstance(e, FileFailed)}
    assert set(failed) == {"a.jsonl", "b.jsonl"}, events
    assert "vanished since pre-flight" in failed["a.jsonl"]
    assert "changed " in failed["b.jsonl"]  # since pre-flight, or while being uploaded
    assert (summary.submitted, summary.failed) == (1, 2)
    state = emulator.state()
    assert len(state["files"]) == 1
    assert [b["displayName"].split(" [")[0] for b in state["batches"]] == [str(paths[2])]


# -- errors and signals -------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """One folder with a submitted, succeeded job (so download has something to write) and
    the obstacles the cases name; each case runs in its own copy. Made once per worker:
    the cases only fail, and the submit and its wait were most of each case's time."""
    folder = tmp_path_factory.mktemp("fuzz")
    write_jsonl(folder / "a.jsonl", 2)
    (folder / "blocker").write_text("a file where a folder is expected\n")
    (folder / "sub").mkdir()
    (folder / "sub" / ".gembatch-emulator").write_text("in the way\n")
    with EmulatorThread(EmulatorConfig(port=0, processing_seconds=0.2)) as emulator:
        env = cli_env(emulator)
        assert run_cli(["submit", "a.jsonl"], cwd=folder, env=env).returncode == 0
        finish_jobs(emulator, 0.2)
        (folder / "sub" / "j.jsonl").write_text("")
        yield folder, env


@pytest.mark.parametrize(
    ("args", "code"),
    [
        pytest.param(["submit", "-c", "nan", "a.jsonl"], 2, id="concurrency-nan"),
        pytest.param(["submit", "-c", "-3", "a.jsonl"], 2, id="concurrency-negative"),
        pytest.param(["submit", "--retry-attempts", "0", "a.jsonl"], 2, id="attempts-0"),
        pytest.param(["submit", "--retry-max-delay", "nan", "a.jsonl"], 2, id="delay-nan"),
        pytest.param(["submit", "--retry-seconds", "inf", "a.jsonl"], 2, id="budget-inf"),
        pytest.param(["submit", "--retry-seconds", "-1", "a.jsonl"], 2, id="budget-negative"),
        pytest.param(["submit", "--grace", "nan", "a.jsonl"], 2, id="grace-nan"),
        pytest.param(["submit", "--mime-type", "", "a.jsonl"], 2, id="mime-empty"),
        pytest.param(["submit", "--mime-type", "text/x\r\nX: y", "a.jsonl"], 2, id="mime-crlf"),
        pytest.param(["submit", "-m", " ", "a.jsonl"], 2, id="model-blank"),
        pytest.param(["submit", "a.jsonl", "missing.jsonl"], 2, id="missing-input"),
        pytest.param(
            ["--job-info", "blocker/j.jsonl", "submit", "a.jsonl"], 2, id="journal-under-file"
        ),
        pytest.param(["status", "--interval", "nan", "--watch"], 2, id="interval-nan"),
        pytest.param(["status", "--interval", "-1", "--watch"], 2, id="interval-negative"),
        pytest.param(["download", "--out", "blocker"], 2, id="out-is-a-file"),
        pytest.param(["emulator", "--port", "99999"], 2, id="port-too-big"),
        pytest.param(["emulator", "--port", "-1"], 2, id="port-negative"),
        pytest.param(["emulator", "--latency-ms", "nan"], 2, id="latency-nan"),
        pytest.param(["emulator", "--max-unfinished-batches", "-5"], 2, id="window-negative"),
        pytest.param(["emulator", "--faults", "upload:2:503"], 2, id="faults-bad"),
        pytest.param(["emulator", "--state-dir", "blocker"], 1, id="state-dir-is-a-file"),
        pytest.param(
            ["--emulator", "--job-info", "sub/j.jsonl", "status"], 2, id="emulator-dir-blocked"
        ),
    ],
)
@pytest.mark.promise("one-line-no-traceback")
def test_option_fuzz_is_one_clear_line(
    fuzz_folder: tuple[Path, dict[str, str]], tmp_path: Path, args: list[str], code: int
) -> None:
    """Wrong option values end in their documented exit code and a message, never a traceback."""
    template, env = fuzz_folder
    folder = tmp_path / "w"
    shutil.copytree(template, folder)
    result = run_cli(args, cwd=folder, env=env, timeout=30)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip(), "a failure says why"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(("error:", "gembatch-async", "  ")), last


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("secretpart\nvaluepart", id="newline"),
        pytest.param("secretpart-vålüepart", id="non-ascii"),
        pytest.param("secretpart valuepart", id="space"),
    ],
)
@pytest.mark.promise("key-never-shown")
def test_unsendable_api_key_is_refused_without_showing_it(
    emulator: RunningEmulator, tmp_path: Path, key: str
) -> None:
    """A key that cannot go in a header: exit 2, nothing sent, no part of it in any escaping."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator, GEMINI_API_KEY=key)
    for args in (["submit", "a.jsonl"], ["status"]):
        if args == ["status"]:
            (tmp_path / "job-info.jsonl").write_text(
                json.dumps({"input_file": "a.jsonl", "batch": {"name": "batches/x"}}) + "\n"
            )
        result = run_cli(args, cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        assert "API key" in result.stderr
        shown = result.stdout + result.stderr
        for fragment in ("secretpart", "valuepart", "vålüepart", "v\\xe5", "v\\u00e5"):
            assert fragment not in shown
    assert emulator.state()["files"] == []


@pytest.mark.promise("unrecorded-batches-named")
def test_journal_append_failure_names_every_unrecorded_batch(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The journal cannot grow (file size limit, as a full disk): each created batch is
    named, exit 1; the next run records those batches instead of creating new ones."""
    names = [write_jsonl(tmp_path / f"f{i}.jsonl", 2, tag=str(i)).name for i in range(3)]
    journal = tmp_path / "job-info.jsonl"
    journal.write_text(
        json.dumps({"input_file": "old.jsonl", "batch": {"name": "batches/old"}, "pad": "x" * 400})
        + "\n"
    )
    limit = 200  # below the journal's size: every append fails, the lock file still fits

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "gembatch_async", "submit", "-c", "1", *names],
        cwd=tmp_path,
        env=cli_env(emulator),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=limit_file_size,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    created = {b["name"] for b in emulator.state()["batches"]}
    assert created, "at least one batch was created before the append failed"
    for name in created:
        assert f"batch {name} was created but could not be recorded" in result.stdout
    assert len(read_journal(journal)) == 1
    rerun = run_cli(["submit", *names], cwd=tmp_path, env=cli_env(emulator))
    assert rerun.returncode == 0, rerun.stderr
    recorded = {line["batch"]["name"] for line in read_journal(journal)[1:]}
    assert created <= recorded, "the next run records the batches it finds"
    assert len(emulator.state()["batches"]) == 3, "and creates only the missing ones"


@pytest.mark.promise("submit-stop-bound")
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_first_stop_signal_ends_within_the_stated_bound(
    emulator: RunningEmulator, tmp_path: Path, signal_number: int
) -> None:
    """A create that takes 4 s is in flight; with --grace 1 the run ends within 2 x grace
    (plus start-up slack), keeps the upload the create may still use, exits 130, and the
    next run records the batch the create made after all."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    emulator.set_faults("create:1:slow=4")
    process = cli_popen(
        ["submit", "--grace", "1", "a.jsonl"],
        cwd=tmp_path,
        env=cli_env(emulator),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(creates_reached(emulator, 1))
    started = time.monotonic()
    process.send_signal(signal_number)
    out, err = process.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert process.returncode == 130, out + err
    assert elapsed < 2 * 1 + 1.5, f"took {elapsed:.1f}s"
    assert "its batch may still be created" in out
    emulator.set_faults("")
    wait_until(lambda: len(emulator.state()["batches"]) == 1, timeout=10)
    assert len(emulator.state()["files"]) == 1, "the upload stays for the create"
    rerun = run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert rerun.returncode == 0, rerun.stderr
    assert "adopted" in rerun.stdout
    assert_converged(emulator.state(), read_journal(tmp_path / "job-info.jsonl"), ["a.jsonl"])
