"""A Cloud Storage emulator in this process, for tests and ``--emulator --backend vertex``.

It is `gcp-storage-emulator` (PyPI, BSD-3-Clause), served from a daemon thread on a
loopback port of its own. Reach it the way the ecosystem does: ``STORAGE_EMULATOR_HOST``
set to ``RunningStorageEmulator.url`` (google-cloud-storage then uses anonymous
credentials and needs no project), or explicitly::

    storage.Client(
        project="any",
        credentials=google.auth.credentials.AnonymousCredentials(),
        client_options={"api_endpoint": running.url},
    )

Known limits of gcp-storage-emulator (2026.7): it does not enforce ``ifGenerationMatch``
and other preconditions; it ignores ``maxResults`` (a listing is one page); it serves one
request at a time and holds each object in memory while serving it. It needs the
``vertex`` extra: ``pip install 'gembatch-async[vertex]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import logging
import pathlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from gembatch_async.emulator._faults import FaultInjector, RequestLog, parse_fault_spec
from gembatch_async.emulator._storage_faults import faulting_handler

_POLL_SECONDS = 0.05


@dataclasses.dataclass(frozen=True)
class RunningStorageEmulator:
    """A started Cloud Storage emulator: where to reach it, and helpers for tests."""

    host: str
    port: int
    url: str  # e.g. "http://127.0.0.1:41234": the value for STORAGE_EMULATOR_HOST
    _storage: Any = dataclasses.field(repr=False, compare=False)
    _log: RequestLog = dataclasses.field(repr=False, compare=False)
    _faults: list[FaultInjector] = dataclasses.field(repr=False, compare=False)

    @property
    def env(self) -> dict[str, str]:
        """The environment that points google-cloud-storage here."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def create_bucket(self, name: str) -> None:
        """Create a bucket (no error if it exists)."""
        from gcp_storage_emulator.exceptions import Conflict
        from gcp_storage_emulator.handlers.buckets import create_bucket

        with contextlib.suppress(Conflict):
            create_bucket(name, self._storage)

    def wipe(self, keep_buckets: bool = False) -> None:
        """Delete every object (and every bucket unless ``keep_buckets``)."""
        self._storage.wipe(keep_buckets=keep_buckets)

    def requests(self) -> dict[str, dict[str, int]]:
        """Requests served per endpoint (upload, download, get, list, delete, create)."""
        return self._log.snapshot()

    def set_faults(self, spec: str, seed: int | None = None) -> None:
        """Replace the fault spec (the Gemini emulator's ``--faults`` syntax)."""
        self._faults[0] = FaultInjector(parse_fault_spec(spec), seed)


@contextlib.contextmanager
def serve_storage_emulator(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: pathlib.Path | None = None,
    buckets: Iterable[str] = (),
    faults: str = "",
    fault_seed: int | None = None,
) -> Iterator[RunningStorageEmulator]:
    """Serve a Cloud Storage emulator until the ``with`` block ends.

    ``data_dir`` keeps objects on disk across restarts (None: in memory). ``buckets`` are
    created up front. ``faults`` injects errors like the Gemini emulator's ``--faults``
    (endpoints ``upload, download, get, list, delete, create``). Stopping waits for the
    request being served, at most a moment; call it from a worker thread in async code
    if that matters.
    """
    storage = _open_storage(data_dir)
    log = RequestLog()
    injector = [FaultInjector(parse_fault_spec(faults), fault_seed)]
    handler = functools.partial(faulting_handler(), storage, log, injector)
    # Bound here, so a busy port raises OSError to the caller.
    httpd = http.server.HTTPServer((host, port), handler)
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": _POLL_SECONDS},
        name="gembatch-storage-emulator",
        daemon=True,
    )
    thread.start()
    try:
        bound = int(httpd.server_address[1])
        running = RunningStorageEmulator(
            host, bound, f"http://{host}:{bound}", storage, log, injector
        )
        for bucket in buckets:
            running.create_bucket(bucket)
        yield running
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _open_storage(data_dir: pathlib.Path | None) -> Any:
    from gcp_storage_emulator.storage import Storage

    # The library logs each missing object at ERROR; a CLI user would see that on stderr
    # (logging's last-resort handler) whenever the tool looks for an object. A library's
    # NullHandler keeps it quiet unless the application configures logging.
    logging.getLogger("gcp_storage_emulator").addHandler(logging.NullHandler())
    if data_dir is None:
        # In memory: the data_dir is only checked for being absolute, never written.
        return Storage(use_memory_fs=True, data_dir=str(pathlib.Path.cwd().resolve()))
    return Storage(use_memory_fs=False, data_dir=str(pathlib.Path(data_dir).resolve()))
