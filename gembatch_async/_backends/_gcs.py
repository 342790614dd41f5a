"""Cloud Storage for the Vertex backend: staged inputs, and job outputs read back.

Through google-cloud-storage (resumable uploads, crc32c checked), whose calls block:
:class:`Storage` runs each in a worker thread. Its errors become ours here, as the
SDK's do in ``_client``. An input is staged under a content-derived object name with
its sha256 in the object's metadata, so a retry or rerun finds it (AlreadyExistsApiError,
like the Files API's 409) and checks it before reusing it.

A job's output directory holds ``predictions.jsonl`` or shards of it (see
:func:`is_output_shard`), all read; each line becomes the
``{"key", "response"}`` / ``{"key", "error"}`` line ``_results`` reads (a Vertex line
carries its failure as text in ``status``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio.to_thread

from .._errors import (
    AlreadyExistsApiError,
    AmbiguousApiError,
    ApiError,
    NotFoundApiError,
    PermanentApiError,
    TransientApiError,
    UsageError,
)
from .._strict_json import strict_json
from ._records import RemoteFile

T = TypeVar("T")
_GS_URI = re.compile(r"gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,221}[a-z0-9])(?:/(?P<name>.*))?")
_OUTPUT_PATTERN = "predictions*.jsonl"
#: ``NAME-00000-of-00002``: a sharded output's parts (``predictions.jsonl-...``,
#: ``prediction.results-...``); not ``prediction.errors_stats-...``.
_SHARD = re.compile(r"(predictions[^/]*|prediction\.results)-\d{5}-of-\d{5}(\.jsonl)?")
SHA256_METADATA = "gembatch-sha256"
#: google-api-core's import-time FutureWarning on Python 3.10.
_OLD_PYTHON_NOTICE = "You are using a non-supported Python version"


def _import_once() -> None:
    """Import google-cloud-storage and the auth transports here, in the event loop's
    thread: imported first by two worker threads at once (ours, and the SDK's token
    refresh), ``requests`` is seen half-initialised. On Python 3.10, google-api-core
    warns at import that it no longer supports that Python: a notice for Google's
    packagers, not for our users, so it is not shown (the SDK pin already covers 3.10)."""
    warnings.filterwarnings("ignore", _OLD_PYTHON_NOTICE, FutureWarning)
    try:
        import google.api_core.exceptions
        import google.auth.transport.requests  # noqa: F401
        from google.cloud import storage  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            "the Vertex backend needs google-cloud-storage: pip install 'gembatch-async[vertex]'"
        ) from exc


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """(bucket, object name) of ``gs://bucket/name``; the name may be empty."""
    found = _GS_URI.fullmatch(uri)
    if found is None:
        raise UsageError(f"not a Cloud Storage location (gs://BUCKET[/PREFIX]): {uri!r}")
    return found.group("bucket"), found.group("name") or ""


