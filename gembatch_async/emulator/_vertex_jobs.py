"""Vertex AI batch prediction jobs: records, their clock-driven lifecycle, list filters.

A job's state is computed from the clock, as the Gemini batches' is, so it survives a
restart with ``state_dir``. The timeline, with ``p = processing_seconds``:

- ``JOB_STATE_QUEUED`` while all ``slots`` (``max_unfinished_batches``) are taken by
  earlier jobs: Vertex queues jobs past its concurrency itself instead of refusing them.
  Jobs start in creation order as slots free up.
- from its start: ``JOB_STATE_PENDING`` for ``p/3``, then ``JOB_STATE_RUNNING`` until
  ``p``, then ``JOB_STATE_SUCCEEDED``; ``JOB_STATE_PARTIALLY_SUCCEEDED`` when some of
  its requests failed; ``JOB_STATE_FAILED`` when all did, or (at ``p/3``) when its input
  could not be read.
- cancel: ``JOB_STATE_CANCELLING`` for ``p/3``, then ``JOB_STATE_CANCELLED``.
- ``JOB_STATE_EXPIRED`` at ``expire_after_seconds`` after creation for a job not ended.

A finished job reports its end state only once its predictions are written to Cloud
Storage (see _vertex.py); until then it stays RUNNING. A job cancelled or expired
after it began running first writes the rows it completed by then, a share of its
requests in proportion to the running time it had: "Any files already outputted by
the job are not deleted" (the REST reference of batchPredictionJobs.cancel), and
"if the batch prediction job is terminated, all completed rows are exported" (the
"Batch inference from Cloud Storage" guide). Until written it stays CANCELLING or
RUNNING.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import hashlib
import heapq
import json
import os
import pathlib
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from typing import Any

from gembatch_async.emulator._errors import ApiError

QUEUED = "JOB_STATE_QUEUED"
PENDING = "JOB_STATE_PENDING"
RUNNING = "JOB_STATE_RUNNING"
SUCCEEDED = "JOB_STATE_SUCCEEDED"
PARTIALLY_SUCCEEDED = "JOB_STATE_PARTIALLY_SUCCEEDED"
FAILED = "JOB_STATE_FAILED"
CANCELLING = "JOB_STATE_CANCELLING"
CANCELLED = "JOB_STATE_CANCELLED"
EXPIRED = "JOB_STATE_EXPIRED"
UNFINISHED = (QUEUED, PENDING, RUNNING, CANCELLING)
ENDED = (SUCCEEDED, PARTIALLY_SUCCEEDED, FAILED, CANCELLED, EXPIRED)

_STATE_FILE = "vertex-jobs.json"


def project_number(project: str) -> str:
    """A stable 12-digit number for a project id: Vertex names jobs by project *number*,
    so a job's name never contains the project id the client was configured with."""
    if project.isdigit():
        return project
    digest = int(hashlib.sha256(project.encode()).hexdigest(), 16)
    return str(10**11 + digest % (9 * 10**11))


def new_job_id() -> str:
    """A 19-digit id, as Vertex gives (the SDK accepts only digits as a bare job id)."""
    return str(10**18 + secrets.randbelow(9 * 10**18))


@dataclasses.dataclass
class VertexJob:
    """One batch prediction job, as created; its state is derived (see `Timeline`)."""

    job_id: str
    project: str  # as the create's URL named it (an id or a number)
    location: str
    display_name: str
    model: str  # "publishers/google/models/<id>"
    input_uris: list[str]
    output_prefix: str  # gcsDestination.outputUriPrefix, as given
    create_time: float
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    request_count: int = 0
    failed_count: int = 0
    #: Why the job fails as it starts (its input could not be read), a google.rpc.Status.
    start_error: dict[str, Any] | None = None
    #: Why it failed at its end (its predictions could not be written), likewise.
    output_error: dict[str, Any] | None = None
    cancel_time: float | None = None
    #: When it left the queue (fixed once in the past, so deletes never rewrite history).
    start_time: float | None = None
    #: Set once predictions.jsonl is in Cloud Storage.
    output_written: bool = False
    #: For a job ended early (cancelled, expired) with its completed rows written: how
    #: many rows it completed, and how many of them failed.
    completed_count: int | None = None
    completed_failed: int = 0
    #: What picks the requests ``--request-errors`` fails: the input's sha256 and how
    #: many jobs were made from the same bytes before (``_request_errors.draw_of``).
    input_sha256: str = ""
    request_errors_draw: str = ""

    @property
    def name(self) -> str:
        """The resource name, with the project number as Vertex gives it."""
        return (
            f"projects/{project_number(self.project)}/locations/{self.location}"
            f"/batchPredictionJobs/{self.job_id}"
        )

    @property
    def output_directory(self) -> str:
        """gs://…/prediction-model-<createTime>: the directory the job writes into."""
        stamp = _iso_millis(self.create_time)
        return f"{self.output_prefix.rstrip('/')}/prediction-model-{stamp}"

    def belongs_to(self, project: str, location: str) -> bool:
        """True when the URL's project (id or number) and location are the job's."""
        same_project = project in (self.project, project_number(self.project))
        return same_project and location == self.location


