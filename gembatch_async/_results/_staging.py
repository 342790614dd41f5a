"""Files beside the results, put in place only when complete.

Files are written as hidden temporary files beside their final names, fsynced,
and renamed into place only when complete; the results file comes last, so its
existence means "done". Temporaries are removed on failure or cancellation, and
those a killed process left are removed by the next download.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .._durable import fsync_folder
from ._targets import ResultTargets

_TEMP_SUFFIX = ".gembatch-tmp"


class Staging:
    """Hidden temporaries in the results folder, named after the results file and the
    process that writes them: renamed into place when complete, removed otherwise."""

    def __init__(self, targets: ResultTargets) -> None:
        self.targets = targets
        self.folder = targets.results.parent
        self.prefix = f".{targets.results.name[:80]}."
        self._temps: list[Path] = []

    def prepare(self) -> None:
        """Create the folder; remove temporaries of processes that are gone (killed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(self.folder):
            name = entry.name
            if name.startswith(self.prefix) and name.endswith(_TEMP_SUFFIX):
                pid = name[len(self.prefix) :].split(".", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def new(self, role: str) -> Path:
        """A new empty temporary (created with the user's umask, like the final file)."""
        name = f"{self.prefix}{os.getpid()}.{secrets.token_hex(4)}.{role}{_TEMP_SUFFIX}"
        path = self.folder / name
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        self._temps.append(path)
        return path

    def commit(self, temp: Path, final: Path) -> None:
        """Put a complete temporary in place (it is fsynced first)."""
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        self._temps.remove(temp)

    def finish(self, results: Path, failed: Path | None, raw: Path | None) -> None:
        """Failed requests (or remove an old file of them), raw output, then results last:
        its presence is what says "done"."""
        if failed is not None:
            self.commit(failed, self.targets.failed)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.targets.failed)
        if raw is not None:
            self.commit(raw, self.targets.raw)
        self.commit(results, self.targets.results)
        fsync_folder(self.folder)

    def discard(self) -> None:
        """Remove every temporary not put in place (on failure or cancellation)."""
        for temp in self._temps:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        self._temps.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
