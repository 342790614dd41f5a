"""Which limit a 429 met: the service's quota errors, translated into our :class:`Limit`.

Which 429 is which is read from the ``QuotaFailure`` detail's quota names, and
only from them: we never guess a name the service did not give. Only the storage
quota is known to name itself (``file_storage_bytes``; alphaXiv/feedback#16,
googleapis/python-genai#1172). The 429 that ``batches.create`` answers at the job
window, and in most other quota cases, is generic: the message "You exceeded your
current quota ..." and a ``google.rpc.Help`` detail, no quota name, no retry delay
(captured in langchain4j/langchain4j#3942; also googleapis/js-genai#1264,
googleapis/python-genai#1901). So an unnamed 429 on create is :attr:`Limit.REFUSED`:
capacity of some kind; ``_admission`` counts ahead to keep it rare.

This is part of error translation (``_genai.translate_errors``), so it lives with the
backends; a new kind of 429 is one pattern here.
"""

from __future__ import annotations

import re
from typing import Any

from .._errors import ApiError, Limit

# Matched against quota names (QuotaFailure quotaMetric / quotaId) only. The storage
# name is captured (FileStorageBytesPerProject, file_storage_bytes); the others are
# the words Google's quota names use (e.g. GenerateRequestsPerMinutePerProjectPerModel
# for a rate limit); a name matching none of them is an unknown quota.
_NAMED: tuple[tuple[Limit, re.Pattern[str]], ...] = (
    (Limit.TOKENS, re.compile(r"enqueued[\s_-]*tokens?", re.IGNORECASE)),
    (Limit.STORAGE, re.compile(r"storage|bytes", re.IGNORECASE)),
    (
        Limit.JOBS,
        re.compile(r"(unfinished|concurrent|active|running)[\s_-]*batch|batch[\s_-]*jobs", re.I),
    ),
    (Limit.RATE, re.compile(r"per[\s_-]*(second|minute|hour|day)|requests", re.IGNORECASE)),
)


def limit_of(error: ApiError, *, create: bool = False) -> Limit | None:
    """The limit a 429 says it met; None for other errors.

    A named quota is that quota. An unnamed one is a rate limit, except on
    ``batches.create`` (``create``), where it is :attr:`Limit.REFUSED` unless the
    service said when to try again (Retry-After or RetryInfo): then it is a rate
    limit, retried, and capacity only if it outlasts the retries (see
    :func:`limit_after_retries`).
    """
    if error.code != 429:
        return None
    names = _quota_names(error.details)
    for name in names:
        for limit, pattern in _NAMED:
            if pattern.search(name):
                return limit
    if not create or error.retry_after is not None:
        return Limit.RATE
    return Limit.REFUSED


def limit_after_retries(error: ApiError) -> Limit | None:
    """A create still rate limited when the retries ran out: capacity, never the
    file's failure (the service does not say whether it was a rate limit at all)."""
    return Limit.REFUSED if error.code == 429 else None


def _quota_names(details: tuple[dict[str, Any], ...]) -> list[str]:
    names: list[str] = []
    for detail in details:
        if not str(detail.get("@type", "")).endswith("QuotaFailure"):
            continue
        for violation in detail.get("violations") or []:
            if isinstance(violation, dict):
                names += [str(violation.get(k, "")) for k in ("quotaMetric", "quotaId")]
    return [name for name in names if name]
