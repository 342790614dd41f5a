"""The Vertex AI batch prediction backend: google-genai in Vertex mode plus Cloud Storage.

Inputs are staged as ``gs://BUCKET/PREFIX/<upload id>.jsonl`` (``_storage``); a job
reads one and writes under ``gs://BUCKET/PREFIX/out/<token>/``, so a retried create
writes where the first would have. Jobs are ``projects/NUMBER/locations/L/
batchPredictionJobs/ID``: the service names them by project *number*, so they are
compared by ID (the SDK sends only the ID, under the client's project and location).

Credentials are Application Default Credentials, as google-genai uses them. Against a
loopback endpoint (``GOOGLE_VERTEX_BASE_URL``, our emulator) a static bearer token
stands in: the SDK in Vertex mode always asks its credentials for a token, and a
token that never expires needs no network (see ``emulator/_vertex.py``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import anyio
from google import genai
from google.genai import types

from .._errors import PermanentApiError, UsageError
from .._events import BatchStats
from .._names import token_of
from .._schema import GENERATE
from .._settings import DEFAULT_REQUEST_TIMEOUT_S
from . import VERTEX, VertexTarget
from ._gcs import Storage, parse_gs_uri
from ._genai import NO_SDK_RETRIES, _unreadable_answer, job_of, model_of, translate_errors
from ._records import BatchDetail, BatchPage, Job, Model, RemoteFile

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_LOCATION = "us-central1"


def is_loopback(url: str | None) -> bool:
    if not url:
        return False
    host = urlparse(url if "://" in url else f"http://{url}").hostname
    return host in _LOOPBACK


def vertex_model(model: str) -> str:
    """``models/NAME`` (how settings name it) as Vertex names Google's models."""
    return f"publishers/google/{model}" if model.startswith("models/") else model


class VertexApi:
    """The :class:`~gembatch_async._backends.Backend` for Vertex AI batch prediction."""

    def __init__(self, client: genai.Client, storage: Storage, target: VertexTarget) -> None:
        self._client = client
        self._storage = storage
        self._target = target

    @property
    def client(self) -> genai.Client:
        return self._client

    # -- naming ---------------------------------------------------------------------------
    def _base(self) -> str:
        if not self._target.bucket:
            raise UsageError(
                "the Vertex backend needs --bucket gs://BUCKET[/PREFIX] (or GEMBATCH_BUCKET)"
            )
        parse_gs_uri(self._target.bucket)
        return self._target.bucket.rstrip("/")

    def upload_name(self, upload_id: str) -> str:
        return f"{self._base()}/{upload_id}.jsonl"

    def _output_prefix(self, display_name: str) -> str:
        token = token_of(display_name) or "untagged"
        return f"{self._base()}/out/{token}/"

    def line_fields(self) -> dict[str, Any]:
        return {
            "backend": VERTEX,
            "project": self._target.project,
            "location": self._target.location,
            "bucket": self._target.bucket,
        }

    def model_supports(self, model: Model, kind: str = GENERATE) -> bool:
        # Vertex batch prediction runs generateContent requests; the model resource
        # lists no supported actions to check.
        return kind == GENERATE

    def storage_quota(self, configured: int) -> int:
        return sys.maxsize  # a bucket of the user's: no quota of the service's to keep under

    def job_window(self, configured: int | None) -> int | None:
        return None  # Vertex queues jobs past what runs at once (QUEUED) instead of refusing

    # -- staging --------------------------------------------------------------------------
    async def upload_file(
        self, path: str, *, name: str, display_name: str, mime_type: str, sha256: str
    ) -> RemoteFile:
        return await self._storage.upload(path, name, mime_type=mime_type, sha256=sha256)

    async def get_file(self, name: str) -> RemoteFile:
        return await self._storage.get(name)

    async def delete_file(self, name: str) -> bool:
        """An input object, or a job's output folder (``.../``: every object in it)."""
        if name.endswith("/"):
            self._require_output_folder(name)
        return await self._storage.delete(name)

    def _require_output_folder(self, folder: str) -> None:
        """A folder is deleted whole only when it is one job's output folder, inside our
        ``out/<token>/``: never the bucket, the prefix or ``out/`` itself, whatever name
        a journal or an answer holds."""
        inside = folder.removeprefix(f"{self._base()}/out/")
        if inside == folder or len([p for p in inside.split("/") if p]) < 2 or ".." in inside:
            raise PermanentApiError(f"{folder} is not a job's output folder; not deleted")

    async def download_file(self, name: str, destination: str) -> None:
        await self._storage.download_output(name, destination)

    # -- jobs -----------------------------------------------------------------------------
    async def create_batch(
        self,
        *,
        model: str,
        src: str,
        display_name: str,
        kind: str = GENERATE,
        webhook: dict[str, Any] | None = None,
    ) -> Job:
        # webhook: the SDK refuses webhook_config for Vertex (batches._CreateBatchJobConfig
        # _to_vertex raises), so run refuses --webhook-url with this backend up front.
        if webhook is not None:
            raise UsageError("webhooks are a Gemini Developer API feature, not Vertex AI's")
        if kind != GENERATE:
            raise PermanentApiError(f"the Vertex backend runs generate requests, not {kind}")
        config = types.CreateBatchJobConfig(
            display_name=display_name, dest=self._output_prefix(display_name)
        )
        with translate_errors(create=True), _unreadable_answer(None):
            return job_of(
                await self._client.aio.batches.create(
                    model=vertex_model(model), src=src, config=config
                )
            )

    async def get_batch(self, name: str) -> Job:
        return (await self.get_batch_detail(name)).job

    async def get_batch_detail(self, name: str) -> BatchDetail:
        with translate_errors():
            batch = await self._client.aio.batches.get(name=name)
        return detail_of(batch)

    async def cancel_batch(self, name: str) -> None:
        with translate_errors():
            await self._client.aio.batches.cancel(name=name)

    async def list_batch_page(
        self, near: str, page_size: int, page_token: str | None = None
    ) -> BatchPage:
        """One page of this project and location's batch prediction jobs. Vertex lists
        whole BatchPredictionJob resources (state, completionStats, outputInfo, error),
        as get does (ListBatchPredictionJobsResponse.batchPredictionJobs)."""
        config = types.ListBatchJobsConfig(page_size=page_size, page_token=page_token or None)
        with translate_errors():
            pager = await self._client.aio.batches.list(config=config)
        token = pager.config.get("page_token")  # the pager keeps the next page's token here
        details = [detail_of(job) for job in pager.page]
        return BatchPage(details, token if isinstance(token, str) and token else None)

    async def list_batches(self, page_size: int = 100) -> list[Job]:
        found: list[Job] = []
        with translate_errors():
            pager = await self._client.aio.batches.list(config={"page_size": page_size})
            async for batch in pager:
                found.append(job_of(batch))
        return found

    async def get_model(self, model: str) -> Model:
        with translate_errors():
            return model_of(await self._client.aio.models.get(model=vertex_model(model)))

    async def count_tokens(self, model: str, contents: list[Any]) -> int:
        with translate_errors():
            counted = await self._client.aio.models.count_tokens(
                model=vertex_model(model), contents=contents
            )
        return counted.total_tokens or 0


