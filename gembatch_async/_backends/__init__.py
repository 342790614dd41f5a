"""The backend seam: what submit, run and the job commands need of a batch service.

Two implementations: the Gemini Developer API (``_genai.GeminiApi``: Files API
uploads, ``batches/ID`` jobs) and Vertex AI batch prediction (``vertex.VertexApi``:
Cloud Storage objects, ``projects/P/locations/L/batchPredictionJobs/ID`` jobs). The
pipeline, journal, admission and results code only ever see :class:`Backend`, and
what it answers is a record of ours (``_records``: :class:`Job`, :class:`Model`,
:class:`RemoteFile`, :class:`BatchDetail`), never an SDK object.

A job command works on a journal that may hold both kinds of line: :class:`Routed`
sends each call to the backend its name belongs to, opening it on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from .._errors import UsageError
from .._schema import GENERATE
from ._gemini_target import GeminiTarget as GeminiTarget
from ._records import BatchDetail as BatchDetail
from ._records import BatchPage as BatchPage
from ._records import Job as Job
from ._records import Model as Model
from ._records import RemoteFile as RemoteFile
from ._target import BACKENDS as BACKENDS
from ._target import DEFAULT_BACKEND as DEFAULT_BACKEND
from ._target import GEMINI as GEMINI
from ._target import VERTEX as VERTEX
from ._target import Target as Target
from ._vertex_target import VertexTarget as VertexTarget

BACKEND_ENV = "GEMBATCH_BACKEND"
#: Job states whose results can be downloaded: a partly succeeded Vertex job wrote
#: its successes, and its failed requests go to the failed-requests file.
RESULT_STATES = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED"})
#: Job states after which nothing more happens to a job, on either backend.
END_STATES = RESULT_STATES | {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


class JobsApi(Protocol):
    """What the job commands (status, watch, download, cancel, cleanup) need of a
    service: a recorded job's state and output (:class:`BatchDetail`, :class:`BatchPage`),
    each call raising ApiError."""

    async def delete_file(self, name: str) -> bool:
        """Delete a staged input (or a job's output); False when it was already gone."""
        ...

    async def get_batch_detail(self, name: str) -> BatchDetail: ...

    async def cancel_batch(self, name: str) -> None: ...

    async def download_file(self, name: str, destination: str) -> None:
        """Write a job's output to ``destination`` as ``{"key", "response"|"error"}`` lines."""
        ...

    async def list_batch_page(
        self, near: str, page_size: int, page_token: str | None = None
    ) -> BatchPage:
        """One page of the jobs listing that would hold the job ``near`` (the project's,
        other tools' jobs included), each job as get_batch_detail reads it."""
        ...


class SubmitApi(Protocol):
    """What submit needs of a service: where inputs go and what a job may hold, then
    upload -> create, and finding what an earlier attempt created; files, jobs and
    models answered as :class:`RemoteFile`, :class:`Job` and :class:`Model`."""

    def upload_name(self, upload_id: str) -> str:
        """Where the input of ``upload_id`` is staged (a Files API name, a gs:// URI)."""
        ...

    def line_fields(self) -> dict[str, Any]:
        """What a journal line records of this backend, so job commands can reopen it."""
        ...

    def model_supports(self, model: Model, kind: str = GENERATE) -> bool:
        """Whether ``model`` (as get_model read it) can run batch requests of ``kind``."""
        ...

    def storage_quota(self, configured: int) -> int:
        """The bytes staged inputs may hold at once (the Files API's quota; a bucket has none)."""
        ...

    def job_window(self, configured: int | None) -> int | None:
        """The unfinished jobs a project may have (None: the service queues the rest)."""
        ...

    async def upload_file(
        self, path: str, *, name: str, display_name: str, mime_type: str, sha256: str
    ) -> RemoteFile:
        """Stage the file under ``name``; AlreadyExistsApiError when it is there already."""
        ...

    async def get_file(self, name: str) -> RemoteFile: ...

    async def delete_file(self, name: str) -> bool:
        """Delete a staged input (or a job's output); False when it was already gone."""
        ...

    async def create_batch(
        self,
        *,
        model: str,
        src: str,
        display_name: str,
        kind: str = GENERATE,
        webhook: dict[str, Any] | None = None,
    ) -> Job: ...

    async def get_batch(self, name: str) -> Job: ...

    async def list_batches(self, page_size: int = 100) -> list[Job]:
        """Every job an ambiguous create may have made (our display names among them)."""
        ...

    async def get_model(self, model: str) -> Model: ...

    async def count_tokens(self, model: str, contents: list[Any]) -> int:
        """models.countTokens of a request's contents (``--count-tokens``)."""
        ...


class Backend(SubmitApi, JobsApi, Protocol):
    """The calls gembatch-async makes, each returning plain data (the records of
    ``_records``, which import no SDK) or raising ApiError:
    what submit needs (:class:`SubmitApi`) and what the job commands need
    (:class:`JobsApi`). Both services implement it whole."""


def backend_of_line(line: Mapping[str, Any]) -> str:
    """The backend a journal line was submitted to (lines without one: Gemini)."""
    return VERTEX if line.get("backend") == VERTEX else GEMINI


def stages_in_cloud_storage(backend: str) -> bool:
    """Whether a backend keeps its inputs and outputs in Cloud Storage (Vertex does), so
    an emulated run of it needs a storage emulator beside the API's."""
    return backend == VERTEX


def backend_of_name(name: str) -> str:
    """The backend a job, upload or output name belongs to."""
    if name.startswith(("gs://", "projects/")) or "/batchPredictionJobs/" in name:
        return VERTEX
    return GEMINI


def is_upload_name(name: str) -> bool:
    """Whether a recorded upload name is one cleanup may delete (ours, by its form)."""
    return name.startswith(("files/", "gs://"))


def output_of(batch: Mapping[str, Any]) -> str | None:
    """A job's output, from its recorded (``Job.recorded``) form: a Files API file, or
    the Cloud Storage directory Vertex wrote (``output_info``)."""
    dest = batch.get("dest")
    name = dest.get("file_name") if isinstance(dest, Mapping) else None
    if isinstance(name, str) and name:
        return name
    info = batch.get("output_info")
    directory = info.get("gcs_output_directory") if isinstance(info, Mapping) else None
    return as_folder(directory)


def as_folder(directory: object) -> str | None:
    """A Vertex output directory named as a folder, ``gs://B/.../prediction-model-T/``.

    The service reports it without the slash, yet it is no object but a prefix holding
    ``predictions*.jsonl`` (one file or shards). Named with the slash, deleting it means
    deleting every object inside it and nothing beside it (issue 17 item 4: deleted as
    an object name it was "already gone" while its predictions stayed in the bucket)."""
    if not isinstance(directory, str) or not directory:
        return None
    return directory.rstrip("/") + "/"


Opener = Callable[[], contextlib.AbstractAsyncContextManager[JobsApi]]


class Routed:
    """The :class:`JobsApi` of a journal holding lines of both kinds: each call goes to the
    backend of the name it is about, opened on first use (so a Vertex-only journal
    needs no Gemini API key, and the other way round)."""

    def __init__(self, openers: Mapping[str, Opener], stack: contextlib.AsyncExitStack) -> None:
        self._openers = dict(openers)
        self._stack = stack
        self._open: dict[str, JobsApi] = {}

    async def _for(self, name: str) -> JobsApi:
        kind = backend_of_name(name)
        if kind not in self._open:
            opener = self._openers.get(kind)
            if opener is None:
                raise UsageError(f"{name} is a {kind} job or file; pass --backend {kind}")
            self._open[kind] = await self._stack.enter_async_context(opener())
        return self._open[kind]

    async def delete_file(self, name: str) -> bool:
        return await (await self._for(name)).delete_file(name)

    async def get_batch_detail(self, name: str) -> BatchDetail:
        return await (await self._for(name)).get_batch_detail(name)

    async def cancel_batch(self, name: str) -> None:
        await (await self._for(name)).cancel_batch(name)

    async def download_file(self, name: str, destination: str) -> None:
        await (await self._for(name)).download_file(name, destination)

    async def list_batch_page(
        self, near: str, page_size: int, page_token: str | None = None
    ) -> BatchPage:
        return await (await self._for(near)).list_batch_page(near, page_size, page_token)


@contextlib.asynccontextmanager
async def routed(openers: Mapping[str, Opener]) -> AsyncIterator[Routed]:
    """A :class:`Routed` backend whose opened backends close with it."""
    async with contextlib.AsyncExitStack() as stack:
        yield Routed(openers, stack)
