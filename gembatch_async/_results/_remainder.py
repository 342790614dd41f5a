"""Request-level resubmission: which requests of an input have no answer yet, and the
file that carries just them.

An input's jobs form a **chain**: its last whole job, then each resubmission of the
requests still unanswered (a "round"; its journal line says which jobs it completes,
``completes``, and what it carries, ``carries``). A request with a ``response`` in the
output of any job of the chain is answered and is never sent again; every other
request (an error line, or no line at all: a Vertex job that ended FAILED, CANCELLED
or EXPIRED leaves only the rows it completed) is carried by the next round, as the
input's own lines, byte for byte, in input order. So a round's file is fully decided by
the input and the outputs of ended jobs: a rerun after a kill makes the same file, the
same upload name and the same batch token, and finds the batch it may have created.

Only string keys count: an answer whose key came back as a number (reported, never
confirmed) is not taken as an answer here, so such a request is sent again rather than
lost.

A **part** of a split input has its own chain (its key ``ID#2/3``): its rounds carry the
part's unanswered requests, a subset of a part that fit the job limits, so a round of a
part fits them too and is never split again. Its line records the part's own size and
sha256 (``part_size_bytes``, ``part_sha256``) beside the whole input's. A **packed**
input's first job is its pack: that job's ref records the input's key prefix
(``key_prefix``), and only the answers under that prefix are the input's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .._errors import InputChangedError
from .._journal import keys_sha256
from .._names import display_path
from ._keys import key_digest
from ._output_lines import OutputLine, parse_output_line, request_key

_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class JobRef:
    """One job of a chain as a round's line records it."""

    batch: str
    state: str
    output: str | None
    #: Its upload, until deleted: no job reads it any more, so run and cleanup delete it.
    upload: str | None = None
    #: For a packed job: the prefix of this input's keys in it (``_submit._pack``).
    key_prefix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "batch": self.batch,
            "state": self.state,
            "output": self.output,
            "upload": self.upload,
        }
        if self.key_prefix is not None:  # additive: older refs have none
            fields["key_prefix"] = self.key_prefix
        return fields

    @classmethod
    def from_dict(cls, data: object) -> JobRef | None:
        if not isinstance(data, Mapping):
            return None
        batch, state, output = data.get("batch"), data.get("state"), data.get("output")
        if not isinstance(batch, str) or not batch or not isinstance(state, str):
            return None
        upload = data.get("upload")
        if data.get("upload_deleted_at") or not isinstance(upload, str) or not upload:
            upload = None
        prefix = data.get("key_prefix")
        return cls(
            batch,
            state,
            output if isinstance(output, str) and output else None,
            upload,
            prefix if isinstance(prefix, str) and prefix else None,
        )


def with_upload_deleted(line: Mapping[str, Any], names: set[str], when: str) -> dict[str, Any]:
    """A round's line with each completed job whose upload is in ``names`` marked deleted."""
    refs = line.get("completes")
    if not isinstance(refs, list):
        return dict(line)
    marked = [
        {**ref, "upload_deleted_at": when}
        if isinstance(ref, dict) and ref.get("upload") in names and not ref.get("upload_deleted_at")
        else ref
        for ref in refs
    ]
    return {**line, "completes": marked}


def completed_jobs(line: Mapping[str, Any]) -> list[JobRef]:
    """The earlier jobs a round's line completes, oldest first ([] for a whole job's)."""
    refs = line.get("completes")
    if not isinstance(refs, list):
        return []
    found = [JobRef.from_dict(ref) for ref in refs]
    return [ref for ref in found if ref is not None]


def round_of(line: Mapping[str, Any]) -> int:
    """How many times the line's input had its unanswered requests sent again (0: whole)."""
    value = line.get("round")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def answered_digests(outputs: Iterable[Path]) -> set[bytes]:
    """The key digests of every request some output answered with a response.

    A line that does not read as an answer (malformed) answers nothing: its request is
    sent again, never lost."""
    answered: set[bytes] = set()
    for output in outputs:
        with open(output, "rb", buffering=_READ_SIZE) as handle:
            for raw in handle:
                parsed = parse_output_line(raw) if raw.strip() else None
                answer = isinstance(parsed, OutputLine) and not parsed.is_error
                if answer and isinstance(parsed, OutputLine) and isinstance(parsed.key, str):
                    answered.add(key_digest(parsed.key))
    return answered


