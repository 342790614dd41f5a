"""What makes an input "the same", and the names the server knows it by.

An input's **identity** is its resolved path (symlinks followed, ``..`` and ``.``
gone) relative to the journal's folder: the folder the journal is *named* in,
resolved (a journal that is itself a symlink keeps the folder of its name, so a
journal moved into a sub-folder with a symlink left at its old path keeps its
identities). ``a.jsonl``, ``./a.jsonl``, ``sub/../a.jsonl``, ``/abs/a.jsonl``, a
symlink to it, and the same file named from another working directory are one
identity; moving the whole project folder keeps it. The path as the user gave it
stays in the journal's ``input_file`` (the original gembatch reads it); the
identity goes beside it in ``input_identity``.

**The same input** is one file however it is named: the same identity, or the same
file (device and inode) as a recorded input's location: a hard link, or a file the
journal recorded relative to its other folder (the one its symlink points into).
Recorded inputs are looked up that way only when the identity misses, among the
few recorded with the same content (sha256) or the same file name: see
``JournalView.identity_of``.

**A journal never steers where we read or write.** A line is data: its identity
locates an input (for ``download`` with no files named) only when that location,
resolved, lies inside the journal's folder tree (:func:`outside_reason`). An
input outside it (a legitimate ``../data/a.jsonl``) is read and written for only
when the user names it on the command line; an absolute identity, or one with a
NUL, is refused as a malformed line (``_journal``).

Every name we give the server also carries the journal's **scope id**, made once
per journal (from the machine and the journal's path) and kept with it, so a batch
or upload made for another journal (another project folder on the same API
project, same relative path and content) never matches ours and is never adopted.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from ._names import NAME_PREFIX as NAME_PREFIX  # the display-name format lives in _names
from ._names import display_name_for as display_name_for
from ._names import raw_bytes
from ._names import token_of as token_of


def journal_root(journal_path: str | os.PathLike[str]) -> str:
    """The folder a journal path names, resolved (the journal's own symlink is not
    followed): identities are relative to it."""
    return os.path.realpath(os.path.dirname(os.path.abspath(journal_path)))


def journal_roots(journal_path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The folders identities may be relative to: the one the journal is named in
    first, then, for a symlinked journal, the folder of its target (identities an
    older version recorded were relative to that)."""
    named = journal_root(journal_path)
    real = journal_root(os.path.realpath(journal_path))
    return (named,) if real == named else (named, real)


def identity_of_path(path: str, root: str) -> str:
    """The identity of an input file given by any spelling."""
    return os.path.relpath(os.path.realpath(path), root)


def identity_of_line(line: Mapping[str, Any], root: str, base: str | None = None) -> str:
    """The key a journal line records: its input's identity (``base`` when already
    known), and for one part of a split input which part (``ID#2/3``, see
    ``_inputs.InputFile.key``)."""
    base = base_identity_of_line(line, root) if base is None else base
    part, parts = line.get("part"), line.get("parts")
    if isinstance(part, int) and isinstance(parts, int) and parts > 1:
        return f"{base}#{part}/{parts}"
    return base


def base_identity_of_line(line: Mapping[str, Any], root: str) -> str:
    """The identity of the input a journal line is for (a part's too).

    Lines written before identities existed (ours, and the original tool's) have
    only ``input_file``, relative to the folder the tool ran in: the journal's
    folder, as both tools default to ``job-info.jsonl`` in the working directory.
    Plain string work, no file system calls: a 50 000-line journal folds fast.
    """
    recorded = line.get("input_identity")
    if isinstance(recorded, str) and recorded:
        return recorded
    path = str(line["input_file"])
    if os.path.isabs(path):
        return os.path.relpath(os.path.normpath(path), root)
    return os.path.normpath(path)


def upload_id_for(scope_id: str, identity: str, sha256: str) -> str:
    """The upload's id: one journal, one input, one content -> one name (a retry answers 409)."""
    digest = hashlib.sha256(raw_bytes(f"{scope_id}\0{identity}\0{sha256}")).hexdigest()
    return f"{NAME_PREFIX}{digest[:36]}"


def submission_token(upload_id: str, model: str, generation: int) -> str:
    """The token a batch's display name ends with: unique per upload, model and resubmission."""
    digest = hashlib.sha256(raw_bytes(f"{upload_id}\0{model}\0{generation}")).hexdigest()
    return f"{NAME_PREFIX}{digest[:16]}"


def derived_scope_id(journal_path: str | os.PathLike[str]) -> str:
    """The scope id a journal gets when none is recorded yet: from this machine and
    the journal's resolved path. A journal (with its lock file) lost after a crash
    gets the same id again and finds its uploads; another folder, or the same path
    on another machine, gets another id."""
    place = f"{socket.gethostname()}\0{os.path.realpath(journal_path)}"
    return hashlib.sha256(raw_bytes(place)).hexdigest()[:24]


def input_location(line: Mapping[str, Any], roots: Sequence[str]) -> str:
    """Where a recorded input is, whatever folder the command runs in: the path as the
    user gave it when it still names that file from here, else the full path.

    ``roots``: the journal's folders (see :func:`journal_roots`); the identity is
    looked for under each only when the journal has more than one.
    """
    location = recorded_location(base_identity_of_line(line, roots[0]), roots)
    given = str(line["input_file"])
    return given if os.path.abspath(given) == location else location


def recorded_location(identity: str, roots: Sequence[str]) -> str:
    """The full path an identity names: under the first of ``roots`` where something
    is there (no file system call when there is one root)."""
    locations = [os.path.normpath(os.path.join(root, identity)) for root in roots]
    if len(locations) > 1:
        for location in locations:
            if os.path.lexists(location):
                return location
    return locations[0]


def outside_reason(location: str, roots: Sequence[str]) -> str | None:
    """Why a journal line may not steer a read or write to ``location`` (None: it may).

    The single rule for every read and write a line's identity would cause: the
    location, symlinks resolved, must lie inside one of the journal's folders.
    A file outside them is touched only when the user names it in the command.
    """
    if "\0" in location:
        return "its input path holds a NUL character"
    real = os.path.realpath(location)
    # Strictly below: an input *is* never the folder itself (its results/ would be beside it).
    if any(real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        return None
    return "its input is outside the journal's folder"


def same_file(path: str, info: os.stat_result) -> bool:
    """Whether ``path`` is the file ``info`` describes (same device and inode)."""
    try:
        other = os.stat(path)
    except (OSError, ValueError):
        return False
    return (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino)
