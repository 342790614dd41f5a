"""How the Vertex routes read inputs from and write outputs to Cloud Storage.

Only ever a Cloud Storage *emulator* (``EmulatorConfig.storage_emulator_host`` or
``STORAGE_EMULATOR_HOST``), through google-cloud-storage with anonymous credentials.
google-cloud-storage is imported on first use: the emulator's core runs without the
``vertex`` extra. Every method blocks; call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import threading
import warnings
from collections.abc import Iterator
from typing import Any

_GS_URI = re.compile(r"gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,221}[a-z0-9])(?:/(?P<name>.*))?")


class StorageProblem(Exception):
    """An object or bucket that is not there (or not readable)."""


class StorageUnavailable(Exception):
    """The Cloud Storage emulator could not be reached."""


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """(bucket, object name) of ``gs://bucket/name``; the name may be empty."""
    found = _GS_URI.fullmatch(uri)
    if found is None:
        raise ValueError(f"not a gs:// URI: {uri!r}")
    return found.group("bucket"), found.group("name") or ""


class CloudStorage:
    """A google-cloud-storage client pointed at the emulator, made on first use."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._client: Any = None
        self._lock = threading.Lock()

    def download(self, uri: str, target: pathlib.Path) -> None:
        """Append the object's bytes to ``target``, streamed (StorageProblem if missing)."""
        bucket, name = parse_gs_uri(uri)
        if not name:
            raise StorageProblem(f"{uri} names a bucket, not an object.")
        with _translated_errors(uri), target.open("ab") as fh:
            self._bucket(bucket).blob(name).download_to_file(fh)

    def size(self, uri: str) -> int:
        """The object's size in bytes (StorageProblem if missing)."""
        bucket, name = parse_gs_uri(uri)
        if not name:
            raise StorageProblem(f"{uri} names a bucket, not an object.")
        with _translated_errors(uri):
            blob = self._bucket(bucket).get_blob(name)
        if blob is None:
            raise StorageProblem(f"No such object: {uri}")
        return int(blob.size or 0)

    def upload(self, source: pathlib.Path, uri: str) -> None:
        """Write a local file to ``uri`` (a resumable upload when large)."""
        bucket, name = parse_gs_uri(uri)
        with _translated_errors(uri):
            blob = self._bucket(bucket).blob(name)
            blob.upload_from_filename(str(source), content_type="application/jsonl")

    def check_bucket(self, uri: str) -> None:
        """StorageProblem unless the bucket of ``uri`` exists."""
        bucket, _ = parse_gs_uri(uri)
        with _translated_errors(uri):
            if not self._bucket(bucket).exists():
                raise StorageProblem(f"Bucket {bucket} does not exist.")

    def _bucket(self, name: str) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _make_client(self.host)
        return self._client.bucket(name)


@contextlib.contextmanager
def _translated_errors(uri: str) -> Iterator[None]:
    """google-cloud-storage's and requests' errors -> StorageProblem / StorageUnavailable."""
    # google-api-core's import-time notice on Python 3.10 (see gembatch_async._backends._gcs).
    warnings.filterwarnings("ignore", "You are using a non-supported Python version", FutureWarning)
    from google.api_core import exceptions as api_exceptions
    from requests import exceptions as requests_exceptions

    try:
        yield
    except (api_exceptions.NotFound, api_exceptions.Forbidden) as exc:
        raise StorageProblem(f"No such object: {uri}") from exc
    except (requests_exceptions.ConnectionError, api_exceptions.ServerError) as exc:
        raise StorageUnavailable(f"Cloud Storage did not answer for {uri}: {exc}") from exc


def _make_client(host: str) -> Any:
    warnings.filterwarnings("ignore", "You are using a non-supported Python version", FutureWarning)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="gembatch-emulator",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": host},
    )
