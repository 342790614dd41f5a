"""What a backend answers: plain records of ours, never the SDK's objects.

Each backend turns the service's answer into these where it receives it (``_genai.job_of``,
``_genai.model_of``), so the code above the backends reads fields of ours and a third
backend, SDK or not, fills the same records. This module imports no SDK.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .._events import BatchStats


@dataclass(frozen=True)
class Job:
    """A batch job as the service reported it."""

    #: ``batches/ID`` or ``projects/P/locations/L/batchPredictionJobs/ID`` ("" if none).
    name: str
    display_name: str | None
    #: ``JOB_STATE_...`` as the service named it (None: it named none).
    state: str | None
    #: The job has ended, by the SDK's rule (``BatchJob.done``: SUCCEEDED, FAILED,
    #: CANCELLED or EXPIRED; a state it does not know is not done).
    done: bool
    create_time: datetime | None
    update_time: datetime | None
    model: str | None
    #: Where its results are: a Files API name, or the Vertex gs:// folder (``.../``).
    output: str | None
    #: The job's own error message, when the service gave one.
    error: str | None
    #: The job as a journal line records it under ``"batch"``: the full object the
    #: service returned, datetimes as ISO 8601 (the original gembatch's format).
    recorded: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    def journal_form(self) -> dict[str, Any]:
        """``recorded``, as a fresh copy a journal line may own."""
        return copy.deepcopy(dict(self.recorded))


@dataclass(frozen=True)
class Model:
    """A model as ``models.get`` describes it: what ``model_supports`` looks at."""

    name: str
    #: The API methods it lists (``batchGenerateContent``, ...); Vertex lists none.
    supported_actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemoteFile:
    """What we need to know about an uploaded file."""

    name: str
    sha256: str | None
    size_bytes: int | None
    state: str | None
    expires_in_seconds: float | None


@dataclass(frozen=True)
class BatchDetail:
    """A batch job with what the SDK's ``BatchJob`` drops: its counts and its error."""

    job: Job
    stats: BatchStats | None

    @property
    def error(self) -> str | None:
        """The job's error message: ``job.error``, where the job commands look for it."""
        return self.job.error


@dataclass(frozen=True)
class BatchPage:
    """One page of the project's job listing, and the token of the next (None: the last)."""

    details: list[BatchDetail]
    next_token: str | None
