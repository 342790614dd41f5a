"""The ASGI app: routing, API-key checks, faults, and the Files/Batches/Models handlers."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gembatch_async._schema import EMBED, GENERATE
from gembatch_async.emulator._config import EmulatorConfig
from gembatch_async.emulator._errors import (
    ApiError,
    fault_message,
    generic_quota_error,
    rate_limit_error,
    storage_quota_error,
)
from gembatch_async.emulator._faults import FaultInjector, FaultRule, RequestLog, parse_fault_spec
from gembatch_async.emulator._models import BATCH_EMBED, BATCH_GENERATE, model_spec
from gembatch_async.emulator._request_errors import RequestErrors
from gembatch_async.emulator._responses import prompt_tokens
from gembatch_async.emulator._scenarios import SCENARIO_ACTIONS, Scenarios
from gembatch_async.emulator._store import (
    FILE_LIFETIME_SECONDS,
    UNFINISHED,
    BatchRecord,
    FileRecord,
    InputScan,
    Store,
    UploadSession,
    generate_output_blocking,
    inline_results,
    new_id,
    scan_input_blocking,
    snapshot_input,
)
from gembatch_async.emulator._validation import (
    INVALID_ARGUMENT,
    camel_names,
    field_violations,
    input_file_error,
    request_issues,
)
from gembatch_async.emulator._webhooks import WebhookSender

logger = logging.getLogger(__name__)

# Set by the server's protocol (see _serve.py): a callable that drops the TCP connection.
ABORT_EXTENSION = "gembatch.abort"

PUBLIC_HOST = "https://generativelanguage.googleapis.com"
_TYPES = "type.googleapis.com/google.ai.generativelanguage.v1main"
#: The resource (and output) type of each kind of batch, for the Operation's @type fields.
BATCH_TYPES = {GENERATE: "GenerateContentBatch", EMBED: "EmbedContentBatch"}
#: The model method each kind of batch needs.
BATCH_METHODS = {GENERATE: BATCH_GENERATE, EMBED: BATCH_EMBED}
CHUNK_GRANULARITY = 8 * 1024 * 1024

_VER = r"(?P<ver>v1|v1beta|v1alpha)"
_PREFIX = r"^(?P<prefix>(?:/[^/]+)*?)"
_FILE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_FILE_ID_MAX = 40
_MIME = re.compile(
    r"^(application|audio|font|image|message|model|multipart|text|video)"
    r"/[a-z0-9][a-z0-9!#$&^_.+-]*(\s*;.*)?$"
)
# MIME types without a slash that the real service accepts for JSONL batch input.
_BARE_MIME_TYPES = ("jsonl",)
_ENDED = (
    "BATCH_STATE_SUCCEEDED",
    "BATCH_STATE_CANCELLED",
    "BATCH_STATE_FAILED",
    "BATCH_STATE_EXPIRED",
)

#: Where the emulator publishes its webhook signing keys (see _webhooks).
JWKS_PATH = "/.well-known/jwks.json"
_ADMIN_ACTIONS = "|".join(("state", "reset", "faults", *SCENARIO_ACTIONS))

T = TypeVar("T")
Handler = Callable[[Request, "re.Match[str]"], Awaitable[Response]]
#: Checks a request's credentials; raises ApiError (401/403) when they will not do.
Authenticate = Callable[[Request], None]


def rfc3339(epoch: float) -> str:
    """RFC 3339 UTC timestamp with microseconds and a `Z`, as Google APIs send."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pick(obj: dict[str, Any], snake: str, camel: str) -> Any:
    """A field in either spelling (the SDK sends a mix of snake_case and camelCase)."""
    return obj[snake] if snake in obj else obj.get(camel)


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, status_code=200)


def _error_response(err: ApiError, upload: bool) -> JSONResponse:
    response = JSONResponse(err.body(), status_code=err.code, headers=err.headers)
    if upload:
        # Without this header the SDK resends the chunk three times (1, 2, 4 s sleeps).
        response.raw_headers.append((b"X-Goog-Upload-Status", b"final"))
    return response


def _page(request: Request, default: int, maximum: int) -> tuple[str | None, int]:
    """(pageToken or None, page size) from the query, with the service's default and cap."""
    raw_size = request.query_params.get("pageSize") or request.query_params.get("page_size")
    try:
        size = int(raw_size) if raw_size else default
    except ValueError:
        raise ApiError(400, f"Invalid value for pageSize: {raw_size!r}") from None
    size = default if size <= 0 else min(size, maximum)
    token = request.query_params.get("pageToken") or request.query_params.get("page_token")
    return token or None, size


SortKey = tuple[float, str]


def _encode_token(key: SortKey) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_token(token: str) -> SortKey:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return float(raw[0]), str(raw[1])
    except (ValueError, TypeError, IndexError, KeyError):
        raise ApiError(400, "Invalid page token.") from None


