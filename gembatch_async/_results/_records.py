"""What came of a download: one input's :class:`ResultFile` (as written, or why not),
the :class:`ResultCounts` the journal records, and an error's label for counting
failures by code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ._usage import TokenUsage

if TYPE_CHECKING:  # a record only: _prices imports this package
    from .._prices import Cost

_GRPC_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


@dataclass(frozen=True)
class ResultCounts:
    """What a downloaded result held; recorded in the journal, shown by ``status``."""

    batch_name: str
    results_path: str
    failed_path: str | None
    requests: int
    responses: int
    failed: int
    failed_by_code: Mapping[str, int]
    missing: int
    unknown: int
    #: Tokens the answers used (None: recorded before usage was summed).
    usage: TokenUsage | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed_by_code": dict(self.failed_by_code)}

    @classmethod
    def from_dict(cls, data: object) -> ResultCounts | None:
        """The counts a journal line records, or None when it records none (or garbage)."""
        if not isinstance(data, dict):
            return None
        try:
            usage = TokenUsage.from_dict(data.get("usage"))
            return cls(**{**data, "failed_by_code": dict(data["failed_by_code"]), "usage": usage})
        except (TypeError, KeyError, ValueError):
            return None


@dataclass(frozen=True)
class ResultFile:
    """One input's results, as written (or why they were not) (USERS.md P8, P10).

    ``output_path`` holds one line per input request, in input order. ``errors``
    counts the error lines the service wrote; ``failed_by_code`` counts every
    request without a usable answer (those, plus never answered and unmatched),
    and ``failed_path`` holds their original input lines.
    """

    path: str
    batch_name: str
    output_path: str
    responses: int = 0
    errors: int = 0
    #: The first MAX_LISTED input keys with no answer; missing_count has them all.
    missing_keys: tuple[str, ...] = ()
    #: Answers whose key is not in the input (or has no key in a job with keys).
    unexpected_keys: int = 0
    skipped: bool = False
    error: str | None = None
    missing_count: int = 0
    requests: int = 0
    failed_path: str | None = None
    failed_by_code: Mapping[str, int] = field(default_factory=dict)
    #: The first MAX_LISTED keys of unexpected answers ("" for an answer without a key).
    unknown_keys: tuple[str, ...] = ()
    #: Requests without a key in a job with keys: they cannot be matched.
    unmatched: int = 0
    #: Answers beyond the first for one key (the first response is kept).
    duplicates: int = 0
    #: No request had a key: answers were matched by position.
    keyless: bool = False
    raw_path: str | None = None
    #: Malformed output lines, "NAME:LINE: reason" (the first MAX_PROBLEMS).
    problems: tuple[str, ...] = ()
    #: Of the unexpected answers: those whose key came back as a number that several
    #: request keys read as ("0" and "000"), left unmatched rather than guessed.
    ambiguous_keys: int = 0
    #: The input's job ended in this state (FAILED, CANCELLED, EXPIRED) without results:
    #: nothing was downloaded; ``error`` is None (the job's end is not the download's).
    ended: str | None = None
    #: Tokens used, summed from every answer's usageMetadata (None: not read).
    usage: TokenUsage | None = None
    #: The model the job ran and when it was created (epoch seconds): what prices it.
    model: str = ""
    created_at: float | None = None
    #: What the answers cost (set by ``download``/``run``, which know the model).
    cost: Cost | None = None

    @property
    def failed(self) -> int:
        return sum(self.failed_by_code.values())

    @property
    def complete(self) -> bool:
        """Every request has exactly one answer and every answer a request."""
        return self.error is None and not (
            self.missing_count or self.unexpected_keys or self.unmatched or self.duplicates
        )

    def counts(self) -> ResultCounts:
        return ResultCounts(
            self.batch_name,
            self.output_path,
            self.failed_path,
            self.requests,
            self.responses,
            self.failed,
            dict(self.failed_by_code),
            self.missing_count + self.unmatched,
            self.unexpected_keys,
            self.usage,
        )


def error_label(error: object) -> str:
    """``"13 INTERNAL"``: an error's code and name, for counting failures by code."""
    if not isinstance(error, dict):
        return "unknown"
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    status = error.get("status")
    name = status if isinstance(status, str) and status else _GRPC_NAMES.get(code or -1)
    return " ".join(str(part) for part in (code, name) if part is not None) or "unknown"
