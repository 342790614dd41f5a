"""Vertex AI batch prediction, served by the same emulator app as the Gemini API.

Routes, under ``v1`` and ``v1beta1`` (the SDK's default in Vertex mode)::

    POST   /{ver}/projects/{p}/locations/{l}/batchPredictionJobs               create
    GET    /{ver}/projects/{p}/locations/{l}/batchPredictionJobs               list (filter, paging)
    GET    /{ver}/projects/{p}/locations/{l}/batchPredictionJobs/{id}          get
    POST   /{ver}/projects/{p}/locations/{l}/batchPredictionJobs/{id}:cancel   cancel
    DELETE /{ver}/projects/{p}/locations/{l}/batchPredictionJobs/{id}          delete (ended jobs)
    GET    /{ver}/publishers/google/models/{m}                                 models.get
    GET    /{ver}/projects/{p}/locations/{l}/publishers/google/models/{m}      models.get

Faults and the request log use the Gemini routes' endpoint names (``create``, ``get``,
``list``, ``cancel``, ``delete``): one ``--faults`` spec means the same to both backends.
Inputs are read from, and ``predictions.jsonl`` written to, the Cloud Storage emulator at
``EmulatorConfig.storage_emulator_host`` (else ``$STORAGE_EMULATOR_HOST``); see
_vertex_jobs.py for the lifecycle and _vertex_output.py for the output lines.

The client recipe (google-genai 3.6, checked by tests/emulator/test_emulator_vertex.py)::

    genai.Client(
        vertexai=True, project="p", location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="emulator"),
        http_options=types.HttpOptions(base_url=emulator.base_url),  # or $GOOGLE_VERTEX_BASE_URL
    )

- Pass ``project`` and ``location`` to the constructor. With a base URL that is not
  ``*.googleapis.com`` and only ``$GOOGLE_CLOUD_PROJECT``/``$GOOGLE_CLOUD_LOCATION`` set,
  the SDK treats the base URL as an API gateway: it sends every request to the base URL
  itself (path ``/``) without credentials.
- ``AnonymousCredentials`` do not work: in Vertex mode the SDK always asks the
  credentials for a bearer token and refreshes them when they have none
  ("Anonymous credentials cannot be refreshed"). A static token that never expires
  needs no network and no Application Default Credentials. The emulator accepts any
  bearer token (or an API key: Vertex express mode) and answers 401 without one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gembatch_async._schema import GENERATE
from gembatch_async._vertex_import import TableImport
from gembatch_async.emulator._app import ExtraRoute
from gembatch_async.emulator._clock import Clock
from gembatch_async.emulator._config import EmulatorConfig
from gembatch_async.emulator._errors import ApiError
from gembatch_async.emulator._gcs import (
    CloudStorage,
    StorageProblem,
    StorageUnavailable,
    parse_gs_uri,
)
from gembatch_async.emulator._models import BATCH_GENERATE, model_spec
from gembatch_async.emulator._request_errors import RequestErrors, draw_of
from gembatch_async.emulator._store import count_requests_blocking
from gembatch_async.emulator._vertex_jobs import (
    CANCELLED,
    CANCELLING,
    ENDED,
    EXPIRED,
    FAILED,
    JobBook,
    Phase,
    Timing,
    VertexJob,
    completed_share,
    new_job_id,
    parse_filter,
    phase_of,
    project_number,
    schedule,
)
from gembatch_async.emulator._vertex_output import (
    drawn_failures_blocking,
    file_sha256,
    processed_time,
    shard_names,
    write_predictions_blocking,
)
from gembatch_async.emulator._wire import _json_body, _keyset_page, _page, _page_body, rfc3339

logger = logging.getLogger(__name__)

_VER = r"/(?P<ver>v1|v1beta1)"
_PARENT = _VER + r"/projects/(?P<project>[^/:]+)/locations/(?P<location>[^/:]+)"
_JOBS = _PARENT + "/batchPredictionJobs"
_JOB = _JOBS + r"/(?P<id>[^/:]+)"
_MODEL = r"/publishers/(?P<publisher>[^/:]+)/models/(?P<model>[^/:]+)"
_TYPES = "type.googleapis.com/google.cloud.aiplatform"
#: google.rpc.Code INVALID_ARGUMENT, the code Vertex gives a job whose data it cannot import.
_INVALID_ARGUMENT = 3
#: The error of a cancelled job. BatchPredictionJob.error is "only populated when the
#: job's state is JOB_STATE_FAILED or JOB_STATE_CANCELLED" (aiplatform v1
#: batch_prediction_job.proto); Vertex's other jobs document a cancelled job's error as
#: google.rpc.Status code 1, Code.CANCELLED (CustomJob, PipelineJob, TrainingPipeline
#: cancel references). The message text is a guess: none is captured for batch jobs.
_CANCELLED_ERROR = {"code": 1, "message": "CANCELED"}


@dataclasses.dataclass(frozen=True)
class _CreateSpec:
    display_name: str
    model: str  # bare id
    input_uris: list[str]
    output_prefix: str
    labels: dict[str, str]


class VertexRoutes:
    """The Vertex AI batch prediction service: a RouteExtension of the emulator app."""

    def __init__(
        self,
        config: EmulatorConfig,
        root: pathlib.Path,
        persistent: bool,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        #: The Gemini routes' clock (the store's), so advancing it ages both kinds of job.
        self.clock = Clock() if clock is None else clock
        self.book = JobBook(root, persistent)
        self.timing = Timing(
            config.processing_seconds, config.max_unfinished_batches, config.expire_after_seconds
        )
        host = config.storage_emulator_host or os.environ.get("STORAGE_EMULATOR_HOST")
        self.storage = CloudStorage(host) if host else None
        self._output_lock = anyio.Lock()

    def routes(self) -> list[ExtraRoute]:
        """The routes above, with their fault/log endpoint names."""

        def route(method: str, tail: str, endpoint: str, handler: Any) -> ExtraRoute:
            return ExtraRoute(method, tail, endpoint, handler, authenticate)

        return [
            route("POST", _JOB + ":cancel", "cancel", self._cancel),
            route("GET", _JOB, "get", self._get),
            route("DELETE", _JOB, "delete", self._delete),
            route("POST", _JOBS, "create", self._create),
            route("GET", _JOBS, "list", self._list),
            route("GET", _VER + _MODEL, "get", self._get_model),
            route("GET", _PARENT + _MODEL, "get", self._get_model),
        ]

    # ----- clock-driven state --------------------------------------------------------------

    async def refresh(self) -> None:
        """Start queued jobs whose slot opened, and write the outputs of finished jobs."""
        if schedule(self.book.jobs.values(), self.timing, self.clock.now()):
            self.book.save()
        for job in list(self.book.jobs.values()):
            if self._phase(job).needs_output:
                await self._write_output(job)

    def _phase(self, job: VertexJob) -> Phase:
        return phase_of(job, self.timing, self.clock.now())

    async def _write_output(self, job: VertexJob) -> None:
        """predictions.jsonl into the job's output directory, once (then it may end)."""
        async with self._output_lock:
            if job.output_written or job.job_id not in self.book.jobs or self.storage is None:
                return
            try:
                await anyio.to_thread.run_sync(self._write_output_blocking, job, self.storage)
            except StorageUnavailable:
                logger.warning("Cloud Storage unavailable; %s stays RUNNING for now", job.name)
                return
            except StorageProblem as exc:
                job.output_error = {"code": 5, "message": f"Failed to write the outputs: {exc}"}
            else:
                job.output_written = True
                self.book.snapshot_path(job.job_id).unlink(missing_ok=True)
            self.book.save()

    def _write_output_blocking(self, job: VertexJob, storage: CloudStorage) -> None:
        """The job's output files; for a job cancelled or expired while running, only the
        rows it completed (see _vertex_jobs), and none at all when that is none."""
        finish = (job.start_time or job.create_time) + self.timing.processing_seconds
        share = completed_share(job, self.timing)
        limit = None if share >= 1.0 else int(job.request_count * share)
        names = shard_names(self.config.vertex_output_shards)
        locals_ = [self.book.snapshots / f"{job.job_id}.{name}" for name in names]
        try:
            written, failed = write_predictions_blocking(
                self.book.snapshot_path(job.job_id),
                locals_,
                job.job_id,
                job.model.rsplit("/", 1)[-1],
                processed_time(finish),
                limit,
                self._request_errors(),
                job.request_errors_draw,
            )
            if limit is not None:
                job.completed_count, job.completed_failed = written, failed
            for local, name in zip(locals_, names, strict=True):
                if written:
                    storage.upload(local, f"{job.output_directory}/{name}")
        finally:
            for local in locals_:
                local.unlink(missing_ok=True)

    # ----- handlers ------------------------------------------------------------------------

    async def _create(self, request: Request, match: re.Match[str]) -> Response:
        await self.refresh()
        spec = _create_spec(await _json_body(request))
        self._require_model(spec.model, match["project"], match["location"], for_batch=True)
        storage = self._require_storage()
        job = VertexJob(
            job_id=new_job_id(),
            project=match["project"],
            location=match["location"],
            display_name=spec.display_name,
            model=f"publishers/google/models/{spec.model}",
            input_uris=spec.input_uris,
            output_prefix=spec.output_prefix,
            create_time=self.clock.now(),
            labels=spec.labels,
        )
        await self._read_input(job, storage)
        job.create_time = self.clock.now()  # after the input was read
        self.book.add(job)
        await self.refresh()
        return _json(self._job_json(job))

    async def _read_input(self, job: VertexJob, storage: CloudStorage) -> None:
        """Snapshot the job's input now, as the service reads it: a missing object or
        bucket makes the job fail as it starts (code 3), not the create."""
        snapshot = self.book.snapshot_path(job.job_id)
        try:
            await anyio.to_thread.run_sync(self._read_input_blocking, job, storage, snapshot)
        except StorageUnavailable as exc:
            snapshot.unlink(missing_ok=True)
            raise ApiError(503, f"The service is currently unavailable: {exc}") from exc
        except StorageProblem as exc:
            snapshot.unlink(missing_ok=True)
            job.start_error = {
                "code": _INVALID_ARGUMENT,
                "message": f"Failed to import data. {exc}",
            }
        except ApiError:
            snapshot.unlink(missing_ok=True)
            raise

    def _read_input_blocking(
        self, job: VertexJob, storage: CloudStorage, snapshot: pathlib.Path
    ) -> None:
        snapshot.unlink(missing_ok=True)
        snapshot.touch()
        for uri in job.input_uris:
            self._require_size(uri, storage.size(uri))
            storage.download(uri, snapshot)
        storage.check_bucket(job.output_prefix)
        total, failed = count_requests_blocking(snapshot, GENERATE)
        if total == 0:
            raise StorageProblem(f"The input {', '.join(job.input_uris)} holds no requests.")
        if total > self.config.vertex_max_requests:
            raise _over_limit(
                f"The batch prediction input holds {total} requests; a job takes at most "
                f"{self.config.vertex_max_requests}."
            )
        refused = import_refusal(snapshot)
        if refused is not None:
            raise StorageProblem(refused)
        job.request_count, job.failed_count = total, failed + self._drawn_failures(job, snapshot)

    def _request_errors(self) -> RequestErrors | None:
        share = self.config.request_errors
        return RequestErrors(share, self.config.fault_seed) if share > 0 else None

    def _drawn_failures(self, job: VertexJob, snapshot: pathlib.Path) -> int:
        """Draw the job's per-request errors (``--request-errors``) as the Gemini side
        does: by its input's bytes and the jobs made from them before; how many fail."""
        errors = self._request_errors()
        if errors is None:
            return 0
        job.input_sha256 = file_sha256(snapshot)
        jobs = tuple(self.book.jobs.values())  # one copy: this runs in a worker thread
        earlier = sum(1 for other in jobs if other.input_sha256 == job.input_sha256)
        job.request_errors_draw = draw_of(job.input_sha256, earlier)
        return drawn_failures_blocking(snapshot, errors, job.request_errors_draw)

    def _require_size(self, uri: str, size: int) -> None:
        if size > self.config.vertex_max_input_bytes:
            raise _over_limit(
                f"The batch prediction input {uri} is {size} bytes; an input file may be at "
                f"most {self.config.vertex_max_input_bytes} bytes (1 GB)."
            )

    async def _get(self, request: Request, match: re.Match[str]) -> Response:
        await self.refresh()
        job = self.book.find(match["project"], match["location"], match["id"])
        return _json(self._job_json(job))

    async def _list(self, request: Request, match: re.Match[str]) -> Response:
        token, size = _page(request, default=100, maximum=1000)
        filters = parse_filter(request.query_params.get("filter", ""))
        await self.refresh()
        rows = [
            (job, self._phase(job))
            for job in self.book.jobs.values()
            if job.belongs_to(match["project"], match["location"])
        ]
        chosen = [row for row in rows if all(f(row[0], row[1].state) for f in filters)]
        # Newest first; the token names the last job seen, so pages never skip or repeat.
        page, next_token = _keyset_page(
            chosen, lambda row: (-row[0].create_time, row[0].job_id), token, size
        )
        items = [self._job_json(job, phase) for job, phase in page]
        return _json(_page_body(items, next_token, "batchPredictionJobs"))

    async def _cancel(self, request: Request, match: re.Match[str]) -> Response:
        await self.refresh()
        job = self.book.find(match["project"], match["location"], match["id"])
        state = self._phase(job).state
        if state in ENDED:
            raise ApiError(
                400,
                f"Cannot cancel BatchPredictionJob {job.name}: it is already in state {state}.",
                "FAILED_PRECONDITION",
            )
        if state != CANCELLING:  # a second cancel changes nothing
            job.cancel_time = self.clock.now()
            self.book.save()
        return _json({})

    async def _delete(self, request: Request, match: re.Match[str]) -> Response:
        await self.refresh()
        job = self.book.find(match["project"], match["location"], match["id"])
        state = self._phase(job).state
        if state not in ENDED:
            raise ApiError(
                400,
                f"BatchPredictionJob {job.name} is in state {state}: only a job that has "
                "ended can be deleted (cancel it and wait for JOB_STATE_CANCELLED).",
                "FAILED_PRECONDITION",
            )
        self.book.remove(job)
        now = rfc3339(self.clock.now())
        return _json(
            {
                "name": f"projects/{project_number(job.project)}/locations/{job.location}"
                f"/operations/{new_job_id()}",
                "metadata": {
                    "@type": f"{_TYPES}.v1.DeleteOperationMetadata",
                    "genericMetadata": {"createTime": now, "updateTime": now},
                },
                "done": True,
                "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
            }
        )

    async def _get_model(self, request: Request, match: re.Match[str]) -> Response:
        groups = match.groupdict()
        bare = self._require_model(
            match["model"],
            groups.get("project"),
            groups.get("location"),
            publisher=match["publisher"],
        )
        stage = "PUBLIC_PREVIEW" if "preview" in bare else "GA"
        return _json(
            {
                "name": f"publishers/google/models/{bare}",
                "versionId": "default",
                "openSourceCategory": "PROPRIETARY",
                "launchStage": stage,
                "publisherModelTemplate": "projects/{project}/locations/{location}"
                f"/publishers/google/models/{bare}@default",
            }
        )

    # ----- checks and rendering ------------------------------------------------------------

    def _require_model(
        self,
        model: str,
        project: str | None,
        location: str | None,
        *,
        publisher: str = "google",
        for_batch: bool = False,
    ) -> str:
        """The bare id of a served model, else Vertex's 404 (400: no batch prediction)."""
        bare = model.split("@", 1)[0]
        where = f"projects/{project}/locations/{location}/" if project else ""
        full = f"{where}publishers/{publisher}/models/{bare}"
        if publisher != "google" or bare not in self.config.served_models:
            raise ApiError(
                404,
                f"Publisher Model `{full}` was not found or your project does not have "
                "access to it. Please ensure you are using a valid model version.",
            )
        if for_batch and BATCH_GENERATE not in model_spec(bare).methods:
            raise ApiError(400, f"Model {full} does not support batch prediction.")
        return bare

    def _require_storage(self) -> CloudStorage:
        if self.storage is None:
            raise ApiError(
                400,
                "The emulator has no Cloud Storage to read gs:// inputs from: start one "
                "(serve_storage_emulator) and set STORAGE_EMULATOR_HOST or "
                "EmulatorConfig.storage_emulator_host.",
                "FAILED_PRECONDITION",
            )
        return self.storage

    def _job_json(self, job: VertexJob, phase: Phase | None = None) -> dict[str, Any]:
        phase = phase or self._phase(job)
        body: dict[str, Any] = {
            "name": job.name,
            "displayName": job.display_name,
            "model": job.model,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": job.input_uris}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": job.output_prefix},
            },
            "state": phase.state,
        }
        error = _job_error(job, phase)
        if error is not None:
            body["error"] = error
        if phase.start_time is not None and job.start_error is None:
            body["outputInfo"] = {"gcsOutputDirectory": job.output_directory}
        stats = _completion_stats(job, phase)
        if stats:
            body["completionStats"] = stats
        body["createTime"] = rfc3339(job.create_time)
        if phase.start_time is not None:
            body["startTime"] = rfc3339(phase.start_time)
        if phase.end_time is not None:
            body["endTime"] = rfc3339(phase.end_time)
        body["updateTime"] = rfc3339(phase.update_time)
        if job.labels:
            body["labels"] = job.labels
        return body

    def state(self) -> dict[str, list[dict[str, Any]]]:
        """The jobs for GET /_emulator/state (names as the API gives them)."""
        jobs = sorted(self.book.jobs.values(), key=lambda j: (j.create_time, j.job_id))
        listed = [
            {
                "name": job.name,
                "displayName": job.display_name,
                "state": self._phase(job).state,
                "model": job.model,
                "inputUris": job.input_uris,
                "outputUriPrefix": job.output_prefix,
                "outputDirectory": job.output_directory,
                "outputWritten": job.output_written,
                "requestCount": job.request_count,
                "failedCount": job.failed_count,
                "requestErrorsDraw": job.request_errors_draw,
                "labels": job.labels,
                "createTime": rfc3339(job.create_time),
            }
            for job in jobs
        ]
        return {"batchPredictionJobs": listed}

    def reset(self) -> None:
        """Forget every job (outputs already in Cloud Storage stay there)."""
        self.book.clear()


