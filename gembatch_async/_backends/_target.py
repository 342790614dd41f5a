"""What a backend is before it is opened: its name, its rules, its pre-flight problems.

A :class:`Target` is built from the public API's parameters at the top of ``submit``,
``run`` and ``open_jobs``; from there inward only the Target travels, and the code
asks it rather than branching on which backend it is. It sends nothing: opening one
(``_sessions.open_target``) gives the :class:`~gembatch_async._backends.Backend` that
makes the calls. Each backend's Target lives in its own module (``_gemini_target``,
``_vertex_target``); registering one is a name here and an opener in ``_sessions``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._errors import Problem
    from .._inputs import JobLimits

GEMINI = "gemini"
VERTEX = "vertex"
#: Every registered backend, by the name journal lines and ``--backend`` use.
BACKENDS = (GEMINI, VERTEX)
#: The backend of a command that names none (and of journal lines that name none).
DEFAULT_BACKEND = GEMINI


class Target(Protocol):
    """A batch service to open: what it needs for that, and its own rules."""

    @property
    def backend(self) -> str:
        """Its name (one of :data:`BACKENDS`), as journal lines record it."""
        ...

    @property
    def table_import(self) -> bool:
        """Whether inputs are checked as the service's table import reads them (a line
        it cannot import fails the whole job, so pre-flight refuses it)."""
        ...

    def job_limits(self, max_bytes: int | None, max_requests: int | None) -> JobLimits:
        """What one job may hold: what the user asked (None: the service's limit),
        never past the service's limit (UsageError)."""
        ...

    def problems(self) -> list[Problem]:
        """Pre-flight problems that stop a submit before anything is sent (a missing
        or unsendable API key); the rest are found when it is opened."""
        ...

    def webhook_problem(self) -> str | None:
        """Why a run cannot ask this service for webhooks, or None when it can."""
        ...

    def for_lines(self, lines: Sequence[Mapping[str, Any]]) -> Target:
        """This target as it serves a journal's ``lines`` of its backend (the job
        commands): gaps filled from what they recorded; UsageError when they cannot
        be served as asked."""
        ...
