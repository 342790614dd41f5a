"""Each job output downloaded once, however many inputs read it (a packed job's).

The inputs of a packed job end together and each takes its share of the one output
(``_unpack``): through :func:`downloads_once` the output crosses the network once
and each input's download is a local copy of it, removed with the context.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import anyio.to_thread

from .._backends import JobsApi


class _DownloadsOnce:
    """A backend that fetches each output file once and copies it for every reader."""

    def __init__(self, api: JobsApi, folder: str) -> None:
        self._api = api
        self._folder = folder
        self._files: dict[str, str] = {}
        self._locks: dict[str, anyio.Lock] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    async def download_file(self, name: str, destination: str) -> None:
        async with self._locks.setdefault(name, anyio.Lock()):
            kept = self._files.get(name)
            if kept is None:
                # Named by the output it holds: two outputs fetched at once (two jobs that
                # ended in one poll) must never share a file.
                digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
                kept = os.path.join(self._folder, f"{digest}.jsonl")
                try:
                    await self._api.download_file(name, kept)
                except BaseException:  # a partial file is no copy to hand out
                    with contextlib.suppress(OSError):
                        os.unlink(kept)
                    raise
                self._files[name] = kept
        await anyio.to_thread.run_sync(shutil.copyfile, kept, destination)


@contextlib.asynccontextmanager
async def downloads_once(api: JobsApi) -> AsyncIterator[JobsApi]:
    """``api``, except that each output is downloaded once while the context lasts."""
    folder = await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="gembatch-outputs-"))
    try:
        yield cast(JobsApi, _DownloadsOnce(api, folder))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
