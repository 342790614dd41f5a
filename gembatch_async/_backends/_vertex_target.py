"""Vertex AI batch prediction as a :class:`~._target.Target`: project, location, bucket."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import Problem, UsageError
from .._names import bucket_problem, location_problem, project_problem
from ._target import VERTEX, Target

if TYPE_CHECKING:
    from .._inputs import JobLimits

BUCKET_ENV = "GEMBATCH_BUCKET"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
LOCATION_ENV = "GOOGLE_CLOUD_LOCATION"
VERTEX_BASE_URL_ENV = "GOOGLE_VERTEX_BASE_URL"
STORAGE_HOST_ENV = "STORAGE_EMULATOR_HOST"


@dataclass(frozen=True)
class VertexTarget:
    """Where Vertex jobs run and stage their files; None fields come from the environment."""

    project: str | None = None
    location: str | None = None
    #: gs://BUCKET[/PREFIX]: inputs under it, outputs under its ``out/``.
    bucket: str | None = None
    #: The Vertex endpoint (an emulator); else $GOOGLE_VERTEX_BASE_URL, else Google's.
    base_url: str | None = None
    #: The Cloud Storage endpoint (an emulator); else $STORAGE_EMULATOR_HOST, else Google's.
    storage_host: str | None = None

    def resolved(self, environ: Mapping[str, str] | None = None) -> VertexTarget:
        """Gaps filled from the environment, and each name checked (UsageError)."""
        env = os.environ if environ is None else environ
        target = VertexTarget(
            project=self.project or env.get(PROJECT_ENV) or None,
            location=self.location or env.get(LOCATION_ENV) or None,
            bucket=self.bucket or env.get(BUCKET_ENV) or None,
            base_url=self.base_url or env.get(VERTEX_BASE_URL_ENV) or None,
            storage_host=self.storage_host or env.get(STORAGE_HOST_ENV) or None,
        )
        target.check()
        return target

    def check(self) -> None:
        """Refuse a project, location or bucket that is not a name of its kind: a
        location like ``us-central1/../x`` would otherwise steer the job elsewhere."""
        for value, rule, where in (
            (self.project, project_problem, f"--project (or {PROJECT_ENV})"),
            (self.location, location_problem, f"--location (or {LOCATION_ENV})"),
            (self.bucket, bucket_problem, f"--bucket (or {BUCKET_ENV})"),
        ):
            problem = rule(value) if value is not None else None
            if problem is not None:
                raise UsageError(f"{where}: {problem}")

    def with_line(self, line: Mapping[str, Any]) -> VertexTarget:
        """Gaps filled from what a journal line recorded."""

        def recorded(field: str) -> str | None:
            value = line.get(field)
            return value if isinstance(value, str) and value else None

        return VertexTarget(
            project=self.project or recorded("project"),
            location=self.location or recorded("location"),
            bucket=self.bucket or recorded("bucket"),
            base_url=self.base_url,
            storage_host=self.storage_host,
        )

    # -- the Target's rules ------------------------------------------------------------
    @property
    def backend(self) -> str:
        return VERTEX

    @property
    def table_import(self) -> bool:
        """Vertex imports a job's input as a table: a line it cannot read fails the job."""
        return True

    def job_limits(self, max_bytes: int | None, max_requests: int | None) -> JobLimits:
        from .._inputs import JobLimits

        return JobLimits.of(max_bytes, max_requests, vertex=True)

    def problems(self) -> list[Problem]:
        """None before anything is sent: the project, location and bucket are filled
        from the environment and checked when the target is opened (``resolved``), so
        a run that has nothing to send needs none of them."""
        return []

    def webhook_problem(self) -> str | None:
        # The SDK refuses webhook_config for Vertex AI (batches._CreateBatchJobConfig
        # _to_vertex raises), so a run asking for webhooks is refused up front.
        return "--webhook-url works with the Gemini Developer API, not Vertex AI"

    def for_lines(self, lines: Sequence[Mapping[str, Any]]) -> Target:
        """Gaps filled from the first line's project, location and bucket."""
        return self.with_line(lines[0]) if lines else self
