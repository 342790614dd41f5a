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

from gembatch_async import JournalError, submit
from gembatch_async._journal import (
    Journal,
    encode_line,
    input_sha256_of,
    is_round_line,
    keys_sha256,
    unit_sha256_of,
)

from ..test_promises import traced_syscalls


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
    journal.record([line("c.jsonl", "batches/c")])  # nobody wrote meanwhile: folded in at once
    assert journal.refresh().history == {"a.jsonl": 1, "b.jsonl": 1, "c.jsonl": 1, "x.jsonl": 1}
    with path.open("ab") as other:
        other.write(b"not json\n")
    view = journal.refresh()
    assert [(p.line, p.message.startswith("not valid JSON")) for p in view.problems] == [(5, True)]
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


@pytest.mark.promise("bad-journal-lines-kept")
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
async def test_a_line_without_a_batch_does_not_record_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-made line with no batch name is reported and records nothing (issue 8:
    never "already submitted as " with an empty name); a journal of only such lines is
    not a journal and is refused, untouched."""
    (tmp_path / "a.jsonl").write_text('{"key": "k", "request": {}}\n')
    journal = tmp_path / "job-info.jsonl"
    journal.write_text('{"input_file": "a.jsonl", "count": 1}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JournalError, match="not a gembatch journal"):
        await submit(["a.jsonl"], job_info=journal, api_key="unused")
    assert journal.read_text() == '{"input_file": "a.jsonl", "count": 1}\n'
    journal.write_text(
        encode_line(line("b.jsonl", "batches/b")).decode() + '{"input_file": "a.jsonl"}\n'
    )
    view = Journal(journal).open()
    assert sorted(view.latest) == ["b.jsonl"]
    assert [(p.line, p.message.split(" (")[0]) for p in view.problems] == [(2, "no batch name")]


# -- reading: torn tails, blank lines, problems -----------------------------------------


@pytest.mark.promise("torn-journal-line-cut")
def test_torn_tail_cut_after_several_lines_keeps_them_all(tmp_path: Path) -> None:
    """Only the unfinished last line goes; every whole line before it stays."""
    path = tmp_path / "job-info.jsonl"
    whole = b"".join(encode_line(line(f"{n}.jsonl", f"batches/{n}")) for n in "abc")
    path.write_bytes(whole + b'{"input_file": "d.js')
    view = Journal(path).open()
    assert sorted(view.latest) == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert path.read_bytes() == whole
    assert [(p.line, p.message) for p in view.problems] == [
        (4, "removed an unfinished last line (20 bytes) left by a crash")
    ]


@pytest.mark.promise("torn-journal-line-cut")
def test_torn_tail_longer_than_one_read_is_cut_too(tmp_path: Path) -> None:
    """A torn line of 200 KB (the tail is read backwards in 64 KiB steps) is cut whole."""
    path = tmp_path / "job-info.jsonl"
    whole = encode_line(line("a.jsonl", "batches/a"))
    path.write_bytes(whole + b'{"input_file": "' + b"x" * 200_000)
    view = Journal(path).open()
    assert list(view.latest) == ["a.jsonl"]
    assert path.read_bytes() == whole
    assert [p.line for p in view.problems] == [2]


def test_empty_journal_is_no_problem(tmp_path: Path) -> None:
    """An empty job-info.jsonl (created, nothing recorded yet) reads as empty, silently."""
    path = tmp_path / "job-info.jsonl"
    path.touch()
    view = Journal(path).open()
    assert (view.latest, view.problems) == ({}, [])
    assert path.read_bytes() == b""


def test_whole_last_line_without_newline_is_reported(tmp_path: Path) -> None:
    """A last line that is whole but lacks its newline gets one, and says so once."""
    path = tmp_path / "job-info.jsonl"
    path.write_bytes(encode_line(line("a.jsonl", "batches/a")).rstrip(b"\n"))
    view = Journal(path).open()
    assert [(p.journal, p.line, p.message) for p in view.problems] == [
        (str(path), 1, "last line had no newline; added one")
    ]
    assert Journal(path).open().problems == []


@pytest.mark.parametrize(
    "last",
    [
        pytest.param(b"", id="all-json"),
        pytest.param(b"{oops\n", id="invalid-json"),
        pytest.param(b'{"input_file": "y"}, {"input_file": "z"}\n', id="two-values"),
    ],
)
def test_blank_lines_are_not_problems(tmp_path: Path, last: bytes) -> None:
    """Blank lines (a hand edit) are skipped silently but still counted for line numbers,
    whether the journal decodes in one go or line by line (when a line is not one value)."""
    path = tmp_path / "job-info.jsonl"
    a, b = (encode_line(line(f"{n}.jsonl", f"batches/{n}")) for n in "ab")
    path.write_bytes(a + b"\n  \n" + b + b"[1]\n" + last)
    view = Journal(path).open()
    assert sorted(view.latest) == ["a.jsonl", "b.jsonl"]
    reported = [(p.line, p.message.split(" (")[0]) for p in view.problems]
    assert reported == [(5, "not a JSON object; line skipped")] + [(6, "not valid JSON")] * bool(
        last
    )


def test_lines_that_are_not_job_lines_say_why(tmp_path: Path) -> None:
    """Each unreadable line is reported with its number and the reason."""
    path = tmp_path / "job-info.jsonl"
    first = encode_line(line("a.jsonl", "batches/a")).decode()
    nul = '{"input_file": "a\\u0000.jsonl", "batch": {"name": "batches/n"}}\n'
    # A string where the batch object belongs, though its older job_name names a batch.
    flat = '{"input_file": "b.jsonl", "batch": "batches/b", "job_name": "batches/b"}\n'
    path.write_text(first + '[1]\n{"count": 1}\n{"input_file": 3}\n{oops\n' + nul + flat)
    view = Journal(path).open()
    assert [(p.line, p.message.split(" (")[0]) for p in view.problems] == [
        (2, "not a JSON object; line skipped"),
        (3, 'no "input_file"; line skipped'),
        (4, 'no "input_file"; line skipped'),
        (5, "not valid JSON"),
        (6, '"input_file" holds a NUL character; line skipped'),
        (7, '"batch" is not a JSON object; line skipped'),
    ]


def test_refresh_after_another_process_rewrote_the_journal(tmp_path: Path) -> None:
    """A rewrite elsewhere (status) replaces the file: refresh reads the new one from the
    start, so updated states are seen and new problems are reported."""
    path = tmp_path / "job-info.jsonl"
    mine = opened(path)
    mine.record([line("a.jsonl", "batches/a")])
    assert mine.refresh().latest["a.jsonl"]["batch"]["state"] == "JOB_STATE_PENDING"
    other = opened(path)
    other.rewrite(lambda job: {**job, "batch": {"name": "batches/a", "state": "JOB_STATE_FAILED"}})
    with path.open("ab") as tail:
        tail.write(b"junk\n")
    view = mine.refresh()
    assert view.latest["a.jsonl"]["batch"]["state"] == "JOB_STATE_FAILED"
    assert [p.line for p in view.problems] == [2]


# -- the lock file -------------------------------------------------------------------------


def test_lock_file_sits_beside_the_journal(tmp_path: Path) -> None:
    """Claims live in ``job-info.jsonl.lock`` (mode 0644 less the umask), as documented."""
    mask = os.umask(0o022)
    os.umask(mask)
    opened(tmp_path / "job-info.jsonl")
    lock = tmp_path / "job-info.jsonl.lock"
    assert lock.exists()
    assert stat.S_IMODE(lock.stat().st_mode) == 0o644 & ~mask


def test_a_journal_that_is_not_open_says_so(tmp_path: Path) -> None:
    """Before open and after close, using the journal raises JournalError, not a crash."""
    journal = Journal(tmp_path / "job-info.jsonl")
    with pytest.raises(JournalError, match="is not open"):
        journal.try_claim("a.jsonl")
    journal.open()
    journal.close()
    with pytest.raises(JournalError, match="is not open"):
        journal.try_claim("a.jsonl")


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_journals_share_one_lock_descriptor_and_close_it(tmp_path: Path) -> None:
    """Two journals on one file share the lock descriptor: closing one leaves the other
    working; closing both closes it (no descriptor leaks across runs)."""
    path = tmp_path / "job-info.jsonl"
    before = _open_descriptors()
    first, second, third = opened(path), opened(path), opened(path)
    assert _open_descriptors() == before + 1
    first.close()
    second.record([line("a.jsonl", "batches/a")])
    assert second.try_claim("a.jsonl")
    second.release_claim("a.jsonl")
    second.close()
    third.record([line("b.jsonl", "batches/b")])
    third.close()
    assert _open_descriptors() == before
    assert sorted(Journal(path).open().latest) == ["a.jsonl", "b.jsonl"]


def test_journal_in_a_new_folder_and_errors_that_name_the_file(tmp_path: Path) -> None:
    """--job-info may point into folders that do not exist yet; a journal that cannot be
    opened or read raises JournalError naming the file and the reason."""
    nested = tmp_path / "a" / "b" / "job-info.jsonl"
    opened(nested).record([line("a.jsonl", "batches/a")])
    assert sorted(Journal(nested).open().latest) == ["a.jsonl"]
    (tmp_path / "file").write_text("")
    blocked = tmp_path / "file" / "job-info.jsonl"
    with pytest.raises(JournalError, match=re.escape(f"cannot read {blocked}: Not a directory")):
        Journal(blocked).open()
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    with pytest.raises(JournalError, match=re.escape(f"{folder} is not a regular file")):
        Journal(folder).open()


def test_problems_name_the_journal(tmp_path: Path) -> None:
    """Every reported problem carries the journal's path, for the warning line."""
    path = tmp_path / "job-info.jsonl"
    path.write_text(
        encode_line(line("a.jsonl", "batches/a")).decode() + '[1]\n{"input_file": "x.js'
    )
    assert {p.journal for p in Journal(path).open().problems} == {str(path)}


