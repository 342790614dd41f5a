"""job-info.jsonl: torn lines, garbage, the original tool's format, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from gembatch_async._journal import Journal

ORIGINAL_LINE = (
    '{"input_file": "examples/basic.jsonl", "count": 5, "uploaded_file_name": "files/abc123", '
    '"batch": {"name": "batches/xyz", "display_name": "examples/basic.jsonl", "model": '
    '"models/gemini-2.5-flash-lite-preview-06-17", "state": "JOB_STATE_PENDING", "create_time": '
    '"2025-07-12T19:20:35.001992+00:00", "update_time": "2025-07-12T19:25:11.084462+00:00"}}'
)


def line(path: str, batch: str) -> dict[str, object]:
    return {"input_file": path, "count": 1, "batch": {"name": batch, "state": "JOB_STATE_PENDING"}}


def test_reads_original_gembatch_format(tmp_path: Path) -> None:
    """A line the original gembatch tool wrote is read as a recorded job."""
    path = tmp_path / "job-info.jsonl"
    path.write_text(ORIGINAL_LINE + "\n")
    journal = Journal(path)
    view = journal.open()
    assert view.latest["examples/basic.jsonl"]["batch"]["name"] == "batches/xyz"
    assert view.uploads_in_use == {"files/abc123"}
    assert view.problems == []


@pytest.mark.promise("torn-journal-line-cut")
def test_torn_last_line_is_repaired_and_reported_once(tmp_path: Path) -> None:
    """A crash mid-append leaves half a line: it is cut, reported once, and appends go on."""
    path = tmp_path / "job-info.jsonl"
    path.write_text(json.dumps(line("a.jsonl", "batches/a")) + "\n" + '{"input_file": "b.js')
    journal = Journal(path)
    view = journal.open()
    assert [(p.line, "unfinished" in p.message) for p in view.problems] == [(2, True)]
    assert list(view.latest) == ["a.jsonl"]
    journal.record([line("c.jsonl", "batches/c")])
    journal.close()
    again = Journal(path).open()
    assert again.problems == []
    assert sorted(again.latest) == ["a.jsonl", "c.jsonl"]


def test_whole_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    """A complete last line that lacks only its newline is kept."""
    path = tmp_path / "job-info.jsonl"
    path.write_text(ORIGINAL_LINE)
    view = Journal(path).open()
    assert "examples/basic.jsonl" in view.latest
    assert path.read_text().endswith("}\n")


@pytest.mark.promise("bad-journal-lines-kept")
def test_garbage_in_the_middle_is_reported_and_kept(tmp_path: Path) -> None:
    """A bad line elsewhere is reported with its number, skipped, and survives a rewrite."""
    path = tmp_path / "job-info.jsonl"
    good = json.dumps(line("a.jsonl", "batches/a"))
    path.write_text(f"{good}\nthis is not json\n{json.dumps(line('b.jsonl', 'batches/b'))}\n")
    journal = Journal(path)
    view = journal.open()
    assert [(p.line, p.message.startswith("not valid JSON")) for p in view.problems] == [(2, True)]
    assert sorted(view.latest) == ["a.jsonl", "b.jsonl"]
    journal.rewrite(lambda job: {**job, "note": "refreshed"})
    lines = path.read_text().splitlines()
    assert lines[1] == "this is not json"
    assert json.loads(lines[0])["note"] == "refreshed"


def test_latest_line_wins_and_history_counts(tmp_path: Path) -> None:
    """Resubmissions append; the newest line is the file's record."""
    path = tmp_path / "job-info.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record([line("a.jsonl", "batches/1")])
    journal.record([line("a.jsonl", "batches/2")])
    view = Journal(path).open()
    assert view.latest["a.jsonl"]["batch"]["name"] == "batches/2"
    assert view.history["a.jsonl"] == 2


def _append_many(path: str, worker: int, count: int) -> None:
    journal = Journal(path)
    journal.open()
    for i in range(count):
        journal.record([line(f"w{worker}-{i}.jsonl", f"batches/{worker}-{i}")])
    journal.close()