@dataclasses.dataclass(frozen=True)
class Timing:
    """The clock settings every job's timeline follows."""

    processing_seconds: float
    slots: int
    expire_after_seconds: float | None

    @property
    def pending_seconds(self) -> float:
        """How long a started job stays PENDING (and a cancel CANCELLING)."""
        return self.processing_seconds / 3


@dataclasses.dataclass(frozen=True)
class Phase:
    """A job's state at one moment, with the times the resource reports."""

    state: str
    update_time: float
    start_time: float | None = None  # when it began RUNNING
    end_time: float | None = None
    #: The job has run to its end and now needs its outputs written.
    needs_output: bool = False


def phase_of(job: VertexJob, timing: Timing, now: float) -> Phase:
    """Where a job is in its timeline at ``now`` (its queue start already scheduled)."""
    expiry = _expiry(job, timing)
    if job.cancel_time is not None:  # only an unfinished job can be cancelled
        done = job.cancel_time + timing.pending_seconds
        if now < done:
            return Phase(CANCELLING, job.cancel_time)
        ran = ran_until(job, timing, job.cancel_time)
        if ran and _output_pending(job):
            return Phase(CANCELLING, job.cancel_time, needs_output=True)
        running_at = (job.start_time or 0.0) + timing.pending_seconds
        return Phase(CANCELLED, done, running_at if ran else None, end_time=done)
    if job.start_time is None:  # `schedule` found no free slot for it yet
        if expiry is not None and now >= expiry:
            return Phase(EXPIRED, expiry, end_time=expiry)
        return Phase(QUEUED, job.create_time)
    return _started_phase(job, job.start_time, timing, now, expiry)


def _started_phase(
    job: VertexJob, start: float, timing: Timing, now: float, expiry: float | None
) -> Phase:
    running_at = start + timing.pending_seconds
    finish = start + timing.processing_seconds
    if job.start_error is not None:
        finish = running_at  # fails as it would begin running
    if expiry is not None and expiry < finish and now >= expiry:
        if ran_until(job, timing, expiry) and _output_pending(job):
            return Phase(RUNNING, running_at, running_at, needs_output=True)
        return Phase(EXPIRED, expiry, _started(running_at, expiry), end_time=expiry)
    if now < running_at:
        return Phase(PENDING, start)
    if job.start_error is not None:
        return Phase(FAILED, finish, end_time=finish)
    if now >= finish and job.output_error is not None:
        return Phase(FAILED, finish, running_at, end_time=finish)
    if now < finish or not job.output_written:
        return Phase(RUNNING, running_at, running_at, needs_output=now >= finish)
    return Phase(_outcome(job), finish, running_at, end_time=finish)


def ran_until(job: VertexJob, timing: Timing, moment: float) -> bool:
    """Whether the job was RUNNING (had completed any share of its rows) at ``moment``."""
    if job.start_time is None or job.start_error is not None:
        return False
    return moment > job.start_time + timing.pending_seconds


def _output_pending(job: VertexJob) -> bool:
    """Its rows are still to be written (a failed write is not retried for ever)."""
    return not job.output_written and job.output_error is None


def completed_share(job: VertexJob, timing: Timing) -> float:
    """The share of its rows a job completed: all, unless cancelled or expired first
    (then in proportion to the running time it had)."""
    if job.start_time is None:
        return 0.0
    running_at = job.start_time + timing.pending_seconds
    finish = job.start_time + timing.processing_seconds
    ends = [t for t in (job.cancel_time, _expiry(job, timing)) if t is not None and t < finish]
    if not ends:
        return 1.0
    span = finish - running_at
    return 0.0 if span <= 0 else max(0.0, min(1.0, (min(ends) - running_at) / span))


def _started(running_at: float, until: float) -> float | None:
    return running_at if running_at <= until else None


def _outcome(job: VertexJob) -> str:
    if job.failed_count == 0:
        return SUCCEEDED
    if job.failed_count < job.request_count:
        return PARTIALLY_SUCCEEDED
    return FAILED


def _expiry(job: VertexJob, timing: Timing) -> float | None:
    if timing.expire_after_seconds is None:
        return None
    return job.create_time + timing.expire_after_seconds


def schedule(jobs: Iterable[VertexJob], timing: Timing, now: float) -> bool:
    """Give queued jobs their start time once a slot has freed up for them by ``now``.

    Jobs take the earliest free slot in creation order (FIFO); a job occupies its slot
    until it ends. Returns True when a start time was fixed (the caller saves).
    """
    changed = False
    ends: list[float] = []  # end times of the jobs holding the slots
    for job in sorted(jobs, key=lambda j: (j.create_time, j.job_id)):
        start = job.start_time
        if start is None:
            start = job.create_time if len(ends) < timing.slots else max(job.create_time, ends[0])
            if _leaves_queue_before(job, timing, start):
                continue  # cancelled or expired while queued: never takes a slot
        if len(ends) >= timing.slots:
            heapq.heappop(ends)
        heapq.heappush(ends, _slot_end(job, timing, start))
        if job.start_time is None and start <= now:
            job.start_time = start
            changed = True
    return changed


