"""Sorting request-key hashes in bounded memory, for duplicate and missing-key checks.

A 1 GiB input of short requests holds ten million keys; a set of them, or even
``sorted()`` of an array of their hashes, would grow memory with the file. Here
hashes are sorted in runs of a fixed size, spilled to a temporary file, and
merged back as a stream (an external merge sort), so memory stays flat.
"""

from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from array import array
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

#: Values per in-memory run: the sort's temporary list stays a few MiB.
RUN_SIZE = 1 << 17
_READ_VALUES = 1 << 13


class SortedHashes:
    """Collect 64-bit values with :meth:`add`, then read them back in order."""

    def __init__(self, run_size: int | None = None) -> None:
        self._run_size = run_size or RUN_SIZE
        self._buffer: array[int] = array("q")
        self._file: BinaryIO | None = None
        self._runs: list[tuple[int, int]] = []  # (byte offset, count) of each spilled run
        self.count = 0

    def add(self, value: int) -> None:
        self._buffer.append(value)
        self.count += 1
        if len(self._buffer) >= self._run_size:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="gembatch-keys-")  # noqa: SIM115 (closed by close())
        spill = self._file
        run = array("q", sorted(self._buffer))
        offset = spill.seek(0, os.SEEK_END)
        spill.write(run.tobytes())
        spill.flush()
        self._runs.append((offset, len(run)))
        self._buffer = array("q")

    def __iter__(self) -> Iterator[int]:
        """Every value, ascending (duplicates kept)."""
        if not self._runs:
            return iter(sorted(self._buffer))
        if self._buffer:
            self._spill()
        return heapq.merge(*(self._read_run(offset, count) for offset, count in self._runs))

    def _read_run(self, offset: int, count: int) -> Iterator[int]:
        assert self._file is not None
        fd = self._file.fileno()
        while count:
            take = min(count, _READ_VALUES)
            chunk = array("q")
            chunk.frombytes(os.pread(fd, take * 8, offset))
            yield from chunk
            offset += take * 8
            count -= take

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SortedHashes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def repeated(values: SortedHashes, limit: int) -> set[int]:
    """Up to ``limit`` values that occur more than once."""
    found: set[int] = set()
    for value, group in itertools.groupby(values):
        if sum(1 for _ in itertools.islice(group, 2)) > 1:
            found.add(value)
            if len(found) >= limit:
                break
    return found


def difference(wanted: SortedHashes, got: SortedHashes, limit: int) -> tuple[set[int], int, int]:
    """(up to ``limit`` values of ``wanted`` missing from ``got``, how many are missing,
    how many distinct values of ``got`` are not in ``wanted``)."""
    missing: set[int] = set()
    missing_count = unexpected = 0
    a = _distinct(iter(wanted))
    b = _distinct(iter(got))
    x, y = next(a, None), next(b, None)
    while x is not None:
        if y is None or x < y:
            missing_count += 1
            if len(missing) < limit:
                missing.add(x)
            x = next(a, None)
        elif y < x:
            unexpected += 1
            y = next(b, None)
        else:
            x, y = next(a, None), next(b, None)
    if y is not None:
        unexpected += 1 + sum(1 for _ in b)
    return missing, missing_count, unexpected


def _distinct(values: Iterator[int]) -> Iterator[int]:
    return (value for value, _ in itertools.groupby(values))
