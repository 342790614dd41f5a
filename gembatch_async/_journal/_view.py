"""What a journal says: the latest line per input, its identities, and its history."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .._events import JournalProblem
from .._identity import (
    base_identity_of_line,
    identity_of_line,
    identity_of_path,
    same_file,
)
from ._records import (
    JobLine,
    input_sha256_of,
)


@dataclass
class JournalView:
    """What the journal says, folded by input identity: the latest line wins."""

    #: The folder the journal is named in, resolved: identities are relative to it.
    root: str = ""
    #: Every folder a recorded identity may be relative to (see ``journal_roots``).
    roots: tuple[str, ...] = ()
    latest: dict[str, JobLine] = field(default_factory=dict)
    history: dict[str, int] = field(default_factory=dict)
    #: The newest line of each input, whole or any part of it.
    latest_by_base: dict[str, JobLine] = field(default_factory=dict)
    uploads_in_use: set[str] = field(default_factory=set)
    problems: list[JournalProblem] = field(default_factory=list)
    #: The scope id the first line carrying one recorded (see ``_identity``).
    recorded_scope_id: str | None = None
    #: Bytes of the journal this view has read, and the inode they came from.
    offset: int = 0
    inode: int = 0
    lines_read: int = 0
    #: The line number of each input's newest line, for messages about it.
    line_numbers: dict[str, int] = field(default_factory=dict)
    #: Recorded inputs by file name and by whole-input sha256, and the line count
    #: they were made at: where another name of a recorded file is looked for (see
    #: :meth:`identity_of`). Made on first need, so folding stays plain.
    _by_name: dict[str, set[str]] = field(default_factory=dict)
    _by_sha256: dict[str, set[str]] = field(default_factory=dict)
    _indexed_at: int = -1

    def add(self, line: JobLine) -> None:
        base = base_identity_of_line(line, self.root)
        identity = identity_of_line(line, self.root, base)
        self.latest[identity] = line
        self.history[identity] = self.history.get(identity, 0) + 1
        self.latest_by_base[base] = line
        self.line_numbers[base] = self.lines_read
        upload = line.get("uploaded_file_name")
        if isinstance(upload, str):
            self.uploads_in_use.add(upload)
        if self.recorded_scope_id is None and isinstance(line.get("journal_id"), str):
            self.recorded_scope_id = line["journal_id"]

    def identity_of(self, path: str, sha256: str | None = None) -> str:
        """The identity of the input at ``path`` in this journal.

        Its own (see ``_identity``); or, when the journal does not know that one,
        the identity of a recorded input that is the same file: same device and
        inode at its recorded location (a hard link made since; a line recorded
        relative to the journal's other folder). Only recorded inputs with the same
        file name or the same content (``sha256``) are looked at: a few stats.
        """
        own = identity_of_path(path, self.root)
        if own in self.latest_by_base:
            return own
        self._index()
        candidates = set(self._by_name.get(os.path.basename(own), ()))
        if sha256:
            candidates |= self._by_sha256.get(sha256, set())
        if not candidates:
            return own
        try:
            info = os.stat(path)
        except OSError:
            return own
        for identity in sorted(candidates):
            places = (os.path.join(root, identity) for root in self.roots or (self.root,))
            if any(same_file(place, info) for place in places):
                return identity
        return own

    def _index(self) -> None:
        if self._indexed_at == self.lines_read:
            return
        self._by_name, self._by_sha256 = {}, {}
        for base, line in self.latest_by_base.items():
            self._by_name.setdefault(os.path.basename(base), set()).add(base)
            whole = input_sha256_of(line)
            if whole is not None:
                self._by_sha256.setdefault(whole, set()).add(base)
        self._indexed_at = self.lines_read

    def recorded(self, key: str, identity: str, parts: int | None) -> JobLine | None:
        """The line that covers one unit of an input (``key``; ``parts`` when it is one
        of that many parts): its own, or the input's when it was recorded split another
        way (or not at all), so a new --max-*-per-job never submits a file twice."""
        own = self.latest.get(key)
        if own is not None:
            return own
        other = self.latest_by_base.get(identity)
        if other is None:
            return None
        recorded_parts = other.get("parts") if isinstance(other.get("parts"), int) else None
        split = recorded_parts if recorded_parts and recorded_parts > 1 else None
        return other if split != parts else None