def detail_of(batch: types.BatchJob) -> BatchDetail:
    """A BatchPredictionJob as our record: Vertex's get and list answer it whole,
    with its counts (``completion_stats``) and its error."""
    job = job_of(batch)
    return BatchDetail(job, stats_of(batch))


def stats_of(job: types.BatchJob) -> BatchStats | None:
    """``completion_stats`` as our counts (incomplete requests are the pending ones)."""
    stats = job.completion_stats
    if stats is None:
        return None
    succeeded = int(stats.successful_count or 0)
    failed = int(stats.failed_count or 0)
    pending = int(stats.incomplete_count or 0)
    return BatchStats(succeeded + failed + pending, succeeded, failed, pending)


@contextlib.asynccontextmanager
async def vertex_session(
    target: VertexTarget, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
) -> AsyncIterator[VertexApi]:
    """A VertexApi for ``target`` (gaps filled from the environment), closed afterwards."""
    api = open_vertex(target.resolved(), timeout_s=timeout_s)
    try:
        yield api
    finally:
        with anyio.CancelScope(shield=True):
            await api.client.aio.aclose()


def open_vertex(target: VertexTarget, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> VertexApi:
    if not target.project:
        raise UsageError("the Vertex backend needs --project (or GOOGLE_CLOUD_PROJECT)")
    target = VertexTarget(
        target.project,
        target.location or DEFAULT_LOCATION,
        target.bucket,
        target.base_url,
        target.storage_host,
    )
    options = types.HttpOptions(
        base_url=target.base_url, timeout=int(timeout_s * 1000), retry_options=NO_SDK_RETRIES
    )
    credentials: Any = None
    if is_loopback(target.base_url):
        import google.oauth2.credentials

        credentials = google.oauth2.credentials.Credentials(token="emulator")  # type: ignore[no-untyped-call]
    client = genai.Client(
        vertexai=True,
        project=target.project,
        location=target.location,
        credentials=credentials,
        http_options=options,
    )
    return VertexApi(client, Storage(target.project, target.storage_host), target)
