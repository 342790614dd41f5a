"""Opening a backend: the Target chosen for submit and run, or per line for the job commands.

The registry of backends: each backend's name, the Target the public API's parameters
build for it, and how an opened Target becomes a :class:`Backend`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from google import genai

from . import Backend, Opener, Routed, backend_of_line, routed
from ._gemini_target import GeminiTarget
from ._genai import api_session
from ._target import GEMINI, VERTEX, Target
from ._vertex_target import VertexTarget
from .vertex import vertex_session

#: The caller's google-genai client (the public API's ``client=``), named here so that
#: nothing above the backends imports the SDK.
GenaiClient = genai.Client


def chosen_target(
    client: GenaiClient | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    vertex: VertexTarget | None = None,
) -> Target:
    """The one Target ``submit`` and ``run`` send to: Vertex AI batch prediction when
    ``vertex`` is given, else the Gemini API (the public API's parameters, unchanged)."""
    if vertex is not None:
        return vertex
    return GeminiTarget(client, api_key, base_url)


def every_target(
    client: GenaiClient | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    vertex: VertexTarget | None = None,
) -> dict[str, Target]:
    """A Target per backend for the job commands, whose journal may name any of them."""
    return {GEMINI: GeminiTarget(client, api_key, base_url), VERTEX: vertex or VertexTarget()}


def _open_gemini(target: Any) -> contextlib.AbstractAsyncContextManager[Backend]:
    gemini: GeminiTarget = target
    return api_session(gemini.client, api_key=gemini.api_key, base_url=gemini.base_url)


def _open_vertex(target: Any) -> contextlib.AbstractAsyncContextManager[Backend]:
    return vertex_session(target)


#: How each backend's Target is opened, by its name.
_OPENERS: dict[str, Callable[[Any], contextlib.AbstractAsyncContextManager[Backend]]] = {
    GEMINI: _open_gemini,
    VERTEX: _open_vertex,
}


def open_target(target: Target) -> contextlib.AbstractAsyncContextManager[Backend]:
    """The Backend of ``target``, closed when the context ends."""
    return _OPENERS[target.backend](target)


@contextlib.asynccontextmanager
async def jobs_session(
    lines: Iterable[Mapping[str, Any]], targets: Mapping[str, Target]
) -> AsyncIterator[Routed]:
    """A backend for the job commands: each job's calls go to the backend its line
    records, its Target filled from what the lines recorded (Vertex: the project,
    location and bucket, unless the Target says otherwise). None is opened before a
    call needs it."""
    by_backend: dict[str, list[Mapping[str, Any]]] = {}
    for line in lines:
        by_backend.setdefault(backend_of_line(line), []).append(line)
    openers: dict[str, Opener] = {
        name: functools.partial(open_target, target.for_lines(by_backend.get(name, [])))
        for name, target in targets.items()
    }
    async with routed(openers) as api:
        yield api