def _leaves_queue_before(job: VertexJob, timing: Timing, start: float) -> bool:
    expiry = _expiry(job, timing)
    cancelled_first = job.cancel_time is not None and job.cancel_time < start
    return cancelled_first or (expiry is not None and expiry <= start)


def _slot_end(job: VertexJob, timing: Timing, start: float) -> float:
    end = start + timing.processing_seconds
    if job.start_error is not None:
        end = start + timing.pending_seconds
    if job.cancel_time is not None:
        end = min(end, job.cancel_time + timing.pending_seconds)
    expiry = _expiry(job, timing)
    return end if expiry is None else min(end, expiry)


# ----- list filters ----------------------------------------------------------------------

_TERM = re.compile(
    r"\s*(?P<field>[a-z_]+(?:\.[A-Za-z0-9_-]+)?)\s*(?P<op>!=|=|:)\s*"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|[^\s\"]+)\s*"
)
_FIELDS = ("display_name", "state", "model_display_name", "labels")

JobFilter = Callable[[VertexJob, str], bool]


def parse_filter(text: str) -> list[JobFilter]:
    """The list filter Vertex offers (AIP-160), the part a tool needs: terms joined by
    AND over ``display_name``, ``state``, ``model_display_name`` and ``labels.KEY``,
    with ``=``, ``!=`` and ``:`` (``*`` wildcards), values quoted or bare."""
    terms = re.split(r"\s+AND\s+", text.strip()) if text.strip() else []
    return [_parse_term(term, text) for term in terms]


def _parse_term(term: str, whole: str) -> JobFilter:
    found = _TERM.fullmatch(term)
    if found is None or re.search(r"\b(OR|NOT)\b", term):
        raise ApiError(
            400, f"Invalid filter: {whole!r} (supported: FIELD=VALUE terms joined by AND)."
        )
    field, op, raw = found.group("field"), found.group("op"), found.group("value")
    if field.split(".")[0] not in _FIELDS or (field == "labels"):
        raise ApiError(400, f"Unsupported field in filter: {field!r}.")
    value = json.loads(raw) if raw.startswith('"') else raw

    def matches(job: VertexJob, state: str) -> bool:
        actual = _field_value(job, state, field)
        if actual is None:
            return op == "!="
        equal = fnmatch.fnmatchcase(actual, value) if op == ":" else actual == value
        return not equal if op == "!=" else equal

    return matches


def _field_value(job: VertexJob, state: str, field: str) -> str | None:
    if field == "display_name":
        return job.display_name
    if field == "state":
        return state
    if field == "model_display_name":
        return job.model.rsplit("/", 1)[-1]
    return job.labels.get(field.split(".", 1)[1])


# ----- persistence -----------------------------------------------------------------------


class JobBook:
    """All Vertex jobs, with their input snapshots on disk; state in vertex-jobs.json."""

    def __init__(self, root: pathlib.Path, persistent: bool) -> None:
        self.root = root
        self.persistent = persistent
        self.jobs: dict[str, VertexJob] = {}
        self.snapshots = root / "vertex-inputs"
        self.snapshots.mkdir(parents=True, exist_ok=True)
        self._load()

    def snapshot_path(self, job_id: str) -> pathlib.Path:
        """Where a job keeps its copy of its input (read at create, as Vertex reads it)."""
        return self.snapshots / f"{job_id}.jsonl"

    def add(self, job: VertexJob) -> None:
        """Record a new job."""
        self.jobs[job.job_id] = job
        self.save()

    def find(self, project: str, location: str, job_id: str) -> VertexJob:
        """The job under this project and location, else Vertex's 404."""
        job = self.jobs.get(job_id)
        if job is None or not job.belongs_to(project, location):
            raise ApiError(
                404,
                f'The BatchPredictionJob "projects/{project}/locations/{location}'
                f'/batchPredictionJobs/{job_id}" does not exist.',
            )
        return job

    def remove(self, job: VertexJob) -> None:
        """Forget a job and its input snapshot (its outputs stay in Cloud Storage)."""
        self.jobs.pop(job.job_id, None)
        self.snapshot_path(job.job_id).unlink(missing_ok=True)
        self.save()

    def clear(self) -> None:
        """Forget every job (POST /_emulator/reset)."""
        self.jobs.clear()
        shutil.rmtree(self.snapshots, ignore_errors=True)
        self.snapshots.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        """Persist after every change (no-op in memory mode); a crash leaves old or new."""
        if not self.persistent:
            return
        path = self.root / _STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump([dataclasses.asdict(job) for job in self.jobs.values()], fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _load(self) -> None:
        path = self.root / _STATE_FILE
        if not self.persistent or not path.exists():
            return
        for raw in json.loads(path.read_text(encoding="utf-8")):
            job = VertexJob(**raw)
            self.jobs[job.job_id] = job


def _iso_millis(epoch: float) -> str:
    """YYYY-MM-DDThh:mm:ss.sssZ, the stamp in Vertex's output directory names."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
