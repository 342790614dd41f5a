"""The one exception tree of gembatch-async.

Everything the library raises on purpose derives from :class:`GembatchError`, and
each class carries the exit code the CLI uses for it::

    GembatchError                      (exit 1)
    ├── UsageError(ValueError)         (exit 2)  bad options, e.g. concurrency < 1
    │   └── MissingApiKeyError         (exit 2)  no GEMINI_API_KEY / GOOGLE_API_KEY
    ├── PreflightError(ValueError)     (exit 2)  inputs or model refused before any upload;
    │                                            carries every problem found
    ├── JournalError(OSError)          (exit 2)  job-info.jsonl cannot be read or written
    ├── InputChangedError(OSError)     (exit 1)  an input vanished or changed after pre-flight
    ├── OutputError(ValueError)        (exit 1)  a job's output has lines that are not results;
    │                                            carries every problem found (with line numbers)
    └── ApiError                       (exit 1)  the API or the network failed a call
        ├── TransientApiError          (exit 1)  worth retrying: 408/429/5xx, dropped, timed out
        │   └── AmbiguousApiError      (exit 1)  the action may have happened anyway
        ├── CapacityApiError           (exit 3)  429 for a full job window, token or storage
        │                                        quota: the file waits (run) or is deferred
        ├── UnansweredApiError         (exit 1)  we stopped waiting for a sent request: it may
        │                                        still happen, so it is neither repeated nor undone
        └── PermanentApiError          (exit 1)  4xx that no retry will fix
            ├── NotFoundApiError       (exit 1)  404 (and the Files API's 403 for a missing file)
            └── AlreadyExistsApiError  (exit 1)  409: the name is taken (e.g. an earlier upload)

SDK and transport errors are translated into ApiError subclasses in exactly one
place, ``_backends._genai.translate_errors``, which chains the original with ``from``.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from typing import Any

from ._names import display_path

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


class GembatchError(Exception):
    """Root of every error gembatch-async raises on purpose."""

    exit_code: int = 1


class UsageError(GembatchError, ValueError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = 2


class MissingApiKeyError(UsageError):
    """No API key was found in the environment or the arguments."""

    def __init__(self) -> None:
        super().__init__(
            "no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY), or use --emulator to run offline"
        )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input, found before anything was sent."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        path = display_path(self.path)
        where = path if self.line is None else f"{path}:{self.line}"
        return f"{where}: {self.message}"


class PreflightError(GembatchError, ValueError):
    """Inputs (or the model) were refused before any upload; nothing was sent."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} {noun} found, nothing was submitted:\n{lines}")


class JournalError(GembatchError, OSError):
    """The job-info journal could not be read or written."""

    exit_code = 2


class InputChangedError(GembatchError, OSError):
    """An input is no longer the file pre-flight checked; that file alone fails."""


class OutputError(GembatchError, ValueError):
    """A job's output file has lines that cannot be read as results; none were written."""

    def __init__(self, problems: list[Problem], more: int = 0) -> None:
        self.problems = problems
        self.more = more
        total = len(problems) + more
        noun = "line" if total == 1 else "lines"
        shown = "; ".join(f"line {p.line}: {p.message}" for p in problems)
        extra = f"; and {more} more" if more else ""
        where = problems[0].path if problems else "the output"
        super().__init__(f"{total} malformed {noun} in {where}: {shown}{extra}")


class ApiError(GembatchError):
    """A call to the Gemini API failed.

    ``code`` is the HTTP status (0 when no response arrived), ``status`` the API's
    status word (e.g. ``RESOURCE_EXHAUSTED``), ``retry_after`` the server's
    requested delay in seconds when it gave one, ``details`` the error body's details.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = 0,
        status: str | None = None,
        retry_after: float | None = None,
        details: tuple[dict[str, Any], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retry_after = retry_after
        #: The error body's ``details`` (QuotaFailure, RetryInfo, ...), for classifying 429s.
        self.details = details


class TransientApiError(ApiError):
    """A failure that a later attempt may not meet: 408, 429, 5xx, network."""


class AmbiguousApiError(TransientApiError):
    """No usable answer arrived, so the action may or may not have happened."""


#: The capacity vocabulary lives with the errors (not in ``_admission``) so that this
#: leaf imports nothing above it: backends raise CapacityApiError, admission counts.
class Limit(enum.Enum):
    """What a 429 (or our own count) says is exhausted."""

    RATE = "rate limit"
    JOBS = "the job window is full"
    TOKENS = "the enqueued-token quota is full"
    STORAGE = "the storage quota is full"
    #: A 429 on create that names no quota: the job window, the token quota or a
    #: limit nobody documents; the body does not say which.
    REFUSED = "the service refused new jobs (429 without a reason)"

    @property
    def key(self) -> str:
        """The short name events carry (``"storage"``, ``"refused"``, ...)."""
        return self.name.lower()


class CapacityApiError(ApiError):
    """The service is at a limit (``limit``): not the file's failure, it waits for capacity."""

    exit_code = 3

    def __init__(self, message: str, *, limit: Limit, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.limit = limit


class UnansweredApiError(ApiError):
    """A request was sent and we stopped waiting for its answer; it may still take effect."""


class PermanentApiError(ApiError):
    """The API refused the request; repeating it will not help."""


class NotFoundApiError(PermanentApiError):
    """The named resource does not exist (or is not ours to see)."""


class AlreadyExistsApiError(PermanentApiError):
    """The resource name is already taken (HTTP 409)."""


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """Every error inside nested task-group wrappers (``exc`` itself when it is none)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def single_error(exc: BaseException) -> BaseException:
    """The one real error inside nested task-group wrappers, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
