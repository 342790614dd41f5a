"""The one seam to google-genai: builds the client, calls it, maps its errors to ours.

Nothing else in the package touches the SDK's exceptions. Every message we build
from an SDK error is passed through :func:`redact` so the API key cannot leak.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import re
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from typing import Any

import anyio
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from .._errors import (
    AlreadyExistsApiError,
    AmbiguousApiError,
    ApiError,
    CapacityApiError,
    Limit,
    MissingApiKeyError,
    NotFoundApiError,
    PermanentApiError,
    TransientApiError,
    UsageError,
)
from .._events import BatchStats
from .._schema import BATCH_METHODS, EMBED, GENERATE
from .._settings import DEFAULT_REQUEST_TIMEOUT_S, api_key_from_env, refuse_unsendable_key
from .._settings import redact as redact  # re-exported: its home was here
from . import _sdk, as_folder
from ._quota import limit_of
from ._records import BatchDetail as BatchDetail
from ._records import BatchPage as BatchPage
from ._records import Job, Model
from ._records import RemoteFile as RemoteFile

# The SDK marks batches.create_embeddings "experimental" with a warning on every
# call. Silence it for our calls only (module= matches the caller the warning
# is attributed to); a user's own calls still warn.
warnings.filterwarnings(
    "ignore", message=r"batches\.create_embeddings\(\) is experimental", module=r"gembatch_async\."
)

_TRANSIENT_CODES = frozenset({408, 429})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _transport_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions of the SDK's transports that mean "no usable answer arrived"."""
    # ConnectionError, not OSError: a local file that cannot be read is not a network fault.
    found: list[type[BaseException]] = [
        ConnectionError,
        asyncio.TimeoutError,
        TimeoutError,
        EOFError,
    ]
    for module_name, attr in (
        ("httpx", "TransportError"),
        ("httpx2", "TransportError"),
        ("aiohttp", "ClientError"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            module = __import__(module_name)
            found.append(getattr(module, attr))
    return tuple(found)


_TRANSPORT_ERRORS = _transport_error_types()
_CONNECT_ERROR_NAMES = frozenset({"ConnectError", "ClientConnectorError", "ConnectionRefusedError"})


def _error_details(error: genai_errors.APIError) -> tuple[dict[str, Any], ...]:
    """The ``details`` list of a Google error body (``error.details`` is the whole body)."""
    body = error.details if isinstance(error.details, dict) else {}
    inner = body.get("error", body)
    found = inner.get("details", []) if isinstance(inner, dict) else []
    return (
        tuple(item for item in found if isinstance(item, dict)) if isinstance(found, list) else ()
    )


def _retry_after_seconds(error: genai_errors.APIError) -> float | None:
    """The server's requested delay: the Retry-After header, else RetryInfo in the body."""
    headers = getattr(error.response, "headers", None)
    if headers is not None:
        value = headers.get("retry-after") or headers.get("Retry-After")
        with contextlib.suppress(TypeError, ValueError):
            if value is not None:
                return float(value)
    body = error.details if isinstance(error.details, dict) else {}
    inner = body.get("error", body)
    for detail in inner.get("details", []) if isinstance(inner, dict) else []:
        match = (
            _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if isinstance(detail, dict)
            else None
        )
        if match:
            return float(match.group(1))
    return None


def _from_api_error(
    error: genai_errors.APIError, missing_is_403: bool, secret: str | None, create: bool = False
) -> ApiError:
    code = int(error.code or 0)
    status = error.status if isinstance(error.status, str) else None
    message = redact(f"{code} {status or ''}: {_one_line(error.message or '')}".strip(), secret)
    kwargs: dict[str, Any] = {"code": code, "status": status, "details": _error_details(error)}
    if code in _TRANSIENT_CODES:
        transient = TransientApiError(message, retry_after=_retry_after_seconds(error), **kwargs)
        limit = limit_of(transient, create=create)
        if limit is not None and limit is not Limit.RATE:  # capacity: waiting, not retrying
            return CapacityApiError(message, limit=limit, **kwargs)
        return transient
    if code >= 500:
        return AmbiguousApiError(message, retry_after=_retry_after_seconds(error), **kwargs)
    if code == 404 or (missing_is_403 and code == 403 and status == "PERMISSION_DENIED"):
        return NotFoundApiError(message, **kwargs)
    if code == 409:
        return AlreadyExistsApiError(message, **kwargs)
    return PermanentApiError(message, **kwargs)


def _one_line(text: str) -> str:
    """A service message on one line: a create refused for its input file names each bad
    line on a line of its own ("Error on line 1: ...\nError on line 2: ...",
    UKGovernmentBEIS/inspect_ai#3257), and every report is one line."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _from_transport_error(error: BaseException, secret: str | None) -> ApiError:
    name = type(error).__name__
    text = redact(str(error) or name, secret)
    if name in _CONNECT_ERROR_NAMES:
        return TransientApiError(f"cannot connect: {text}")
    return AmbiguousApiError(f"no response ({name}): {text}")


@contextlib.contextmanager
def translate_errors(
    *, missing_is_403: bool = False, secret: str | None = None, create: bool = False
) -> Iterator[None]:
    """Re-raise SDK and transport errors as ApiError subclasses, chained with ``from``.

    ``missing_is_403``: the Files API answers 403 PERMISSION_DENIED for a file
    that does not exist, so for file calls that means "not found". ``create``: the
    call creates a batch, whose unnamed 429 is capacity (see ``_quota.limit_of``).
    """
    try:
        yield
    except genai_errors.APIError as exc:
        raise _from_api_error(exc, missing_is_403, secret, create) from exc
    except _TRANSPORT_ERRORS as exc:
        raise _from_transport_error(exc, secret) from exc


def _hex_sha256(wire: str | None) -> str | None:
    """The file's sha256 as lowercase hex, or None when the encoding is not one we know.

    The wire field is proto bytes in base64; whether those bytes are the raw
    digest or its hex text is not documented, so both are accepted.
    """
    if not wire:
        return None
    try:
        raw = base64.b64decode(wire, validate=True)
    except (binascii.Error, ValueError):
        return None
    text = raw.hex() if len(raw) == 32 else raw.decode("ascii", "replace").lower()
    return text if _HEX64.fullmatch(text) else None


def _remote_file(file: types.File) -> RemoteFile:
    expires = None
    if file.expiration_time is not None:
        expires = (file.expiration_time - datetime.now(timezone.utc)).total_seconds()
    state = file.state.value if file.state is not None else None
    return RemoteFile(
        name=file.name or "",
        sha256=_hex_sha256(file.sha256_hash),
        size_bytes=file.size_bytes,
        state=state,
        expires_in_seconds=expires,
    )


def job_of(batch: types.BatchJob) -> Job:
    """The SDK's ``BatchJob`` as our record: the one place either backend reads one
    (Vertex's too: google-genai answers for both services with this type)."""
    message = batch.error.message if batch.error is not None else None
    return Job(
        name=batch.name or "",
        display_name=batch.display_name,
        state=batch.state.value if batch.state is not None else None,
        done=batch.done,
        create_time=batch.create_time,
        update_time=batch.update_time,
        model=batch.model,
        output=_output_of(batch),
        error=str(message) if message else None,
        recorded=batch_to_dict(batch),
    )


def _output_of(batch: types.BatchJob) -> str | None:
    """A Files API file (Gemini), else the folder Vertex wrote (``output_info``)."""
    if batch.dest is not None and batch.dest.file_name:
        return batch.dest.file_name
    info = getattr(batch, "output_info", None)
    return as_folder(getattr(info, "gcs_output_directory", None))


def model_of(model: types.Model) -> Model:
    """The SDK's ``Model`` as our record."""
    return Model(name=model.name or "", supported_actions=tuple(model.supported_actions or ()))


def batch_to_dict(batch: types.BatchJob) -> dict[str, Any]:
    """The batch as the original gembatch tool records it (datetimes as ISO 8601)."""
    data = batch.model_dump(mode="python", exclude_none=True)
    return {key: _jsonable(value) for key, value in data.items()}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _count(stats: dict[str, Any], key: str) -> int:
    try:
        return int(stats.get(key) or 0)  # int64 arrives as a JSON string
    except (TypeError, ValueError):
        return 0


def _batch_detail(raw: dict[str, Any]) -> BatchDetail:
    """Parse a raw batch operation as ``AsyncBatches.get`` does, keeping stats and error."""
    job = job_of(_sdk.batch_job_from_raw(raw))
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    counts = metadata.get("batchStats")
    stats = None
    if isinstance(counts, dict):
        stats = BatchStats(
            requests=_count(counts, "requestCount"),
            succeeded=_count(counts, "successfulRequestCount"),
            failed=_count(counts, "failedRequestCount"),
            pending=_count(counts, "pendingRequestCount"),
        )
    error = raw.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    # The SDK's converter drops the error (python-genai#1323): the raw one is the job's.
    text = str(message) if message else None
    return BatchDetail(dataclasses.replace(job, error=text), stats)


class GeminiApi:
    """The calls gembatch-async makes, each returning plain data or raising ApiError."""

    def __init__(self, client: genai.Client, api_key: str | None = None) -> None:
        self._client = client
        self._secret = api_key or _key_of(client)

    @classmethod
    def for_caller_client(cls, client: genai.Client) -> GeminiApi:
        """Wrap a client the caller built, refusing one whose own retries are on.

        The SDK's retries re-send a create whose answer was lost (a second
        batch), and on aiohttp it re-sends a dropped request even with retries
        unset; only ``HttpRetryOptions(attempts=1)`` turns both off.
        """
        options = _sdk.http_options_of(client)
        if options is None:
            raise UsageError(
                "cannot check the retry options of a genai.Client with this google-genai "
                "release (the SDK's own retries can create a batch twice): pass an API key "
                "instead, and gembatch-async builds its own client"
            )
        retry = options.retry_options
        if retry is None or (retry.attempts or 0) > 1:
            raise UsageError(
                "pass a genai.Client built with http_options=HttpOptions("
                "retry_options=HttpRetryOptions(attempts=1)): the SDK's own retries "
                "can create a batch twice; gembatch-async retries (and checks) itself"
            )
        return cls(client)

    @property
    def client(self) -> genai.Client:
        return self._client

    def upload_name(self, upload_id: str) -> str:
        return f"files/{upload_id}"

    def line_fields(self) -> dict[str, Any]:
        return {}  # lines without a backend are Gemini's (the original tool's too)

    def model_supports(self, model: Model, kind: str = GENERATE) -> bool:
        return model_supports(model, kind)

    def storage_quota(self, configured: int) -> int:
        return configured

    def job_window(self, configured: int | None) -> int | None:
        return configured

    async def upload_file(
        self, path: str, *, name: str, display_name: str, mime_type: str, sha256: str = ""
    ) -> RemoteFile:
        config = types.UploadFileConfig(name=name, display_name=display_name, mime_type=mime_type)
        with translate_errors(secret=self._secret), _upload_protocol_errors(self._secret):
            file = await self._client.aio.files.upload(file=path, config=config)
        return _remote_file(file)

    async def get_file(self, name: str) -> RemoteFile:
        with translate_errors(missing_is_403=True, secret=self._secret):
            file = await self._client.aio.files.get(name=name)
        return _remote_file(file)

    async def delete_file(self, name: str) -> bool:
        """Delete the file; False when it was already gone."""
        try:
            with translate_errors(missing_is_403=True, secret=self._secret):
                await self._client.aio.files.delete(name=name)
        except NotFoundApiError:
            return False
        return True

    async def create_batch(
        self,
        *,
        model: str,
        src: str,
        display_name: str,
        kind: str = GENERATE,
        webhook: dict[str, Any] | None = None,
    ) -> Job:
        """Create the batch job for an uploaded file: batchGenerateContent for generate
        requests, asyncBatchEmbedContent (the SDK's create_embeddings) for embed ones.
        ``webhook`` asks for a dynamic webhook (``webhook_config``); the SDK's embeddings
        config has no such field (3.6.1), so embed jobs are found by polling alone."""
        with translate_errors(secret=self._secret, create=True), _unreadable_answer(self._secret):
            if kind == EMBED:
                embed_config = types.CreateEmbeddingsBatchJobConfig(display_name=display_name)
                created = await self._client.aio.batches.create_embeddings(
                    model=model, src={"file_name": src}, config=embed_config
                )
                return job_of(created)
            config = types.CreateBatchJobConfig(
                display_name=display_name,
                webhook_config=types.WebhookConfig(**webhook) if webhook else None,
            )
            return job_of(
                await self._client.aio.batches.create(model=model, src=src, config=config)
            )

    async def get_batch(self, name: str) -> Job:
        with translate_errors(secret=self._secret):
            return job_of(await self._client.aio.batches.get(name=name))

    async def get_batch_detail(self, name: str) -> BatchDetail:
        """``batches.get`` plus what the SDK drops (python-genai#1323): batchStats and error.

        The one place we reach past the SDK's public API (``_sdk``): one raw GET
        through the client's own transport, parsed with the SDK's own converter
        exactly as ``AsyncBatches.get`` does. On an SDK release without them, the
        public call, whose counts and error are unknown (:meth:`public_batch_detail`).
        """
        get = _sdk.raw_get(self._client)
        if get is None:
            return await self.public_batch_detail(name)
        path = name if name.startswith("batches/") else f"batches/{name}"
        with translate_errors(secret=self._secret), _unreadable_answer(self._secret):
            body = await get(path)
            try:
                raw = json.loads(body) if body else {}
            except ValueError as exc:
                raise AmbiguousApiError(f"unreadable batch {name}: {exc}") from exc
            if not isinstance(raw, dict):
                raise AmbiguousApiError(f"unreadable batch {name}: not a JSON object")
            return _batch_detail(raw)

    async def public_batch_detail(self, name: str) -> BatchDetail:
        """``batches.get`` through the public API only: the job, with its counts unknown
        and its error only if a release of the SDK keeps it (3.x drops both)."""
        job = await self.get_batch(name)
        return BatchDetail(job, None)

    async def cancel_batch(self, name: str) -> None:
        with translate_errors(secret=self._secret):
            await self._client.aio.batches.cancel(name=name)

    async def download_file(self, name: str, destination: str) -> None:
        """Stream a (generated) file to ``destination`` without holding it in memory."""
        with translate_errors(missing_is_403=True, secret=self._secret):
            await self._client.aio.files.download(file=name, destination=destination)

    async def list_batches(self, page_size: int = 100) -> list[Job]:
        """Every batch job of the project, paging explicitly (USERS.md P6)."""
        found: list[Job] = []
        with translate_errors(secret=self._secret):
            pager = await self._client.aio.batches.list(config={"page_size": page_size})
            async for batch in pager:
                found.append(job_of(batch))
        return found

    async def list_batch_page(
        self, near: str, page_size: int, page_token: str | None = None
    ) -> BatchPage:
        """One page of ``batches.list``, each job parsed as get_batch_detail parses one.

        The same seam as get_batch_detail: a raw GET, so the batchStats each listed
        operation carries survive (a captured listing shows them per job:
        python-genai#1323, flachesis/gemini-rust#13). ``near`` names one of our jobs:
        the listing is the project's, whatever job it names."""
        get = _sdk.raw_get(self._client)
        if get is None:  # an SDK release without the seam: the listing answers for nothing
            raise AmbiguousApiError("this google-genai release offers no raw listing")
        query = {"pageSize": str(page_size), **({"pageToken": page_token} if page_token else {})}
        path = f"batches?{urllib.parse.urlencode(query)}"
        with translate_errors(secret=self._secret), _unreadable_answer(self._secret):
            body = await get(path)
            try:
                raw = json.loads(body) if body else {}
            except ValueError as exc:
                raise AmbiguousApiError(f"unreadable batch listing: {exc}") from exc
            if not isinstance(raw, dict):
                raise AmbiguousApiError("unreadable batch listing: not a JSON object")
            operations = raw.get("operations") or []
            token = raw.get("nextPageToken")
            details = [_batch_detail(op) for op in operations if isinstance(op, dict)]
            return BatchPage(details, token if isinstance(token, str) and token else None)

    async def get_model(self, model: str) -> Model:
        with translate_errors(secret=self._secret):
            return model_of(await self._client.aio.models.get(model=model))

    async def count_tokens(self, model: str, contents: list[Any]) -> int:
        with translate_errors(secret=self._secret):
            counted = await self._client.aio.models.count_tokens(model=model, contents=contents)
        return counted.total_tokens or 0


@contextlib.contextmanager
def _unreadable_answer(secret: str | None) -> Iterator[None]:
    """A 200 whose body the SDK could not parse: the action happened, the answer is lost."""
    try:
        yield
    except pydantic.ValidationError as exc:
        raise AmbiguousApiError(redact(f"unreadable response: {exc}", secret)) from exc


@contextlib.contextmanager
def _upload_protocol_errors(secret: str | None) -> Iterator[None]:
    """The SDK's upload loop raises KeyError/ValueError/TypeError when the final
    response went missing or was garbled: the file may exist anyway."""
    try:
        yield
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, ApiError):
            raise
        raise AmbiguousApiError(redact(f"upload not confirmed: {exc}", secret)) from exc


def _key_of(client: genai.Client) -> str | None:
    """The key to redact: the client's, else (a release that hides it) the one the SDK
    takes from the environment."""
    return _sdk.api_key_of(client) or api_key_from_env()


def model_supports(model: Model, kind: str = GENERATE) -> bool:
    """Whether the model lists the batch method that requests of ``kind`` need."""
    return BATCH_METHODS[kind] in model.supported_actions


EMULATOR_API_KEY = "gembatch-emulator"
#: One attempt, i.e. the SDK retries nothing. Leaving retry_options unset is not
#: the same: on aiohttp the SDK then re-sends a request once, after 1-10 s, when
#: the connection drops, which turns a lost ``batches.create`` into a second
#: batch behind our back. With this set, every retry is ours (``_retry``).
NO_SDK_RETRIES = types.HttpRetryOptions(attempts=1)


@contextlib.asynccontextmanager
async def api_session(
    client: genai.Client | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
) -> AsyncIterator[GeminiApi]:
    """The caller's client (checked), or one of ours that is closed afterwards."""
    if client is not None:
        yield GeminiApi.for_caller_client(client)
        return
    api = open_client(api_key=api_key, base_url=base_url)
    try:
        yield api
    finally:
        with anyio.CancelScope(shield=True):  # close even when the run is being cancelled
            await api.client.aio.aclose()


def open_client(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> GeminiApi:
    """A client for the Gemini Developer API (or the emulator at ``base_url``).

    Without ``api_key`` the key comes from GOOGLE_API_KEY / GEMINI_API_KEY; without
    ``base_url`` the SDK honours GOOGLE_GEMINI_BASE_URL. The SDK's own retries
    stay off: ours (``_retry``) are the only ones.
    """
    key = api_key or api_key_from_env()
    if not key:
        raise MissingApiKeyError()
    refuse_unsendable_key(key)
    options = types.HttpOptions(
        base_url=base_url,
        timeout=int(timeout_s * 1000),
        retry_options=NO_SDK_RETRIES,
    )
    return GeminiApi(genai.Client(api_key=key, http_options=options), api_key=key)
