"""Sorting in bounded memory: request-key hashes, and fixed-width records keyed by them.

A 1 GiB input of short requests holds ten million keys; a set of them, or even
``sorted()`` of an array of their hashes, would grow memory with the file. Here
values are sorted in runs of a fixed size, spilled to a temporary file, and
merged back as a stream (an external merge sort), so memory stays flat.

Two front ends share the spilling and merging: :class:`SortedHashes` (64-bit
ints, for duplicate and missing-key checks) and :class:`SortedRecords`
(fixed-width byte strings compared as bytes, for the result index in
``_results``: pack the sort key big-endian first and the payload after it).
"""

from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import BinaryIO

#: Values per in-memory run of :class:`SortedHashes`: the sort's temporary list stays a few MiB.
RUN_SIZE = 1 << 17
#: Bytes of records per in-memory run of :class:`SortedRecords` (a list of bytes objects
#: costs about 50 bytes a record besides the record itself).
RECORD_RUN_BYTES = 1 << 21
#: Read buffers of all runs together while merging: many runs get small buffers each,
#: so a huge sort does not multiply memory by its number of runs.
MERGE_BUFFER_BYTES = 1 << 21
_MIN_READ_BYTES = 1 << 12


class _SpilledRuns:
    """Sorted runs of fixed-width records in one temporary file, read back merged."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._file: BinaryIO | None = None
        self._runs: list[tuple[int, int]] = []  # (byte offset, record count) of each run

    def __bool__(self) -> bool:
        return bool(self._runs)

    def spill(self, data: bytes) -> None:
        """Append one sorted run (its records concatenated)."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="gembatch-sort-")  # noqa: SIM115 (closed by close())
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(data)
        self._file.flush()
        self._runs.append((offset, len(data) // self.width))

    def chunked_runs(self) -> list[Iterator[bytes]]:
        """Each run as an iterator of chunks (whole records), sized to share the budget."""
        per_run = max(_MIN_READ_BYTES, MERGE_BUFFER_BYTES // max(1, len(self._runs)))
        records = max(1, per_run // self.width)
        return [self._read_run(offset, count, records) for offset, count in self._runs]

    def _read_run(self, offset: int, count: int, records: int) -> Iterator[bytes]:
        assert self._file is not None
        fd = self._file.fileno()
        while count:
            take = min(count, records)
            chunk = _pread_exactly(fd, take * self.width, offset)
            yield chunk
            offset += len(chunk)
            count -= take

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:  # a short read of a regular file only happens at its end
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise OSError(f"sort spill file ended early at byte {offset + len(data)}")
        data += more
    return data


class _Closing:
    _runs: _SpilledRuns

    def close(self) -> None:
        self._runs.close()

    def __enter__(self) -> _Closing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SortedHashes(_Closing):
    """Collect 64-bit values with :meth:`add`, then read them back in order."""

    def __init__(self, run_size: int | None = None) -> None:
        self._run_size = run_size or RUN_SIZE
        self._buffer: array[int] = array("q")
        self._runs = _SpilledRuns(8)
        self.count = 0

    def add(self, value: int) -> None:
        self._buffer.append(value)
        self.count += 1
        if len(self._buffer) >= self._run_size:
            self._spill()

    def _spill(self) -> None:
        self._runs.spill(array("q", sorted(self._buffer)).tobytes())
        self._buffer = array("q")

    def __iter__(self) -> Iterator[int]:
        """Every value, ascending (duplicates kept)."""
        if not self._runs:
            return iter(sorted(self._buffer))
        if self._buffer:
            self._spill()
        return heapq.merge(*(_values(run) for run in self._runs.chunked_runs()))

    def __enter__(self) -> SortedHashes:
        return self


def _values(chunks: Iterable[bytes]) -> Iterator[int]:
    for chunk in chunks:
        values = array("q")
        values.frombytes(chunk)
        yield from values


class SortedRecords(_Closing):
    """Collect byte records of one fixed width with :meth:`add`, then read them back
    in byte order (duplicates kept)."""

    def __init__(self, width: int, run_size: int | None = None) -> None:
        self.width = width
        self._run_size = run_size or max(1024, RECORD_RUN_BYTES // (width + 50))
        self._buffer: list[bytes] = []
        self._runs = _SpilledRuns(width)
        self.count = 0

    def add(self, record: bytes) -> None:
        if len(record) != self.width:
            raise ValueError(f"record of {len(record)} bytes, expected {self.width}")
        self._buffer.append(record)
        self.count += 1
        if len(self._buffer) >= self._run_size:
            self._spill()

    def _spill(self) -> None:
        self._buffer.sort()
        self._runs.spill(b"".join(self._buffer))
        self._buffer = []

    def __iter__(self) -> Iterator[bytes]:
        if not self._runs:
            return iter(sorted(self._buffer))
        if self._buffer:
            self._spill()
        return heapq.merge(*(self._records(run) for run in self._runs.chunked_runs()))

    def _records(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        width = self.width
        for chunk in chunks:
            for start in range(0, len(chunk), width):
                yield chunk[start : start + width]

    def __enter__(self) -> SortedRecords:
        return self


def repeated(values: SortedHashes, limit: int) -> set[int]:
    """Up to ``limit`` values that occur more than once."""
    found: set[int] = set()
    for value, group in itertools.groupby(values):
        if sum(1 for _ in itertools.islice(group, 2)) > 1:
            found.add(value)
            if len(found) >= limit:
                break
    return found
