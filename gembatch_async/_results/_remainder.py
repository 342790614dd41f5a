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
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "state": self.state,
            "output": self.output,
            "upload": self.upload,
        }

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
        return cls(batch, state, output if isinstance(output, str) and output else None, upload)


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
            "input_size_bytes": self.input_size,
            "input_requests": self.requests,
            "answered_before": self.answered,
        }


def plan_remainder(
    input_path: str, answered: set[bytes], round: int, completes: Sequence[JobRef]
) -> Remainder | None:
    """The requests of ``input_path`` without an answer, or None when the input has a
    line without a key (its answers cannot be told apart request by request). Blocking."""
    hasher = hashlib.sha256()
    requests = count = size = total = 0
    digests: set[bytes] = set()
    keys: list[str] = []
    with open(input_path, "rb", buffering=_READ_SIZE) as handle:
        for raw in handle:
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
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