def test_someone_elses_last_line_without_newline_is_kept_not_cut(tmp_path: Path) -> None:
    """Only a fragment of one of our lines counts as torn: a hand-written last line (not
    ``{"input_file"...``) without a newline is kept byte for byte and gets its newline."""
    path = tmp_path / "job-info.jsonl"
    ours = encode_line(line("a.jsonl", "batches/a"))
    path.write_bytes(ours + b"note: resubmit b on monday")
    view = Journal(path).open()
    assert [(p.line, p.message.split(" (")[0]) for p in view.problems] == [
        (2, "last line had no newline; added one"),
        (2, "not valid JSON"),
    ]
    assert path.read_bytes() == ours + b"note: resubmit b on monday\n"


def test_the_whole_inputs_sha256_a_line_records() -> None:
    """What the hard-link look-up indexes a line under: a whole input's line its
    ``sha256``; a part's line the whole input's ``input_sha256``, never the part's own
    (an older part line without it: nothing); a non-string: nothing."""
    assert input_sha256_of({"input_file": "a", "sha256": "W"}) == "W"
    part = {"input_file": "a", "sha256": "P", "part": 1, "parts": 2}
    assert input_sha256_of({**part, "input_sha256": "W"}) == "W"
    assert input_sha256_of(part) is None
    assert input_sha256_of({"input_file": "a", "sha256": 7}) is None