def _storage_error(exc: BaseException) -> ApiError | None:
    """Our error for a google-cloud-storage (or transport) exception, None if not one."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, gexc.GoogleAPICallError):
        code = int(exc.code or 0)
        message = f"Cloud Storage {code}: {exc.message}"
        if code == 404:
            return NotFoundApiError(message, code=code)
        if code in (409, 412):
            return AlreadyExistsApiError(message, code=code)
        if code in (408, 429):
            return TransientApiError(message, code=code)
        if code >= 500:
            return AmbiguousApiError(message, code=code)
        return PermanentApiError(message, code=code)
    if isinstance(exc, gexc.RetryError):
        # The storage client's own retry gave up (its deadline is 120 s): the last
        # error it met says what happened, else nothing usable came back.
        inner = _storage_error(exc.cause) if exc.cause is not None else None
        return inner or AmbiguousApiError(f"Cloud Storage: no usable answer ({exc.message})")
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return PermanentApiError(
            "no Google Cloud credentials: run `gcloud auth application-default login` "
            "(Application Default Credentials)"
        )
    if isinstance(exc, auth_exc.GoogleAuthError):
        return PermanentApiError(f"Cloud Storage credentials refused: {type(exc).__name__}")
    name = type(exc).__name__
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)) or name in (
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
        "ConnectTimeout",
        "ChunkedEncodingError",
        "DataCorruption",
        "InvalidResponse",
    ):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
            return PermanentApiError(f"Cloud Storage {status}: {name}", code=status)
        return AmbiguousApiError(f"Cloud Storage: no usable answer ({name})")
    return None


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        mapped = _storage_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


class Storage:
    """A google-cloud-storage client, made on first use (ADC, or anonymous for an emulator)."""

    def __init__(self, project: str | None, host: str | None) -> None:
        self._project = project
        self._host = host
        self._client: Any = None
        self._lock = threading.Lock()
        _import_once()

    def _bucket(self, name: str) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
        return self._client.bucket(name)

    def _make_client(self) -> Any:
        from google.cloud import storage

        if self._host:
            import google.auth.credentials

            return storage.Client(
                project=self._project or "emulator",
                credentials=google.auth.credentials.AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": self._host},
            )
        return storage.Client(project=self._project)

    async def _call(self, work: Callable[[], T]) -> T:
        def translated() -> T:
            with _translated():
                return work()

        # Not abandoned on cancellation: a half-sent upload must finish (or fail)
        # before the cleanup decides whether the object exists.
        return await anyio.to_thread.run_sync(translated)

    # -- inputs ---------------------------------------------------------------------------
    async def upload(self, path: str, uri: str, *, mime_type: str, sha256: str) -> RemoteFile:
        def work() -> RemoteFile:
            bucket, name = parse_gs_uri(uri)
            blob = self._bucket(bucket).blob(name)
            if blob.exists():
                raise AlreadyExistsApiError(f"{uri} exists already", code=409)
            blob.metadata = {SHA256_METADATA: sha256}
            # if_generation_match=0: never replace an object that appeared meanwhile.
            blob.upload_from_filename(
                path, content_type=mime_type, if_generation_match=0, checksum="crc32c"
            )
            return RemoteFile(uri, sha256, blob.size, None, None)

        return await self._call(work)

    async def get(self, uri: str) -> RemoteFile:
        def work() -> RemoteFile:
            bucket, name = parse_gs_uri(uri)
            blob = self._bucket(bucket).get_blob(name)
            if blob is None:
                raise NotFoundApiError(f"{uri} not found", code=404)
            metadata = blob.metadata or {}
            recorded = metadata.get(SHA256_METADATA)
            return RemoteFile(
                uri, recorded if isinstance(recorded, str) else None, blob.size, None, None
            )

        return await self._call(work)

    async def delete(self, uri: str) -> bool:
        """Delete an object, or every object under a ``.../`` directory; False if none was there."""

        def work() -> bool:
            bucket_name, name = parse_gs_uri(uri)
            bucket = self._bucket(bucket_name)
            if not name.endswith("/"):
                try:
                    bucket.blob(name).delete()
                except Exception as exc:
                    if isinstance(_storage_error(exc), NotFoundApiError):
                        return False
                    raise
                return True
            deleted = 0
            for blob in bucket.list_blobs(prefix=name):
                try:
                    blob.delete()
                except Exception as exc:
                    # Gone meanwhile is fine; any other refusal leaves storage the
                    # user pays for, so it is reported, never counted as deleted.
                    if not isinstance(_storage_error(exc), NotFoundApiError):
                        raise
                    continue
                deleted += 1
            return deleted > 0

        return await self._call(work)

    # -- outputs --------------------------------------------------------------------------
    async def download_output(self, directory: str, destination: str) -> None:
        """Every prediction file in ``directory`` (one, or all shards, in name order),
        converted, to ``destination``."""

        def work() -> None:
            bucket_name, prefix = parse_gs_uri(directory.rstrip("/") + "/")
            bucket = self._bucket(bucket_name)
            names = sorted(
                blob.name
                for blob in bucket.list_blobs(prefix=prefix)
                if is_output_shard(blob.name[len(prefix) :])
            )
            if not names:
                raise NotFoundApiError(f"no {_OUTPUT_PATTERN} in {directory}", code=404)
            folder = os.path.dirname(os.path.abspath(destination))
            with open(destination, "wb") as target:
                for name in names:
                    with tempfile.NamedTemporaryFile(dir=folder, prefix=".vertex-") as raw:
                        bucket.blob(name).download_to_filename(raw.name, checksum="crc32c")
                        with open(raw.name, "rb") as source:
                            for line in source:
                                target.write(converted_line(line))

        await self._call(work)


def is_output_shard(name: str) -> bool:
    """Whether an object directly in a job's output folder holds prediction lines.

    Every naming the evidence shows is read, so no row is missed (issue 16):
    ``predictions.jsonl`` (the Gemini batch docs; python-genai#486),
    ``predictions_0001.jsonl`` ... (the ``gcs_destination`` reference in
    google/cloud/aiplatform_v1/types/batch_prediction_job.py) and ``*-00000-of-00002``
    shards (``predictions.jsonl-00000-of-00002``, ``prediction.results-00000-of-00001``,
    seen in public readers of Vertex batch output). Files in sub-folders, ``errors_*``
    and ``*.metadata`` / ``*errors_stats*`` files are not predictions.
    """
    if "/" in name:
        return False
    if fnmatch.fnmatch(name, _OUTPUT_PATTERN):
        return True
    return _SHARD.fullmatch(name) is not None


def converted_line(line: bytes) -> bytes:
    """A Vertex output line as the Gemini Batch API writes it (``_results``' input).

    Vertex keeps the input's other fields (our ``key``) and puts a request's failure
    in ``status`` as text, e.g. ``Bad Request: {"error": {...}}``. A line that is not a
    JSON object (or not strict JSON, or nested too deep) passes unchanged, for
    ``_results`` to report as malformed, line by line.
    """
    if not line.strip():
        return line
    try:
        obj = strict_json(line)
    except ValueError:  # UnicodeDecodeError and TooDeepError too
        return line
    if not isinstance(obj, dict):
        return line
    out: dict[str, Any] = {}
    if "key" in obj:
        out["key"] = obj["key"]
    status = obj.get("status")
    if status:
        out["error"] = error_of_status(str(status))
    elif "response" in obj:
        out["response"] = obj["response"]
    else:
        out["error"] = {"code": 2, "status": "UNKNOWN", "message": "no response and no status"}
    try:
        return (json.dumps(out, ensure_ascii=False) + "\n").encode()
    except RecursionError:  # read, yet too deep to write back: _results says so
        return line


def error_of_status(status: str) -> dict[str, Any]:
    """The ``{"code", "status", "message"}`` inside a Vertex ``status`` text, when it holds one."""
    start = status.find("{")
    if start >= 0:
        with contextlib.suppress(ValueError):
            body = json.loads(status[start:])
            inner = body.get("error", body) if isinstance(body, dict) else None
            if isinstance(inner, dict) and ("code" in inner or "message" in inner):
                return {k: inner[k] for k in ("code", "status", "message") if k in inner}
    return {"code": 2, "status": "UNKNOWN", "message": status}