# ----- helpers ---------------------------------------------------------------------------------


def authenticate(request: Request) -> None:
    """Any bearer token (or an API key, Vertex express mode); 401 without either."""
    bearer = request.headers.get("authorization", "")
    has_token = bearer.lower().startswith("bearer ") and bearer[7:].strip()
    has_key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not (has_token or has_key):
        raise ApiError(
            401,
            "Request is missing required authentication credential. Expected OAuth 2 access "
            "token, login cookie or other valid authentication credential. See "
            "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, status_code=200)


def _required(field: str) -> ApiError:
    """Vertex's wording for a missing field of the create body."""
    return ApiError(
        400,
        f"List of found errors:\t1.Field: batch_prediction_job.{field}; "
        "Message: Required field is not set.\t",
    )


def _create_spec(body: dict[str, Any]) -> _CreateSpec:
    """The parts of a create body the emulator serves, checked (400 for the rest)."""
    display_name = body.get("displayName")
    if not isinstance(display_name, str) or not display_name:
        raise _required("display_name")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _required("model")
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ApiError(400, "labels must map strings to strings.")
    return _CreateSpec(
        display_name,
        model.rsplit("/", 1)[-1] if model.startswith(("publishers/", "projects/")) else model,
        _input_uris(body.get("inputConfig")),
        _output_prefix(body.get("outputConfig")),
        {str(k): v for k, v in labels.items()},
    )


def _input_uris(config: Any) -> list[str]:
    if not isinstance(config, dict):
        raise _required("input_config")
    if config.get("instancesFormat") != "jsonl":
        raise ApiError(
            400, "The emulator serves Cloud Storage input only: instancesFormat must be jsonl."
        )
    uris = (config.get("gcsSource") or {}).get("uris")
    if not isinstance(uris, list) or not uris:
        raise _required("input_config.gcs_source.uris")
    for uri in uris:
        _check_gs_uri(uri, "input_config.gcs_source.uris", want_object=True)
    return [str(uri) for uri in uris]


def _output_prefix(config: Any) -> str:
    if not isinstance(config, dict):
        raise _required("output_config")
    if config.get("predictionsFormat") != "jsonl":
        raise ApiError(
            400, "The emulator writes Cloud Storage output only: predictionsFormat must be jsonl."
        )
    prefix = (config.get("gcsDestination") or {}).get("outputUriPrefix")
    if not isinstance(prefix, str) or not prefix:
        raise _required("output_config.gcs_destination.output_uri_prefix")
    _check_gs_uri(prefix, "output_config.gcs_destination.output_uri_prefix", want_object=False)
    return prefix


def _check_gs_uri(uri: Any, field: str, *, want_object: bool) -> None:
    try:
        _, name = parse_gs_uri(str(uri))
    except ValueError:
        raise ApiError(400, f"Invalid {field}: {uri!r} is not a gs://bucket/path URI.") from None
    if want_object and (not name or name.endswith("/")):
        raise ApiError(400, f"Invalid {field}: {uri!r} does not name an object.")


def _over_limit(message: str) -> ApiError:
    """A create past Vertex's documented limits (200,000 requests, 1 GB per input file).
    Where and how Vertex refuses it is not captured: this 400 INVALID_ARGUMENT at create,
    with a plain message, is a guess (docs/fidelity.md); the tool never sends one."""
    return ApiError(400, message)


def import_refusal(snapshot: pathlib.Path) -> str | None:
    """Why Vertex's table import of the input fails the whole job, or None (see
    gembatch_async/_vertex_import.py for the rules and their sources). Lines that are
    not JSON objects fail one by one later, as the service reports them."""
    table = TableImport()
    with snapshot.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                row = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict):
                issues = table.check(number, row)
                if issues:
                    return issues[0].bigquery
    issue = table.finish()
    return issue.bigquery if issue is not None else None


def _job_error(job: VertexJob, phase: Phase) -> dict[str, Any] | None:
    if phase.state == CANCELLED:
        return dict(_CANCELLED_ERROR)
    if phase.state != FAILED:
        return None
    if job.start_error is not None:
        return job.start_error
    if job.output_error is not None:
        return job.output_error
    return {
        "code": _INVALID_ARGUMENT,
        "message": f"All {job.request_count} requests failed; the status of each is in "
        "predictions.jsonl.",
    }


def _completion_stats(job: VertexJob, phase: Phase) -> dict[str, str]:
    """proto3 JSON: int64 as strings, zero counts left out (as Google's APIs send them)."""
    if phase.state in (CANCELLED, EXPIRED):
        done = job.completed_count or 0
        counts = {
            "successfulCount": done - job.completed_failed,
            "failedCount": job.completed_failed,
            "incompleteCount": job.request_count - done,
        }
    elif phase.state in ENDED and job.output_written:
        counts = {
            "successfulCount": job.request_count - job.failed_count,
            "failedCount": job.failed_count,
        }
    else:
        return {}
    return {name: str(value) for name, value in counts.items() if value}
