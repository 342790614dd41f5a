"""Opening a backend: the one chosen for submit and run, or per line for the job commands."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from google import genai

from .._settings import api_key_from_env, refuse_unsendable_key
from . import GEMINI, VERTEX, Backend, Opener, Routed, VertexTarget, backend_of_line, routed
from ._genai import api_session
from .vertex import vertex_session


@contextlib.asynccontextmanager
async def backend_session(
    client: genai.Client | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    vertex: VertexTarget | None = None,
) -> AsyncIterator[Backend]:
    """Vertex AI batch prediction when ``vertex`` is given, else the Gemini API."""
    if vertex is not None:
        async with vertex_session(vertex) as api:
            yield api
        return
    async with api_session(client, api_key=api_key, base_url=base_url) as gemini:
        yield gemini


@contextlib.asynccontextmanager
async def jobs_session(
    lines: Iterable[Mapping[str, Any]],
    client: genai.Client | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    vertex: VertexTarget | None = None,
) -> AsyncIterator[Routed]:
    """A backend for the job commands: each job's calls go to the backend its line
    records, Vertex with the project, location and bucket the line records unless
    ``vertex`` says otherwise. Neither is opened before a call needs it."""
    lines = list(lines)
    if client is None and any(backend_of_line(line) == GEMINI for line in lines):
        refuse_unsendable_key(api_key or api_key_from_env())
    target = vertex or VertexTarget()
    for line in lines:
        if backend_of_line(line) == VERTEX:
            target = target.with_line(line)
            break
    vertex_target = target

    def gemini() -> contextlib.AbstractAsyncContextManager[Backend]:
        return backend_session(client, api_key=api_key, base_url=base_url)

    def vertex_api() -> contextlib.AbstractAsyncContextManager[Backend]:
        return backend_session(vertex=vertex_target)

    openers: dict[str, Opener] = {GEMINI: gemini, VERTEX: vertex_api}
    async with routed(openers) as api:
        yield api