@pytest.mark.promise("several-processes")
def test_concurrent_processes_lose_no_line(tmp_path: Path) -> None:
    """Four processes appending at once: every line arrives whole."""
    path = tmp_path / "job-info.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w, 50)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    view = Journal(path).open()
    assert view.problems == []
    assert len(view.latest) == 200


def test_rewrite_keeps_lines_appended_by_others(tmp_path: Path) -> None:
    """A rewrite re-reads under the lock, so another writer's new line survives it."""
    path = tmp_path / "job-info.jsonl"
    mine = Journal(path)
    mine.open()
    mine.record([line("a.jsonl", "batches/a")])
    _append_many(str(path), 9, 1)  # another process's append, after our read
    mine.rewrite(lambda job: job)
    assert sorted(Journal(path).open().latest) == ["a.jsonl", "w9-0.jsonl"]


def test_claims_exclude_other_processes(tmp_path: Path) -> None:
    """A claim held by one process is refused to another; releasing it frees it."""
    path = tmp_path / "job-info.jsonl"
    journal = Journal(path)
    journal.open()
    assert journal.try_claim("gba-1")
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        assert pool.apply(_try_claim, (str(path), "gba-1")) is False
        assert pool.apply(_try_claim, (str(path), "gba-2")) is True
        journal.release_claim("gba-1")
        assert pool.apply(_try_claim, (str(path), "gba-1")) is True


_HOLD_CLAIM = """
import os, signal, sys, time
from gembatch_async._journal import Journal
journal = Journal(sys.argv[1])
journal.open()
assert journal.try_claim("gba-1")
print("claimed", flush=True)
sys.stdin.readline()  # wait for the word; then leave without releasing anything
if sys.argv[2] == "exit":
    os._exit(0)
time.sleep(60)  # killed meanwhile
"""


@pytest.mark.promise("several-processes")
@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_claim_is_freed_when_its_process_ends(tmp_path: Path, end: str) -> None:
    """A process that takes a claim and exits, or is killed, without releasing it: the claim
    is refused while it lives and free once it is gone (no stale lock, ever)."""
    path = tmp_path / "job-info.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CLAIM, str(path), end],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "claimed"
        journal = Journal(path)
        journal.open()
        assert journal.try_claim("gba-1") is False
        if end == "exit":
            holder.stdin.write("go\n")
            holder.stdin.flush()
        else:
            holder.kill()
        holder.wait(timeout=30)
        assert journal.try_claim("gba-1") is True
        journal.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdin.close()
        holder.stdout.close()


def _try_claim(path: str, identity: str) -> bool:
    journal = Journal(path)
    journal.open()
    try:
        return journal.try_claim(identity)
    finally:
        journal.close()


def test_append_after_a_dead_writers_fragment_stays_whole(tmp_path: Path) -> None:
    """Another writer died mid-line while we run: our next line is not glued to its fragment."""
    path = tmp_path / "job-info.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record([line("a.jsonl", "batches/a")])
    with path.open("ab") as handle:
        handle.write(b'{"input_file": "dead.js')
    journal.record([line("b.jsonl", "batches/b")])
    view = Journal(path).open()
    assert sorted(view.latest) == ["a.jsonl", "b.jsonl"]
    assert [p.line for p in view.problems] == [2]


def test_two_journals_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """Claims are per process in POSIX; ours also hold between two Journal objects."""
    path = tmp_path / "job-info.jsonl"
    first, second = Journal(path), Journal(path)
    first.open()
    second.open()
    assert first.try_claim("a.jsonl")
    assert not second.try_claim("a.jsonl")
    second.close()  # must not drop the first one's lock
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        assert pool.apply(_try_claim, (str(path), "a.jsonl")) is False


def test_line_with_two_values_is_reported(tmp_path: Path) -> None:
    """A line holding two JSON values is caught even though the batch parse would accept it."""
    path = tmp_path / "job-info.jsonl"
    first = json.dumps(line("a.jsonl", "batches/a"))
    path.write_text(f"{first}\n{first}, {first}\n")
    view = Journal(path).open()
    assert [p.line for p in view.problems] == [2]
    assert list(view.latest) == ["a.jsonl"]
