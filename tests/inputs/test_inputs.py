"""Input validation: every line checked, streamed, with line numbers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gembatch_async._inputs import JobLimits, scan_file, unique_paths

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

# hypothesis is imported inside the tests that use it (~2 CPU s of imports): every
# xdist worker collects every module, but only the one running these tests needs it.


def _good_lines() -> SearchStrategy[list[dict[str, object]]]:
    from hypothesis import strategies as st

    requests = st.fixed_dictionaries({"contents": st.just([{"parts": [{"text": "hi"}]}])})
    return st.lists(
        st.builds(lambda k, r: {"key": k, "request": r}, st.text(min_size=1, max_size=8), requests),
        min_size=1,
        max_size=20,
        unique_by=lambda obj: obj["key"],
    )


def _bad_values() -> SearchStrategy[str]:
    from hypothesis import strategies as st

    return st.one_of(
        st.just("not json"),
        st.just("[1, 2]"),
        # A key no good line uses: a bad line that shares a good line's key is also a
        # duplicate there (two problems, rightly), which is another test's concern.
        st.just('{"key": "not-a-good-key!"}'),
        st.just('{"request": 5}'),
        st.just('{"key": 7, "request": {}}'),
    )


def test_valid_files_pass_with_count_and_hash(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any file of keyed request objects passes; count and sha256 are exact."""
    from hypothesis import given, settings

    @given(lines=_good_lines())
    @settings(max_examples=40, deadline=None)
    def check(lines: list[dict[str, object]]) -> None:
        folder = tmp_path_factory.mktemp("v")
        path = folder / "a.jsonl"
        data = "".join(json.dumps(obj) + "\n" for obj in lines).encode()
        path.write_bytes(data)
        item, problems = scan_file(str(path))
        assert problems == []
        assert item is not None
        assert item.count == len(lines)
        assert item.sha256 == hashlib.sha256(data).hexdigest()

    check()