def test_keys_sha256_is_the_recorded_definition() -> None:
    """``carries[].keys_sha256`` is compared with what earlier runs wrote, so its definition
    is fixed: the sha256 of the sorted keys as a compact JSON array in UTF-8 (lone
    surrogates of non-UTF-8 keys passed through), whatever order the keys come in."""
    keys = ["q2", "q10", "\u00e9", '"', "\udce9"]
    # sha256 of b'["\\"","q10","q2","\xc3\xa9","\xed\xb3\xa9"]'
    expected = "f154bc4e3975b2075a9c03e2824bda554fb78f159f9e9347ef6ea583976c009d"
    assert keys_sha256(keys) == expected
    assert keys_sha256(reversed(keys)) == expected
    assert keys_sha256([]) == "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"


def test_the_sha256_a_lines_job_was_made_for() -> None:
    """What "changed since it was submitted" compares the input with: a whole input's or a
    part's line its own ``sha256``; a round's line (``round``) the whole input's
    ``input_sha256``, its own being the generated file's. A packed job's line carries its
    inputs too but is no round: its own ``sha256`` is its input's."""
    whole = {"input_file": "a", "sha256": "W"}
    part = {**whole, "sha256": "P", "part": 1, "parts": 2, "input_sha256": "W"}
    packed = {**whole, "carries": [{"input": "a", "sha256": "W"}], "pack": {"index": 0}}
    round_ = {**whole, "sha256": "R", "input_sha256": "W", "round": 1, "carries": []}
    assert [unit_sha256_of(x) for x in (whole, part, packed, round_)] == ["W", "P", "W", "W"]
    assert [is_round_line(x) for x in (whole, part, packed, round_)] == [False] * 3 + [True]