def _keyset_page(
    records: list[T], sort_key: Callable[[T], SortKey], token: str | None, size: int
) -> tuple[list[T], str | None]:
    """One page plus the next token. The token names the last item seen (not an offset),
    so concurrent creates and deletes never make a pager skip or repeat an item."""
    ordered = sorted(records, key=sort_key)
    if token is not None:
        after = _decode_token(token)
        ordered = [r for r in ordered if sort_key(r) > after]
    chunk = ordered[:size]
    more = len(ordered) > size
    # Never an empty page with a token: the SDK pager would raise IndexError.
    return chunk, (_encode_token(sort_key(chunk[-1])) if chunk and more else None)


def _page_body(items: list[Any], next_token: str | None, key: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if items:
        body[key] = items
    if next_token:
        body["nextPageToken"] = next_token
    return body


class _RawEndpoint:
    """ASGI adapter to EmulatorApp._asgi_entry."""

    def __init__(self, app: EmulatorApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app._asgi_entry(scope, receive, send)


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str  # name used by faults and the request log
    handler: Handler
    authenticate: Authenticate | None = None  # None: the Gemini API key check


@dataclasses.dataclass(frozen=True)
class ExtraRoute:
    """A route served by an extension. ``tail`` is a regex for the path after any prefix;
    ``endpoint`` names it for faults and the request log, like the built-in routes."""

    method: str
    tail: str
    endpoint: str
    handler: Handler
    authenticate: Authenticate


class RouteExtension(Protocol):
    """Another API served by the same app (the Vertex AI routes, see _vertex.py). Its
    requests go through the same latency, faults and request log as the built-in ones."""

    #: The key of its list in GET /_emulator/state.
    state_key: str

    def routes(self) -> list[ExtraRoute]:
        """The routes it serves."""
        ...

    async def refresh(self) -> None:
        """Bring clock-driven state up to date (called before the state document)."""
        ...

    def state(self) -> list[dict[str, Any]]:
        """Its entries for GET /_emulator/state."""
        ...

    def reset(self) -> None:
        """Forget everything (POST /_emulator/reset)."""
        ...


class EmulatorApp:
    """Holds the store, faults and counters; `asgi` is the Starlette app uvicorn serves."""

    def __init__(
        self, config: EmulatorConfig, store: Store, extensions: Sequence[RouteExtension] = ()
    ) -> None:
        self.config = config
        self.store = store
        self.extensions = tuple(extensions)
        self.log = RequestLog()
        self.faults = FaultInjector(parse_fault_spec(config.faults), config.fault_seed)
        self.scenarios = Scenarios()
        self.webhooks = WebhookSender(config.webhook_faults)
        self._generate_lock = anyio.Lock()
        self._routes = self._build_routes()
        # A class instance (not a function) makes Starlette pass the raw ASGI call through,
        # for every HTTP method.
        self.asgi = Starlette(routes=[Route("/{path:path}", endpoint=_RawEndpoint(self))])

    # ----- routing -----------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        def r(method: str, tail: str, endpoint: str, handler: Handler) -> _Route:
            return _Route(method, re.compile(_PREFIX + tail + "$"), endpoint, handler)

        file_id = r"(?P<id>[^/:]+)"
        return [
            r("POST", rf"/upload/{_VER}/files", "upload", self._upload),
            r("GET", rf"/download/{_VER}/files/{file_id}:download", "download", self._download),
            r("GET", rf"/{_VER}/files/{file_id}:download", "download", self._download),
            r("GET", rf"/{_VER}/files/{file_id}", "get", self._get_file),
            r("DELETE", rf"/{_VER}/files/{file_id}", "delete", self._delete_file),
            r("GET", rf"/{_VER}/files", "list", self._list_files),
            r("POST", rf"/{_VER}/files:register", "create", self._register_files),
            r(
                "POST",
                rf"/{_VER}/models/(?P<model>[^/:]+):batchGenerateContent",
                "create",
                self._create_batch,
            ),
            r(
                "POST",
                rf"/{_VER}/models/(?P<model>[^/:]+):asyncBatchEmbedContent",
                "create",
                self._create_embed_batch,
            ),
            r(
                "POST",
                rf"/{_VER}/models/(?P<model>[^/:]+):countTokens",
                "count",
                self._count_tokens,
            ),
            r("GET", rf"/{_VER}/models/(?P<model>[^/:]+)", "get", self._get_model),
            r("GET", rf"/{_VER}/models", "list", self._list_models),
            r("POST", rf"/{_VER}/batches/(?P<id>[^/:]+):cancel", "cancel", self._cancel_batch),
            r("GET", rf"/{_VER}/batches/(?P<id>[^/:]+)", "get", self._get_batch),
            r("DELETE", rf"/{_VER}/batches/(?P<id>[^/:]+)", "delete", self._delete_batch),
            r("GET", rf"/{_VER}/batches", "list", self._list_batches),
            *(
                _Route(
                    x.method,
                    re.compile(_PREFIX + x.tail + "$"),
                    x.endpoint,
                    x.handler,
                    x.authenticate,
                )
                for extension in self.extensions
                for x in extension.routes()
            ),
        ]

    async def _asgi_entry(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Raw ASGI endpoint, so a handler may also answer by dropping the connection."""
        request = Request(scope, receive)
        response = await self._dispatch(request)
        if response is None:
            await self._drop_connection(scope)
            return
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response | None:
        path = request.url.path
        if path == JWKS_PATH and request.method == "GET":  # public, like Google's key set
            return _json(self.webhooks.jwks())
        admin = re.match(_PREFIX + rf"/_emulator/(?P<action>{_ADMIN_ACTIONS})$", path)
        if admin:
            return await self._admin(request, admin.group("action"))
        for route in self._routes:
            match = route.pattern.match(path)
            if match and route.method == request.method:
                return await self._api(request, route, match)
        for route in self._routes:
            if route.pattern.match(path):
                err = ApiError(405, f"Method {request.method} not allowed on {path}.")
                return _error_response(err, upload=False)
        return _error_response(ApiError(404, f"Method not found: {path}"), upload=False)

    async def _drop_connection(self, scope: Scope) -> None:
        """Close the TCP connection without an HTTP response (the `reset`/`lost` faults)."""
        abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
        if abort is None:  # served by something other than serve_emulator
            raise RuntimeError("dropping connections needs serve_emulator's protocol")
        abort()
        # Let the loop run connection_lost, so uvicorn sees the disconnect and stays quiet.
        await asyncio.sleep(0.01)

    # ----- the common request pipeline ---------------------------------------------------

    async def _api(self, request: Request, route: _Route, match: re.Match[str]) -> Response | None:
        is_upload = route.endpoint == "upload"
        is_chunk = is_upload and "upload_id" in request.query_params
        final_chunk = is_chunk and "finalize" in request.headers.get("x-goog-upload-command", "")
        with self.log.track(route.endpoint):
            if self.config.latency_ms > 0:
                await anyio.sleep(self.config.latency_ms / 1000)
            stall = self.scenarios.stall_seconds(route.endpoint)
            if stall > 0:
                await anyio.sleep(stall)
            # `lost` on uploads hits the finalizing chunk: the file is stored, the answer lost.
            rule = self.faults.decide(route.endpoint, allow_lost=not is_upload or final_chunk)
            if rule is not None and rule.kind == "reset":
                return None
            if rule is not None and rule.kind == "slow":  # received whole, then handled late:
                await request.body()  # the action happens even if the client stops waiting
                await anyio.sleep(rule.seconds)
                rule = None
            response = await self._run_handler(request, route, match, rule, is_chunk, is_upload)
            if rule is not None and rule.kind == "lost":
                if self.faults.lost_drops_connection():
                    return None
                return _error_response(ApiError(503, fault_message(503)), upload=is_upload)
            return response

    async def _run_handler(
        self,
        request: Request,
        route: _Route,
        match: re.Match[str],
        rule: FaultRule | None,
        is_chunk: bool,
        is_upload: bool,
    ) -> Response:
        try:
            if rule is not None and rule.kind == "status" and rule.status is not None:
                raise _fault_error(rule.status, rule.body)
            if not is_chunk:  # the upload URL itself is the credential for chunks
                (route.authenticate or _check_api_key)(request)
            self.store.expire_files()  # every answer sees the files the service still has
            return await route.handler(request, match)
        except ApiError as err:
            if is_chunk:
                await _drain(request)  # read the body so the client sees our answer
            return _error_response(err, upload=is_upload)
        except ClientDisconnect:
            raise
        except Exception:
            logger.exception("emulator handler failed")
            return _error_response(ApiError(500, fault_message(500)), upload=is_upload)

    # ----- rendering ---------------------------------------------------------------------

    def _file_json(self, record: FileRecord, ver: str) -> dict[str, Any]:
        body: dict[str, Any] = {"name": record.name}
        if record.display_name:
            body["displayName"] = record.display_name
        body.update(
            {
                "mimeType": record.mime_type,
                "sizeBytes": str(record.size_bytes),
                "createTime": rfc3339(record.create_time),
                "updateTime": rfc3339(record.create_time),
                "expirationTime": rfc3339(record.create_time + FILE_LIFETIME_SECONDS),
                "sha256Hash": record.sha256_hash,
                "uri": f"{PUBLIC_HOST}/{ver}/{record.name}",
                "state": "ACTIVE",
                "source": record.source,
            }
        )
        if record.source == "GENERATED":
            body["downloadUri"] = f"{PUBLIC_HOST}/download/{ver}/{record.name}:download?alt=media"
        return body

    def _batch_stats(self, batch: BatchRecord, state: str) -> dict[str, str]:
        counts = {"requestCount": batch.request_count}
        if state in UNFINISHED:
            # The service counts requests done while the job runs: a captured RUNNING job
            # reads requestCount 4, successfulRequestCount 1, pendingRequestCount 3.
            # Source: googleapis/python-genai#1323 (the SDK drops batchStats; the wire has them).
            # Here the share done follows the time spent RUNNING, failures spread evenly.
            share = self._running_share(batch) if state == "BATCH_STATE_RUNNING" else 0.0
            failed = math.floor(batch.malformed_count * share)
            done = max(math.floor(batch.request_count * share), failed)
            counts["successfulRequestCount"] = done - failed
            counts["failedRequestCount"] = failed
            counts["pendingRequestCount"] = batch.request_count - done
        elif state == "BATCH_STATE_SUCCEEDED":
            counts["successfulRequestCount"] = batch.request_count - batch.malformed_count
            counts["failedRequestCount"] = batch.malformed_count
        # proto3 JSON: int64 as strings, zero values omitted.
        return {k: str(v) for k, v in counts.items() if v}

    def _running_share(self, batch: BatchRecord) -> float:
        """How far through RUNNING (from a third of processing_seconds to all of it) a
        job is, 0 to 1."""
        start = self.store.processing_seconds / 3
        span = self.store.processing_seconds - start
        if span <= 0:
            return 1.0
        return min(1.0, max(0.0, (self.store.clock.now() - batch.create_time - start) / span))

    def _transition_times(self, batch: BatchRecord, state: str) -> tuple[float, float | None]:
        """(updateTime, endTime) for the current state."""
        if batch.end_state is not None and batch.end_time is not None:
            return batch.end_time, batch.end_time
        if state == "BATCH_STATE_CANCELLED" and batch.cancel_time is not None:
            return batch.cancel_time, batch.cancel_time
        if state == "BATCH_STATE_SUCCEEDED":
            end = batch.create_time + self.store.processing_seconds
            return end, end
        if state == "BATCH_STATE_EXPIRED":
            end = batch.create_time + (self.store.expire_after_seconds or 0)
            return end, end
        if state == "BATCH_STATE_RUNNING":
            return batch.create_time + self.store.processing_seconds / 3, None
        return batch.create_time, None

    def _batch_json(self, batch: BatchRecord) -> dict[str, Any]:
        state = self.store.batch_state(batch)
        update, end = self._transition_times(batch, state)
        resource = BATCH_TYPES[batch.kind]
        meta: dict[str, Any] = {"@type": f"{_TYPES}.{resource}", "name": batch.name}
        meta["model"] = batch.model
        if batch.display_name:
            meta["displayName"] = batch.display_name
        if batch.input_file:
            meta["inputConfig"] = {"fileName": batch.input_file}
        meta.update(
            {
                "createTime": rfc3339(batch.create_time),
                "updateTime": rfc3339(update),
                "batchStats": self._batch_stats(batch, state),
                "state": state,
            }
        )
        if end is not None:
            meta["endTime"] = rfc3339(end)
        op: dict[str, Any] = {"name": batch.name, "metadata": meta}
        output = self._batch_output(batch, state)
        if output is not None:
            meta["output"] = output
            op["response"] = {"@type": f"{_TYPES}.{resource}Output", **output}
        if state in _ENDED:
            op["done"] = True
        if state == "BATCH_STATE_CANCELLED":
            op["error"] = {"code": 1, "message": "The batch was cancelled."}
        return op

    def _batch_output(self, batch: BatchRecord, state: str) -> dict[str, Any] | None:
        if state != "BATCH_STATE_SUCCEEDED":
            return None
        if batch.inline_requests is not None:
            return {"inlinedResponses": {"inlinedResponses": inline_results(batch)}}
        if batch.output_file:
            return {"responsesFile": batch.output_file}
        return None

    async def _observe(self, batch: BatchRecord) -> None:
        """Generate a finished batch's output file the first time anyone looks at it."""
        if (
            batch.input_file is None
            or batch.output_file is not None
            or self.store.batch_state(batch) != "BATCH_STATE_SUCCEEDED"
        ):
            return
        async with self._generate_lock:
            if batch.output_file is not None or batch.batch_id not in self.store.batches:
                return
            file_id = self.store.output_file_id(batch)
            size, digest = await anyio.to_thread.run_sync(
                generate_output_blocking,
                self.store.batch_input_path(batch.batch_id),
                self.store.blob_path(file_id),
                batch.batch_id,
                batch.model.removeprefix("models/"),
                batch.kind,
                RequestErrors(self.config.request_errors, self.config.fault_seed),
                self.config.numeric_keys,
                self.store.request_errors_draw(batch),
            )
            self.store.register_output(batch, size, digest)

    async def _observe_all(self) -> None:
        for batch in list(self.store.batches.values()):
            await self._observe(batch)

    # ----- files -------------------------------------------------------------------------

    async def _upload(self, request: Request, match: re.Match[str]) -> Response:
        if "upload_id" in request.query_params:
            return await self._upload_chunk(request)
        return await self._upload_start(request, match)

    async def _upload_start(self, request: Request, match: re.Match[str]) -> Response:
        if request.headers.get("x-goog-upload-command", "").strip().lower() != "start":
            raise ApiError(400, "Only resumable uploads (X-Goog-Upload-Command: start) are served.")
        body = await _json_body(request)
        spec = body.get("file") or {}
        if not isinstance(spec, dict):
            raise ApiError(400, "Invalid value at 'file'.")
        mime = _pick(spec, "mime_type", "mimeType") or request.headers.get(
            "x-goog-upload-header-content-type", ""
        )
        size = self._declared_size(spec, request)
        file_id = self._requested_file_id(spec)
        _check_mime(str(mime))
        if size > self.config.max_file_bytes:
            raise ApiError(
                400,
                f"File size {size} bytes exceeds the maximum of "
                f"{self.config.max_file_bytes} bytes.",
            )
        if self.store.uploaded_bytes() + size > self.config.storage_quota_bytes:
            raise storage_quota_error(self.config.storage_quota_bytes)
        display_name = _pick(spec, "display_name", "displayName")
        session = self.store.start_upload(
            file_id, str(display_name) if display_name else None, str(mime), size
        )
        url = (
            f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
            f"{match.group('prefix')}/upload/{match.group('ver')}/files"
            f"?upload_id={session.upload_id}&upload_protocol=resumable"
        )
        response = _json({})
        # Exact spelling matters: the SDK's aiohttp path looks the header up case-sensitively,
        # and Starlette would lower-case it, so append the raw header ourselves.
        response.raw_headers += [
            (b"X-Goog-Upload-URL", url.encode("latin-1")),
            (b"X-Goog-Upload-Status", b"active"),
            (b"X-Goog-Upload-Chunk-Granularity", str(CHUNK_GRANULARITY).encode()),
        ]
        return response

    def _declared_size(self, spec: dict[str, Any], request: Request) -> int:
        raw = _pick(spec, "size_bytes", "sizeBytes")
        if raw is None:
            raw = request.headers.get("x-goog-upload-header-content-length")
        try:
            size = int(raw) if raw is not None else -1
        except (TypeError, ValueError):
            size = -1
        if size < 0:
            raise ApiError(400, "The upload size (sizeBytes) is missing or invalid.")
        return size

    def _requested_file_id(self, spec: dict[str, Any]) -> str:
        """The client-chosen id (validated, must be free) or a fresh 12-character one."""
        name = spec.get("name")
        if not name:
            return new_id(12)
        file_id = str(name).removeprefix("files/")
        if not _FILE_ID.match(file_id):
            raise ApiError(
                400,
                f"Invalid file name {name!r}: the id must be 1-40 characters of lowercase "
                "letters, digits or dashes, and must not start or end with a dash.",
            )
        # An unfinished upload session does not hold the name: a client whose
        # upload was cut off must be able to start again. Finalize re-checks.
        if file_id in self.store.files:
            raise ApiError(409, f"File files/{file_id} already exists.")
        return file_id

    async def _upload_chunk(self, request: Request) -> Response:
        session = self.store.uploads.get(request.query_params["upload_id"])
        if session is None:
            raise ApiError(404, "No upload session with this upload_id (finished or unknown).")
        offset_header = request.headers.get("x-goog-upload-offset", "0")
        if not offset_header.isdigit() or int(offset_header) != session.received:
            raise ApiError(
                400,
                f"Invalid upload offset {offset_header}: {session.received} bytes received so far.",
            )
        try:
            await self._append_body(request, session)
        except ApiError:
            self.store.abandon_upload(session)
            raise
        command = request.headers.get("x-goog-upload-command", "")
        if "finalize" not in command:
            response = _json({})
            response.raw_headers.append((b"X-Goog-Upload-Status", b"active"))
            return response
        if session.received != session.total:
            self.store.abandon_upload(session)
            raise ApiError(
                400,
                f"Upload finalized after {session.received} bytes, "
                f"but {session.total} were declared.",
            )
        record = self.store.finish_upload(session)
        response = _json({"file": self._file_json(record, _ver_of(request))})
        response.raw_headers.append((b"X-Goog-Upload-Status", b"final"))
        return response

    async def _append_body(self, request: Request, session: UploadSession) -> None:
        """Stream the chunk body to the part file, hashing as we go (never the whole file)."""
        with session.part_path.open("ab") as fh:
            async for piece in request.stream():
                if not piece:
                    continue
                if session.received + len(piece) > session.total:
                    raise ApiError(
                        400, f"Upload exceeds the declared size of {session.total} bytes."
                    )
                fh.write(piece)
                session.hasher.update(piece)
                session.received += len(piece)

    async def _get_file(self, request: Request, match: re.Match[str]) -> Response:
        _check_file_id_length(match.group("id"), "GetFileRequest")
        await self._observe_all()
        record = self.store.get_file(match.group("id"))
        return _json(self._file_json(record, match.group("ver")))

    async def _delete_file(self, request: Request, match: re.Match[str]) -> Response:
        _check_file_id_length(match.group("id"), "DeleteFileRequest")
        self.scenarios.check_delete(match.group("id"))
        self.store.delete_file(match.group("id"))
        return _json({})

    async def _list_files(self, request: Request, match: re.Match[str]) -> Response:
        token, size = _page(request, default=10, maximum=100)
        await self._observe_all()
        # Newest first, as the real service lists.
        records, next_token = _keyset_page(
            list(self.store.files.values()), lambda f: (-f.create_time, f.name), token, size
        )
        items = [self._file_json(f, match.group("ver")) for f in records]
        return _json(_page_body(items, next_token, "files"))

    async def _register_files(self, request: Request, match: re.Match[str]) -> Response:
        """files:register imports Cloud Storage objects. The emulator has no Cloud
        Storage, so it answers as the service does for a caller whose credentials
        cannot read the objects (the wording is Cloud Storage's own denial)."""
        body = await _json_body(request)
        uris = body.get("uris")
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise ApiError(400, "uris must be a non-empty list of gs:// URIs.")
        raise ApiError(
            403,
            f"The caller does not have storage.objects.get access to the Google Cloud Storage "
            f"object {uris[0]}. Permission 'storage.objects.get' denied on resource (or it may "
            "not exist).",
        )

    async def _download(self, request: Request, match: re.Match[str]) -> Response:
        # No id-length check here: downloads of output files (ids over 40 characters)
        # work (python-genai#1759: "c.files.download(file=ref)  # OK").
        file_id = match.group("id")
        if file_id not in self.store.files and file_id.startswith("batch-"):
            batch = self.store.batches.get(file_id.removeprefix("batch-"))
            if batch is None:
                # The output went with its deleted batch: 404, as go-genai#436 is quoted
                # in issue 16 (the thread's text itself was not readable here).
                raise ApiError(404, f"Requested entity was not found. (files/{file_id})")
            await self._observe(batch)
        record = self.store.get_file(file_id)
        if record.source != "GENERATED":
            raise ApiError(
                400,
                f"File {record.name} cannot be downloaded: only files generated by the "
                "service (such as batch output) can be downloaded.",
                "FAILED_PRECONDITION",
            )
        return FileResponse(self.store.blob_path(file_id), media_type="application/octet-stream")

    # ----- models ------------------------------------------------------------------------

    def _require_model(self, model: str, ver: str, method: str | None = None) -> str:
        """The bare id of a served model that supports ``method``, else the service's 404."""
        bare = model.removeprefix("models/")
        served = bare in self.config.served_models
        if not served or (method is not None and method not in model_spec(bare).methods):
            suffix = f", or is not supported for {method}" if method else ""
            raise ApiError(
                404,
                f"models/{bare} is not found for API version {ver}{suffix}. Call ListModels "
                "to see the list of available models and their supported methods.",
            )
        return bare

    async def _get_model(self, request: Request, match: re.Match[str]) -> Response:
        model = self._require_model(match.group("model"), match.group("ver"))
        return _json(model_spec(model).to_json())

    async def _count_tokens(self, request: Request, match: re.Match[str]) -> Response:
        """models.countTokens as the SDK speaks it on the Developer API: the body is
        ``{"contents": [...]}`` and the answer ``{"totalTokens": N}`` (google-genai
        3.6.1 models.py: ``_CountTokensParameters_to_mldev``,
        ``_CountTokensResponse_from_mldev``). N is the count this emulator's answers
        report as ``promptTokenCount`` for the same contents."""
        self._require_model(match.group("model"), match.group("ver"), "countTokens")
        body = await _json_body(request)
        return _json({"totalTokens": prompt_tokens({"contents": body.get("contents")})})

    async def _list_models(self, request: Request, match: re.Match[str]) -> Response:
        token, size = _page(request, default=50, maximum=1000)
        served = self.config.served_models
        order = {m: float(i) for i, m in enumerate(served)}
        models, next_token = _keyset_page(list(served), lambda m: (order[m], m), token, size)
        items = [model_spec(m).to_json() for m in models]
        return _json(_page_body(items, next_token, "models"))

    # ----- batches -----------------------------------------------------------------------

    async def _create_batch(self, request: Request, match: re.Match[str]) -> Response:
        return await self._create(request, match, GENERATE)

    async def _create_embed_batch(self, request: Request, match: re.Match[str]) -> Response:
        return await self._create(request, match, EMBED)

    async def _create(self, request: Request, match: re.Match[str], kind: str) -> Response:
        """batchGenerateContent and asyncBatchEmbedContent: one body shape, two kinds."""
        ver = match.group("ver")
        model = self._require_model(match.group("model"), ver, BATCH_METHODS[kind])
        body = await _json_body(request)
        spec = body.get("batch", body)
        if not isinstance(spec, dict):
            raise ApiError(400, "Invalid value at 'batch'.")
        input_config = _pick(spec, "input_config", "inputConfig")
        if not isinstance(input_config, dict):
            raise ApiError(400, "batch.input_config is required.")
        display_name = _pick(spec, "display_name", "displayName")
        webhook = _pick(spec, "webhook_config", "webhookConfig")
        if webhook is not None and not isinstance(webhook, dict):
            raise ApiError(400, "Invalid value at 'batch.webhook_config'.")
        batch = BatchRecord(
            # 36 characters, as the service's ids (batches/ncdlxnfztvvdy7lv52g4s7ge6l385vi46eyi
            # in python-genai#1759; "The batch job ID itself is 36 characters", js-genai#1227).
            batch_id=new_id(36),
            model=f"models/{model}",
            display_name=str(display_name) if display_name else None,
            input_file=None,
            inline_requests=None,
            create_time=self.store.clock.now(),
            request_count=0,
            malformed_count=0,
            kind=kind,
        )
        file_name = _pick(input_config, "file_name", "fileName")
        if file_name:
            await self._attach_input_file(batch, str(file_name))
        else:
            _attach_inline_requests(batch, input_config)
        batch.create_time = self.store.clock.now()  # after any slow input scan
        # The limit check and the insert are one synchronous step (no await between).
        self.store.admit_batch(
            batch, self.config.max_unfinished_batches, self.config.enqueued_token_quota
        )
        if webhook is not None:
            try:
                self.webhooks.expect(batch.name, webhook)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
        return _json(self._batch_json(batch))

    async def _attach_input_file(self, batch: BatchRecord, file_name: str) -> None:
        """Snapshot and count a file-sourced batch's input (400 if the file is missing)."""
        file_id = file_name.removeprefix("files/")
        record = self.store.files.get(file_id)
        if record is None:
            raise ApiError(400, f"Input file {file_name} does not exist or is not accessible.")
        snapshot = self.store.batch_input_path(batch.batch_id)
        await anyio.to_thread.run_sync(snapshot_input, self.store.blob_path(file_id), snapshot)
        refused = camel_names(self.config.refused_fields)
        scan = await anyio.to_thread.run_sync(scan_input_blocking, snapshot, batch.kind, refused)
        refusal = self._input_refusal(scan)
        if refusal is not None:
            snapshot.unlink(missing_ok=True)
            raise refusal
        batch.input_file = record.name
        batch.input_sha256 = record.sha256_hash
        batch.tokens = max(1, record.size_bytes // 4)
        batch.request_count = scan.requests
        batch.malformed_count = scan.malformed

    def _input_refusal(self, scan: InputScan) -> ApiError | None:
        """The 400 for an input file the service will not take (see _validation)."""
        if scan.problems and not self.config.answer_invalid_lines:
            return ApiError(400, input_file_error(scan.problems))
        if scan.refused:
            return ApiError(400, INVALID_ARGUMENT)  # python-genai#1150
        return None

    async def _get_batch(self, request: Request, match: re.Match[str]) -> Response:
        batch = self.store.get_batch(match.group("id"))
        await self._observe(batch)
        return _json(self._batch_json(batch))

    async def _list_batches(self, request: Request, match: re.Match[str]) -> Response:
        token, size = _page(request, default=10, maximum=100)
        await self._observe_all()
        listed = [b for b in self.store.batches.values() if b.name not in self.scenarios.unlisted]
        batches, next_token = _keyset_page(listed, lambda b: (-b.create_time, b.name), token, size)
        items = [self._batch_json(b) for b in batches]
        return _json(_page_body(items, next_token, "operations"))

    async def _cancel_batch(self, request: Request, match: re.Match[str]) -> Response:
        batch = self.store.get_batch(match.group("id"))
        state = self.store.batch_state(batch)
        if state not in UNFINISHED:
            raise ApiError(
                400,
                f"Batch {batch.name} is already in terminal state {state} and cannot be cancelled.",
                "FAILED_PRECONDITION",
            )
        batch.cancel_time = self.store.clock.now()
        self.store.save()
        return _json({})

    async def _delete_batch(self, request: Request, match: re.Match[str]) -> Response:
        self.store.delete_batch(match.group("id"))
        return _json({})

    # ----- admin -------------------------------------------------------------------------

    async def _admin(self, request: Request, action: str) -> Response:
        if action == "state" and request.method == "GET":
            self.store.expire_files()
            await self._observe_all()
            for extension in self.extensions:
                await extension.refresh()
            return _json(self.state())
        if action == "reset" and request.method == "POST":
            self.store.clear()
            self.webhooks.reset()
            for extension in self.extensions:
                extension.reset()
            self.log.reset()
            self.scenarios = Scenarios()
            self.faults = FaultInjector(
                parse_fault_spec(self.config.faults), self.config.fault_seed
            )
            return _json({})
        if action == "faults" and request.method == "POST":
            return await self._admin_faults(request)
        if action in SCENARIO_ACTIONS and request.method == "POST":
            return await self._admin_scenario(request, action)
        return _error_response(ApiError(405, f"Method {request.method} not allowed."), False)

    async def _admin_faults(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            spec = body.get("faults", "")
            seed = body.get("seed")
            if not isinstance(spec, str) or not (seed is None or isinstance(seed, int)):
                raise ApiError(400, "Expected {'faults': str, 'seed': int | null}.")
            rules = parse_fault_spec(spec)
        except ValueError as exc:
            return _error_response(ApiError(400, str(exc)), upload=False)
        except ApiError as err:
            return _error_response(err, upload=False)
        self.faults = FaultInjector(rules, seed)
        return _json({"faults": spec, "seed": seed})

    async def _admin_scenario(self, request: Request, action: str) -> Response:
        try:
            body = await _json_body(request)
            return _json(self.scenarios.apply(action, body, self.store, FILE_LIFETIME_SECONDS))
        except ApiError as err:
            return _error_response(err, upload=False)

    def state(self) -> dict[str, Any]:
        """The /_emulator/state document (sizes as JSON numbers, states as wire enums)."""
        files = [
            {
                "name": f.name,
                "displayName": f.display_name,
                "sizeBytes": f.size_bytes,
                "sha256Hash": f.sha256_hash,
                "source": f.source,
                "mimeType": f.mime_type,
                "createTime": rfc3339(f.create_time),
            }
            for f in self.store.files.values()
        ]
        batches = [
            {
                "name": b.name,
                "displayName": b.display_name,
                "model": b.model,
                "state": self.store.batch_state(b),
                "inputFile": b.input_file,
                "outputFile": b.output_file,
                "requestCount": b.request_count,
                "createTime": rfc3339(b.create_time),
                # Which requests --request-errors fails in this job (tests predict them).
                "requestErrorsDraw": self.store.request_errors_draw(b),
            }
            for b in self.store.batches.values()
        ]
        document = {"files": files, "batches": batches, "requests": self.log.snapshot()}
        document["webhooks"] = list(self.webhooks.log)
        document.update({x.state_key: x.state() for x in self.extensions})
        return document

    def state_of(self, name: str) -> str | None:
        """A batch's wire state, or None once it is gone (the webhook sender asks)."""
        batch = self.store.batches.get(name.removeprefix("batches/"))
        return None if batch is None else self.store.batch_state(batch)


# ----- small helpers -------------------------------------------------------------------------


def _ver_of(request: Request) -> str:
    found = re.search(r"/(v1|v1beta|v1alpha)/", request.url.path + "/")
    return found.group(1) if found else "v1"


def _fault_error(status: int, body: str | None = None) -> ApiError:
    if status == 429:
        return generic_quota_error() if body == "generic" else rate_limit_error(fault_message(429))
    return ApiError(status, fault_message(status))


def _check_api_key(request: Request) -> None:
    """Reject requests without a usable key the way the real service does."""
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        raise ApiError(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        )
    if key == "invalid":
        raise ApiError(
            400,
            "API key not valid. Please pass a valid API key.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        )


def _check_file_id_length(file_id: str, request_type: str) -> None:
    """The service checks the id's length before it looks the file up, so a batch's
    output file (``batch-`` and a 36-character id: 42 characters) cannot be got or
    deleted. Source, message included: go-genai#436 and python-genai#1613 (get),
    python-genai#1759 (delete; it reports get as working again in 2026-09, so the tool
    never relies on either). Downloads are not checked (see _download)."""
    if len(file_id) > _FILE_ID_MAX:
        raise ApiError(
            400,
            f"* {request_type}.name: File ID (name excluding 'files/') cannot be more than "
            f"{_FILE_ID_MAX} characters.\n",
        )


def _check_mime(mime: str) -> None:
    normalized = mime.strip().lower()
    if normalized in _BARE_MIME_TYPES or _MIME.match(normalized):
        return
    raise ApiError(400, f"Unsupported MIME type: {mime}")


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "Invalid JSON payload received.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Invalid JSON payload received: expected an object.")
    return data


def _attach_inline_requests(batch: BatchRecord, input_config: dict[str, Any]) -> None:
    """Inline requests are part of the create body: one the service cannot parse
    fails the whole create with 400 (python-genai#1451), unlike a file's lines."""
    items = _inline_requests(input_config)
    for index, item in enumerate(items):
        request = item.get("request") if isinstance(item, dict) else None
        if not isinstance(request, dict):
            continue
        issues = request_issues(request, batch.kind)
        if issues:
            prefix = f"batch.input_config.requests.requests[{index}].request"
            message, details = field_violations(issues, batch.kind, prefix)
            raise ApiError(400, message, details=details)
    batch.inline_requests = items
    batch.tokens = max(1, len(json.dumps(items)) // 4)
    batch.request_count = len(items)
    batch.malformed_count = sum(
        1
        for item in items
        if not (isinstance(item, dict) and isinstance(item.get("request"), dict))
    )


def _inline_requests(input_config: dict[str, Any]) -> list[Any]:
    """`inputConfig.requests.requests` (also tolerating a bare list)."""
    outer = input_config.get("requests")
    inner = outer.get("requests") if isinstance(outer, dict) else outer
    if not isinstance(inner, list) or not inner:
        raise ApiError(400, "batch.input_config needs file_name or a non-empty requests list.")
    return inner


async def _drain(request: Request) -> None:
    """Consume an unread request body so the connection stays usable for the answer."""
    try:
        async for _ in request.stream():
            pass
    except (RuntimeError, ClientDisconnect):
        pass