def test_one_bad_line_is_found_at_its_number(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A broken line anywhere is reported with its exact line number."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @given(lines=_good_lines(), bad=_bad_values(), position=st.integers(min_value=0, max_value=20))
    @settings(max_examples=40, deadline=None)
    def check(lines: list[dict[str, object]], bad: str, position: int) -> None:
        folder = tmp_path_factory.mktemp("b")
        path = folder / "a.jsonl"
        text = [json.dumps(obj) for obj in lines]
        index = min(position, len(text))
        text.insert(index, bad)
        path.write_text("\n".join(text) + "\n")
        item, problems = scan_file(str(path))
        assert item is None
        assert {p.line for p in problems} == {index + 1}

    check()


def test_blank_lines_do_not_count(tmp_path: Path) -> None:
    """Blank lines are ignored but line numbers still count them."""
    path = tmp_path / "a.jsonl"
    path.write_text(
        '\n{"request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n\n  \n{"request": 1}\n'
    )
    _item, problems = scan_file(str(path))
    assert [(p.line, p.message) for p in problems] == [(5, '"request" must be a JSON object')]


def test_many_problems_are_capped(tmp_path: Path) -> None:
    """A file of garbage gives 20 problems and a count of the rest, not a flood."""
    path = tmp_path / "a.jsonl"
    path.write_text("x\n" * 100)
    _, problems = scan_file(str(path))
    assert len(problems) == 21
    assert "80 more" in problems[-1].message


def test_a_line_over_the_job_limit_is_refused(tmp_path: Path) -> None:
    """A file over a job's limit is split; a single line over it cannot be, and is refused."""
    path = tmp_path / "a.jsonl"
    line = '{"key": "k0", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n'
    path.write_text(line + line.replace("k0", "k1"))
    item, problems = scan_file(str(path), JobLimits(max_bytes=len(line) - 1))
    assert item is None
    assert problems[0].line == 1
    assert "more than one job may take" in problems[0].message


def test_parts_are_planned_at_line_boundaries(tmp_path: Path) -> None:
    """By bytes or by requests, each part is whole lines; the parts cover the file."""
    path = tmp_path / "a.jsonl"
    lines = [
        f'{{"key": "k{i}", "request": {{"contents": [{{"parts": [{{"text": "{"x" * i}"}}]}}]}}}}\n'
        for i in range(10)
    ]
    path.write_text("".join(lines))
    data = path.read_bytes()
    for limits, parts in ((JobLimits(max_requests=4), 3), (JobLimits(max_bytes=300), 3)):
        item, problems = scan_file(str(path), limits)
        assert item is not None, problems
        assert len(item.parts) == parts
        assert all(p.end - p.start <= limits.max_bytes for p in item.parts)
        assert item.parts[0].start == 0
        assert item.parts[-1].end == len(data)
        for before, after in zip(item.parts, item.parts[1:], strict=False):
            assert before.end == after.start
            assert data[before.end - 1 : before.end] == b"\n"
        assert sum(p.count for p in item.parts) == 10
        for part in item.parts:
            assert hashlib.sha256(data[part.start : part.end]).hexdigest() == part.sha256
    whole, _ = scan_file(str(path), JobLimits(max_requests=10))
    assert whole is not None
    assert whole.parts == ()


def test_paths_normalised_and_unique() -> None:
    """./a and a are one path; order kept."""
    assert unique_paths(["./a.jsonl", "b.jsonl", "a.jsonl", "x/../b.jsonl"]) == [
        "a.jsonl",
        "b.jsonl",
    ]


def test_duplicate_keys_found_beyond_one_sort_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys far apart, past the in-memory run size, are still found as duplicates."""
    from gembatch_async import _keysort

    monkeypatch.setattr(_keysort, "RUN_SIZE", 256)
    path = tmp_path / "a.jsonl"
    request = {"contents": [{"parts": [{"text": "hi"}]}]}
    lines = [json.dumps({"key": f"k{i}", "request": request}) for i in range(3000)]
    lines.append(json.dumps({"key": "k7", "request": request}))
    path.write_text("\n".join(lines) + "\n")
    _, problems = scan_file(str(path))
    assert [(p.line, p.message) for p in problems] == [
        (3001, "duplicate key 'k7' (first on line 8)")
    ]


def test_external_sort_of_hashes_matches_sorted() -> None:
    """Spilled, merged runs give exactly sorted(), and the repeated values."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gembatch_async._keysort import SortedHashes, repeated

    @given(values=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300))
    @settings(max_examples=60, deadline=None)
    def check(values: list[int]) -> None:
        with SortedHashes(run_size=16) as sorter:
            for value in values:
                sorter.add(value)
            assert list(sorter) == sorted(values)
            assert repeated(sorter, 10_000) == {v for v in values if values.count(v) > 1}

    check()


def test_external_sort_of_records_matches_sorted() -> None:
    """Fixed-width records, spilled in runs and merged through tiny buffers: sorted()."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gembatch_async import _keysort
    from gembatch_async._keysort import SortedRecords

    @given(
        records=st.lists(st.binary(min_size=5, max_size=5), max_size=400),
        run_size=st.integers(1, 50),
        buffer=st.integers(1, 64),
    )
    @settings(max_examples=60, deadline=None)
    def check(records: list[bytes], run_size: int, buffer: int) -> None:
        original = _keysort.MERGE_BUFFER_BYTES, _keysort._MIN_READ_BYTES
        _keysort.MERGE_BUFFER_BYTES, _keysort._MIN_READ_BYTES = buffer, 1
        try:
            with SortedRecords(5, run_size=run_size) as sorter:
                for record in records:
                    sorter.add(record)
                assert list(sorter) == sorted(records)
                assert sorter.count == len(records)
        finally:
            _keysort.MERGE_BUFFER_BYTES, _keysort._MIN_READ_BYTES = original

    check()
