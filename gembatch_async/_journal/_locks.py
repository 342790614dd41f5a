"""The journal's lock file: one shared descriptor per file in a process, and the
POSIX record locks that claim single inputs across processes (the kernel drops them when
a process dies, so a crash never leaves a stale claim)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from .._names import raw_bytes

_CLAIM_SPACE = 1 << 40  # byte offsets used as claim slots in the lock file


_CLAIM_POLL_MAX = 0.5


class _LockFile:
    """The lock file as this process holds it.

    POSIX record locks belong to the process, not to a descriptor: two Journal
    objects of one process on the same file would not exclude each other, and
    closing either descriptor would drop both objects' locks. So every Journal
    of this process on one lock file shares this: one descriptor, a thread lock
    for the journal byte, and the set of claims this process holds.
    """

    def __init__(self, fd: int, key: tuple[int, int]) -> None:
        self.fd = fd
        self.key = key
        self.users = 1
        self.mutex = threading.Lock()
        self.claimed: set[str] = set()


_LOCK_FILES: dict[tuple[int, int], _LockFile] = {}


_LOCK_FILES_GUARD = threading.Lock()


def _acquire_lock_file(path: Path) -> _LockFile:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _LOCK_FILES_GUARD:
        shared = _LOCK_FILES.get(key)
        if shared is None:
            shared = _LOCK_FILES[key] = _LockFile(fd, key)
            return shared
        shared.users += 1
    os.close(fd)
    return shared


def _release_lock_file(shared: _LockFile) -> None:
    with _LOCK_FILES_GUARD:
        shared.users -= 1
        if shared.users:
            return
        del _LOCK_FILES[shared.key]
    os.close(shared.fd)


def _claim_slot(identity: str) -> int:
    """A byte of the lock file that stands for one input (byte 0 is the journal lock)."""
    digest = hashlib.blake2b(raw_bytes(identity), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % _CLAIM_SPACE
