"""job-info.jsonl's finer guarantees, each found unguarded by ``nox -s mutants``.

Whole lines and nothing else, line numbers that point at the right line,
other writers' lines never skipped, rewrites through a synced temporary file
in the same folder, and errors that name the journal.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from gembatch_async import FileSkipped, JournalError, submit
from gembatch_async._journal import Journal, encode_line

from .test_promises import traced_syscalls


def line(path: str, batch: str) -> dict[str, object]:
    return {"input_file": path, "count": 1, "batch": {"name": batch, "state": "JOB_STATE_PENDING"}}


def opened(path: Path) -> Journal:
    journal = Journal(path)
    journal.open()
    return journal


def test_appends_are_exactly_the_lines(tmp_path: Path) -> None:
    """Three appends leave three lines and not a byte more (no blank line between them)."""
    path = tmp_path / "job-info.jsonl"
    journal = opened(path)
    lines = [line(f"{name}.jsonl", f"batches/{name}") for name in "abc"]
    for job in lines:
        journal.record([job])
    assert path.read_bytes() == b"".join(encode_line(job) for job in lines)


def test_own_appends_and_other_writers_lines_are_all_seen(tmp_path: Path) -> None:
    """Our appends are folded in; a line another process appended between two of ours is
    read too (never skipped), and a later bad line is reported with its true number."""
    path = tmp_path / "job-info.jsonl"
    journal = opened(path)
    journal.record([line("a.jsonl", "batches/a")])
    view = journal.refresh()
    assert (view.lines_read, view.offset) == (1, path.stat().st_size)
    with path.open("ab") as other:  # another process's whole line
        other.write(encode_line(line("x.jsonl", "batches/x")))
    journal.record([line("b.jsonl", "batches/b")])
    view = journal.refresh()
    assert sorted(view.latest) == ["a.jsonl", "b.jsonl", "x.jsonl"]
    assert view.history == {"a.jsonl": 1, "b.jsonl": 1, "x.jsonl": 1}
    with path.open("ab") as other:
        other.write(b"not json\n")
    view = journal.refresh()
    assert [(p.line, p.message.startswith("not valid JSON")) for p in view.problems] == [(4, True)]
    journal.close()


def test_torn_line_is_reported_at_its_number(tmp_path: Path) -> None:
    """Counting starts at the first byte: a blank first line still counts as line 1."""
    path = tmp_path / "job-info.jsonl"
    path.write_text("\n" + json.dumps(line("a.jsonl", "batches/a")) + '\n{"input_file": "b.js')
    view = Journal(path).open()
    assert [p.line for p in view.problems] == [3]


def test_journal_is_created_readable_not_executable(tmp_path: Path) -> None:
    """A new journal gets mode 0644 (less the umask), like any data file."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = tmp_path / "job-info.jsonl"
    opened(path).record([line("a.jsonl", "batches/a")])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~mask


def test_append_failure_names_the_journal(tmp_path: Path) -> None:
    """An append that cannot be made raises JournalError naming the file and the reason."""
    path = tmp_path / "job-info.jsonl"
    journal = opened(path)
    path.mkdir()  # the journal's place is taken by a folder
    with pytest.raises(JournalError, match=re.escape(f"cannot append to {path}: Is a directory")):
        journal.record([line("a.jsonl", "batches/a")])


def test_rewrite_keeps_unreadable_lines_byte_for_byte(tmp_path: Path) -> None:
    """Garbage in the middle stays as it was; a dead writer's fragment at the end becomes a
    line of its own (so the next append is not glued to it); no blank line appears."""
    path = tmp_path / "job-info.jsonl"
    good = json.dumps(line("a.jsonl", "batches/a"))
    path.write_text(f"{good}\nthis is not json\n")
    journal = opened(path)
    with path.open("ab") as dying:
        dying.write(b'{"input_file": "dead.js')
    journal.rewrite(lambda job: {**job, "note": 1})
    text = path.read_text()
    assert text.endswith('{"input_file": "dead.js\n')
    assert text.splitlines()[1:] == ["this is not json", '{"input_file": "dead.js']
    assert json.loads(text.splitlines()[0])["note"] == 1
    journal.record([line("b.jsonl", "batches/b")])
    assert sorted(Journal(path).open().latest) == ["a.jsonl", "b.jsonl"]


def test_rewrite_goes_through_a_synced_temporary_file_in_the_same_folder(
    tmp_path: Path,
) -> None:
    """Atomic and durable: the new content is written to ``job-info.jsonl.*`` beside the
    journal, fsynced, renamed over it, and then the folder is fsynced (strace watches)."""
    path = tmp_path / "job-info.jsonl"
    journal = opened(path)
    journal.record([line("a.jsonl", "batches/a")])
    trace_file = tmp_path / "strace.txt"
    with traced_syscalls(trace_file, "trace=write,fsync,fdatasync,rename,renameat,renameat2"):
        journal.rewrite(lambda job: {**job, "note": 1})
    trace = trace_file.read_text().splitlines()
    folder = re.escape(str(tmp_path.resolve()))
    temp = rf"{folder}/job-info\.jsonl\.[^/>\"]+"
    wrote = _first(trace, rf"write\(\d+<({temp})>")
    synced = _first(trace, rf"f(?:data)?sync\(\d+<({temp})>")
    renamed = _first(trace, rf'rename(?:at2?)?\(.*"({temp})".*"{folder}/job-info\.jsonl"')
    folder_synced = _first(trace, rf"fsync\(\d+<{folder}>\)")
    assert None not in (wrote, synced, renamed, folder_synced), "\n".join(trace[-40:])
    assert wrote < synced < renamed < folder_synced  # type: ignore[operator]


def _first(trace: list[str], pattern: str) -> int | None:
    return next((i for i, text in enumerate(trace) if re.search(pattern, text)), None)


@pytest.mark.asyncio
async def test_a_line_without_a_batch_counts_as_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-made line with no batch still records the file: skipped, no batch name, no
    request (and no crash)."""
    (tmp_path / "a.jsonl").write_text('{"key": "k", "request": {}}\n')
    journal = tmp_path / "job-info.jsonl"
    journal.write_text('{"input_file": "a.jsonl", "count": 1}\n')
    events: list[object] = []
    monkeypatch.chdir(tmp_path)
    summary = await submit(["a.jsonl"], job_info=journal, api_key="unused", on_event=events.append)
    assert summary.skipped == 1
    assert events == [FileSkipped("a.jsonl", "", 1, 1, False)]
