"""The Gemini Developer API's Files, Batches and Models routes: a RouteExtension of the
emulator app, as the Vertex AI routes are (see _vertex.py). Adding a Gemini route is one
line in :meth:`GeminiRoutes.routes` and its handler here (and a row in docs/fidelity.md).

Routes, under ``v1``, ``v1beta`` and ``v1alpha`` (API key in ``x-goog-api-key`` or
``?key=``)::

    POST   /upload/{ver}/files                        upload (resumable: start, chunks)
    GET    /download/{ver}/files/{id}:download        download (also without /download)
    GET    /{ver}/files/{id}                          get
    DELETE /{ver}/files/{id}                          delete
    GET    /{ver}/files                               list
    POST   /{ver}/files:register                      create (always 403: no Cloud Storage)
    POST   /{ver}/models/{m}:batchGenerateContent     create
    POST   /{ver}/models/{m}:asyncBatchEmbedContent   create
    POST   /{ver}/models/{m}:countTokens              count
    GET    /{ver}/models/{m}                          get
    GET    /{ver}/models                              list
    POST   /{ver}/batches/{id}:cancel                 cancel
    GET    /{ver}/batches/{id}                        get
    DELETE /{ver}/batches/{id}                        delete
    GET    /{ver}/batches                             list

The last word of each row is its endpoint name for faults and the request log.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from gembatch_async._schema import EMBED, GENERATE
from gembatch_async.emulator._app import ExtraRoute, Handler
from gembatch_async.emulator._config import EmulatorConfig
from gembatch_async.emulator._errors import ApiError, storage_quota_error
from gembatch_async.emulator._models import BATCH_EMBED, BATCH_GENERATE, model_spec
from gembatch_async.emulator._request_errors import RequestErrors
from gembatch_async.emulator._responses import prompt_tokens
from gembatch_async.emulator._scenarios import Scenarios
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
from gembatch_async.emulator._wire import (
    _json,
    _json_body,
    _keyset_page,
    _page,
    _page_body,
    rfc3339,
)

PUBLIC_HOST = "https://generativelanguage.googleapis.com"
_TYPES = "type.googleapis.com/google.ai.generativelanguage.v1main"
#: The resource (and output) type of each kind of batch, for the Operation's @type fields.
BATCH_TYPES = {GENERATE: "GenerateContentBatch", EMBED: "EmbedContentBatch"}
#: The model method each kind of batch needs.
BATCH_METHODS = {GENERATE: BATCH_GENERATE, EMBED: BATCH_EMBED}
CHUNK_GRANULARITY = 8 * 1024 * 1024

_VER = r"(?P<ver>v1|v1beta|v1alpha)"
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


class GeminiRoutes:
    """The Gemini Developer API's Files, Batches and Models services over the emulator's
    store: a RouteExtension of the emulator app."""

    def __init__(
        self,
        config: EmulatorConfig,
        store: Store,
        scenarios: Scenarios,
        webhooks: WebhookSender,
    ) -> None:
        self.config = config
        self.store = store
        self.scenarios = scenarios
        self.webhooks = webhooks
        self._generate_lock = anyio.Lock()

    def routes(self) -> list[ExtraRoute]:
        """The routes above, with their fault/log endpoint names."""

        def r(method: str, tail: str, endpoint: str, handler: Handler) -> ExtraRoute:
            return ExtraRoute(method, tail, endpoint, handler, _check_api_key)

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
        ]

    async def refresh(self) -> None:
        """Forget expired files; write the outputs of batches that have succeeded."""
        self.store.expire_files()
        await self._observe_all()

    def state(self) -> dict[str, list[dict[str, Any]]]:
        """The files and batches for GET /_emulator/state (sizes as JSON numbers, states
        as wire enums)."""
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
        return {"files": files, "batches": batches}

    def reset(self) -> None:
        """Forget every file, upload and batch (POST /_emulator/reset)."""
        self.store.clear()

    def state_of(self, name: str) -> str | None:
        """A batch's wire state, or None once it is gone (the webhook sender asks)."""
        batch = self.store.batches.get(name.removeprefix("batches/"))
        return None if batch is None else self.store.batch_state(batch)

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


# ----- small helpers -------------------------------------------------------------------------


def _pick(obj: dict[str, Any], snake: str, camel: str) -> Any:
    """A field in either spelling (the SDK sends a mix of snake_case and camelCase)."""
    return obj[snake] if snake in obj else obj.get(camel)


def _ver_of(request: Request) -> str:
    found = re.search(r"/(v1|v1beta|v1alpha)/", request.url.path + "/")
    return found.group(1) if found else "v1"


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