@dataclass(frozen=True)
class Remainder:
    """The requests of an input the chain left without an answer: the round's file.

    Satisfies ``_inputs.Selection``: the upload copies these lines from the checked
    input and the journal line says what the job carries."""

    #: Requests in the input, and how many of them the chain answered; its size.
    requests: int
    answered: int
    input_size: int
    #: The round's file: its request count, bytes and sha256.
    count: int
    size: int
    sha256: str
    #: sha256 of the sorted keys it carries (the shared "carries" data model).
    keys_sha256: str
    digests: frozenset[bytes] = field(repr=False)
    #: This is the input's n-th round, and the jobs it completes (oldest first).
    round: int = 1
    completes: tuple[JobRef, ...] = ()
    #: For a part of a split input: the part's sha256 (``input_size`` is then its size).
    part_sha256: str | None = None

    def copy(self, source: int, target: int, name: str) -> None:
        """Write the round's lines, read from the checked input ``source``, to ``target``;
        refuse when they are not the bytes planned (the input changed)."""
        hasher = hashlib.sha256()
        with os.fdopen(os.dup(source), "rb", buffering=_READ_SIZE) as handle:
            handle.seek(0)
            for raw in handle:
                key = request_key(raw)
                if key is None or key_digest(key) not in self.digests:
                    continue
                hasher.update(raw)
                _write_all(target, raw)
        if hasher.hexdigest() != self.sha256:
            raise InputChangedError(
                f"{display_path(name)}: changed since pre-flight; not submitted"
            )

    def line_fields(self, identity: str, input_sha256: str) -> dict[str, Any]:
        """What the round's journal line adds (see the module doc and docs/fidelity.md)."""
        return {
            "carries": [
                {
                    "input": identity,
                    "sha256": input_sha256,
                    "keys_sha256": self.keys_sha256,
                    "requests": self.count,
                }
            ],
            "round": self.round,
            "completes": [ref.to_dict() for ref in self.completes],
            "input_sha256": input_sha256,
            **self._unit_fields(),
            "input_requests": self.requests,
            "answered_before": self.answered,
        }

    def _unit_fields(self) -> dict[str, Any]:
        """What the round completes: the whole input, or one part of it (whose line
        records the whole input's sha256 beside the part's, as a part's first line does)."""
        if self.part_sha256 is None:
            return {"input_size_bytes": self.input_size}
        return {"part_sha256": self.part_sha256, "part_size_bytes": self.input_size}


def plan_remainder(
    input_path: str,
    answered: set[bytes],
    round: int,
    completes: Sequence[JobRef],
    part: tuple[int, int, str] | None = None,
) -> Remainder | None:
    """The requests of ``input_path`` without an answer, or None when the input has a
    line without a key (its answers cannot be told apart request by request). With
    ``part`` (start, end, sha256 of a split input's part), only that byte range's
    requests. Blocking."""
    hasher = hashlib.sha256()
    requests = count = size = total = 0
    digests: set[bytes] = set()
    keys: list[str] = []
    with open(input_path, "rb", buffering=_READ_SIZE) as handle:
        for raw in _lines_of(handle, part):
            total += len(raw)
            if not raw.strip():
                continue
            key = request_key(raw)
            if key is None:
                return None
            requests += 1
            digest = key_digest(key)
            if digest in answered:
                continue
            hasher.update(raw)
            size += len(raw)
            count += 1
            digests.add(digest)
            keys.append(key)
    return Remainder(
        requests=requests,
        answered=requests - count,
        input_size=total,
        count=count,
        size=size,
        sha256=hasher.hexdigest(),
        keys_sha256=keys_sha256(keys),
        digests=frozenset(digests),
        round=round,
        completes=tuple(completes),
        part_sha256=part[2] if part is not None else None,
    )


def _lines_of(handle: BinaryIO, part: tuple[int, int, str] | None) -> Iterator[bytes]:
    """The lines of the file, or of the part's byte range (whole lines: parts are cut
    at line boundaries)."""
    if part is None:
        yield from handle
        return
    start, end, _ = part
    handle.seek(start)
    offset = start
    while offset < end:
        raw = handle.readline()
        if not raw:
            return
        offset += len(raw)
        yield raw


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
