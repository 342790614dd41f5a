"""Where the commands send their calls: the real services, or with ``--emulator`` the
built-in emulators (the Gemini API, and Vertex AI with its Cloud Storage) on loopback."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

from .._backends import (
    VertexTarget,
    backend_of_line,
    stages_in_cloud_storage,
)
from .._errors import UsageError
from .._journal import peek_lines
from .._names import (
    display_path,
)
from ._console import (
    _print,
)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """Where the commands send their calls: the Gemini API (key, base URL) and Vertex."""

    api_key: str | None = None
    base_url: str | None = None
    #: Vertex overrides (flags, an emulator); gaps come from journal lines and the env.
    vertex: VertexTarget = dataclasses.field(default_factory=VertexTarget)

    def submit_target(self, backend: str) -> VertexTarget | None:
        """The Vertex target for submit and run when ``--backend`` names it (the public
        API's ``vertex=``), None for the Gemini API."""
        return self.vertex if backend == self.vertex.backend else None


#: The project, location and bucket of ``--emulator --backend vertex``.
EMULATOR_PROJECT = "gembatch-emulator"


EMULATOR_LOCATION = "us-central1"


EMULATOR_BUCKET = "gs://gembatch-emulator"


def _vertex_flags(args: argparse.Namespace) -> VertexTarget:
    return VertexTarget(project=args.project, location=args.location, bucket=args.bucket)


@contextlib.asynccontextmanager
async def _api_endpoint(args: argparse.Namespace) -> AsyncIterator[_Endpoint]:
    """The real APIs from the environment, or in-process emulators (Gemini and Vertex
    routes, and Cloud Storage when Vertex may be used)."""
    flags = _vertex_flags(args)
    if not args.emulator:
        yield _Endpoint(vertex=flags)
        return
    from .._backends._genai import EMULATOR_API_KEY
    from ..emulator import EmulatorConfig, serve_emulator

    state_dir: Path | None = args.emulator_state_dir
    if getattr(args, "dry_run", False) and not args.emulator_state_dir.is_dir():
        state_dir = None  # a dry run writes nothing, not even the emulator's folder
    elif state_dir is not None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--emulator keeps its state in {state_dir}, which cannot be created: "
                f"{exc.strerror}"
            ) from exc
    async with contextlib.AsyncExitStack() as stack:
        storage_url = None
        vertex = flags
        if _may_use_cloud_storage(args):
            vertex = VertexTarget(
                project=flags.project or EMULATOR_PROJECT,
                location=flags.location or EMULATOR_LOCATION,
                bucket=flags.bucket or EMULATOR_BUCKET,
            )
            storage_url = await stack.enter_async_context(_storage_emulator(state_dir, vertex))
        config = EmulatorConfig(
            host="127.0.0.1",
            port=0,
            state_dir=state_dir,
            storage_emulator_host=storage_url,
            processing_seconds=args.emulator_processing_seconds,
        )
        running = await stack.enter_async_context(serve_emulator(config))
        _print(
            f"using the built-in {'Vertex AI and ' if storage_url else ''}Gemini API emulator "
            f"at {running.base_url} (state {f'in {display_path(state_dir)}' if state_dir else 'in memory'})",
            sys.stderr,
        )
        vertex = dataclasses.replace(vertex, base_url=running.base_url, storage_host=storage_url)
        yield _Endpoint(EMULATOR_API_KEY, running.base_url, vertex)


def _may_use_cloud_storage(args: argparse.Namespace) -> bool:
    """The backend asked for, or one a job command's journal lines were submitted to,
    keeps its files in Cloud Storage."""
    if stages_in_cloud_storage(args.backend):
        return True
    if args.command in ("submit", "run"):
        return False
    lines = peek_lines(args.job_info)
    return any(stages_in_cloud_storage(backend_of_line(line)) for line in lines)


@contextlib.asynccontextmanager
async def _storage_emulator(state_dir: Path | None, vertex: VertexTarget) -> AsyncIterator[str]:
    """The in-process Cloud Storage emulator, its bucket created, objects kept beside the
    journal; yields its URL."""
    from ..emulator import serve_storage_emulator

    bucket = (vertex.bucket or EMULATOR_BUCKET).removeprefix("gs://").split("/", 1)[0]
    data_dir = state_dir / "storage" if state_dir is not None else None
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        raise UsageError(
            "--emulator --backend vertex needs the vertex extra: "
            "pip install 'gembatch-async[vertex]'"
        )
    with serve_storage_emulator(data_dir=data_dir, buckets=[bucket]) as running:
        yield running.url
