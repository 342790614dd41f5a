"""The Gemini Developer API as a :class:`~._target.Target`: a client, or a key and a URL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import Problem
from .._settings import api_key_from_env, refuse_unsendable_key, unsendable_key_reason
from ._target import GEMINI, Target

if TYPE_CHECKING:  # the SDK loads with the first call, not with `gembatch-async --version`
    from google import genai

    from .._inputs import JobLimits


@dataclass(frozen=True)
class GeminiTarget:
    """The Batch API: the caller's ``client``, or one built from ``api_key`` (else
    GEMINI_API_KEY / GOOGLE_API_KEY) and ``base_url`` (an emulator)."""

    client: genai.Client | None = None
    api_key: str | None = None
    base_url: str | None = None

    @property
    def backend(self) -> str:
        return GEMINI

    @property
    def table_import(self) -> bool:
        return False

    def job_limits(self, max_bytes: int | None, max_requests: int | None) -> JobLimits:
        from .._inputs import JobLimits

        return JobLimits.of(max_bytes, max_requests, vertex=False)

    def problems(self) -> list[Problem]:
        """No key (none given, none in the environment), or one no request can carry;
        a caller's client brings its own."""
        if self.client is not None:
            return []
        key = self.api_key or api_key_from_env()
        if not key:
            return [
                Problem("GEMINI_API_KEY", "not set: set it (or GOOGLE_API_KEY), or use --emulator")
            ]
        unsendable = unsendable_key_reason(key)
        return [Problem("GEMINI_API_KEY", unsendable)] if unsendable else []

    def webhook_problem(self) -> str | None:
        return None

    def for_lines(self, lines: Sequence[Mapping[str, Any]]) -> Target:
        """The same target; a key no request can carry is refused once, up front (so
        the same clear error comes once, not once per job)."""
        if self.client is None and lines:
            refuse_unsendable_key(self.api_key or api_key_from_env())
        return self
