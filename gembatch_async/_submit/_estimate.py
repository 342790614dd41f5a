"""Before submitting: an estimate of each input's prompt tokens, read locally.

Google's rule of thumb: "For Gemini models, a token is equivalent to about 4
characters. 100 tokens is equal to about 60-80 English words"
(ai.google.dev/gemini-api/docs/tokens). So a request's prompt is estimated as the
characters of every text in it (``contents``, ``systemInstruction``, an embedding's
``content``; the request's other fields are not prompt) divided by 4, rounded up.
On the real answers in tests/fixtures/real-gemini-batch this is within 20% of
``promptTokenCount`` (see tests/submit/test_estimate.py, which measures it).
Images, audio, video and files (``inlineData``, ``fileData``) are not estimated:
those requests are counted, and the estimate says it is a lower bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import anyio.to_thread

from .._backends import Backend
from .._errors import UsageError
from .._events import SubmitSummary, WouldSubmit
from .._inputs import InputFile
from .._prices import Cost, price_tokens
from .._results._usage import LONG_PROMPT_TOKENS, TokenCounts, TokenUsage
from .._retry import call_with_retries
from .._settings import SubmitSettings

CHARS_PER_TOKEN = 4
#: The request fields that hold prompt text (both proto JSON spellings).
_PROMPT_FIELDS = ("contents", "content", "systemInstruction", "system_instruction")
_MEDIA_FIELDS = frozenset({"inlineData", "inline_data", "fileData", "file_data"})


@dataclass(frozen=True)
class InputEstimate:
    """One input's (or part's) requests and their estimated prompt tokens."""

    requests: int
    prompt_tokens: int
    #: Requests over 200k estimated prompt tokens (priced at the higher tier).
    long_requests: int = 0
    long_prompt_tokens: int = 0
    #: Requests with images, audio, video or files, whose tokens are not estimated.
    with_media: int = 0
    #: Counted by the API's countTokens rather than estimated.
    counted: bool = False

    def usage(self) -> TokenUsage:
        """As token usage, to be priced (prompt only: no answer is known yet)."""
        return TokenUsage(
            TokenCounts(requests=self.requests, prompt=self.prompt_tokens),
            TokenCounts(requests=self.long_requests, prompt=self.long_prompt_tokens),
        )


def _texts(value: object) -> Iterator[str]:
    """Every string under a ``text`` key, at any depth."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name == "text" and isinstance(item, str):
                yield item
            else:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def _has_media(value: object) -> bool:
    if isinstance(value, dict):
        return any(k in _MEDIA_FIELDS or _has_media(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_media(item) for item in value)
    return False


def request_tokens(request: object) -> tuple[int, bool]:
    """(estimated prompt tokens, has media) of one request object."""
    if not isinstance(request, dict):
        return 0, False
    prompt = [request.get(name) for name in _PROMPT_FIELDS]
    chars = sum(len(text) for text in _texts(prompt))
    return math.ceil(chars / CHARS_PER_TOKEN), _has_media(prompt)


def estimate_range(path: str, start: int = 0, end: int | None = None) -> InputEstimate:
    """Estimate the requests in bytes ``start``..``end`` of ``path`` (whole lines;
    pre-flight has checked them). Blocking: run it in a worker thread."""
    requests = tokens = long_requests = long_tokens = media = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        position = start
        for raw in handle:
            if end is not None and position >= end:
                break
            position += len(raw)
            if not raw.strip():
                continue
            line = json.loads(raw)
            count, has_media = request_tokens(
                line.get("request") if isinstance(line, dict) else None
            )
            requests += 1
            tokens += count
            media += has_media
            if count > LONG_PROMPT_TOKENS:
                long_requests += 1
                long_tokens += count
    return InputEstimate(requests, tokens, long_requests, long_tokens, media)


def _estimate_item(item: InputFile) -> InputEstimate:
    if item.part is None:
        return estimate_range(item.path)
    return estimate_range(item.path, item.part.start, item.part.end)


async def estimate_items(items: Sequence[InputFile]) -> dict[str, InputEstimate]:
    """Each input's (or part's) estimate, by journal key, read in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: {i.key: _estimate_item(i) for i in items})


def would_submit(
    item: InputFile, estimate: InputEstimate | None, settings: SubmitSettings
) -> WouldSubmit:
    """The dry run's line for one input: what it holds, its tokens and their cost."""
    if estimate is None:
        return WouldSubmit(item.label, item.count, item.size_bytes)
    return WouldSubmit(
        item.label,
        item.count,
        item.size_bytes,
        input_tokens=estimate.prompt_tokens,
        with_media=estimate.with_media,
        tokens_counted=estimate.counted,
        cost=_input_cost(estimate, settings),
    )


def _input_cost(estimate: InputEstimate, settings: SubmitSettings) -> Cost:
    return price_tokens(estimate.usage(), settings.model, override=settings.prices, input_only=True)


def dry_run_summary(
    summary: SubmitSummary, estimates: Sequence[InputEstimate], settings: SubmitSettings
) -> SubmitSummary:
    """The summary with the total estimate of what would be submitted."""
    if not estimates:
        return summary
    total = InputEstimate(
        sum(e.requests for e in estimates),
        sum(e.prompt_tokens for e in estimates),
        sum(e.long_requests for e in estimates),
        sum(e.long_prompt_tokens for e in estimates),
        sum(e.with_media for e in estimates),
    )
    return replace(
        summary,
        input_tokens=total.prompt_tokens,
        cost=_input_cost(total, settings),
        tokens_counted=all(e.counted for e in estimates),
    )


# -- exact counts, when asked (--count-tokens) ------------------------------------------------
#: countTokens is one call per request: past this many, the local estimate is the answer.
MAX_COUNTED_REQUESTS = 10_000


def _contents_of(path: str, start: int, end: int | None) -> list[list[Any]]:
    """Each request's contents as countTokens takes them (an embedding's ``content``
    as a one-item list). Blocking: run it in a worker thread."""
    found: list[list[Any]] = []
    with open(path, "rb") as handle:
        handle.seek(start)
        position = start
        for raw in handle:
            if end is not None and position >= end:
                break
            position += len(raw)
            if raw.strip():
                request = json.loads(raw).get("request", {})
                contents = request.get("contents") or [request.get("content") or {}]
                found.append(contents if isinstance(contents, list) else [contents])
    return found


async def count_items(
    api: Backend, items: Sequence[InputFile], settings: SubmitSettings
) -> dict[str, InputEstimate]:
    """Each input's prompt tokens as the API's countTokens counts them: one call per
    request, ``settings.concurrency`` at once, each retried as any call is.

    The SDK sends only the contents on the Gemini API (a ``system_instruction``,
    ``tools`` or ``generation_config`` is refused there: google-genai 3.6.1
    models.py ``_CountTokensConfig_to_mldev``), so a system instruction and a
    response schema are not in the count."""
    total = sum(item.count for item in items)
    if total > MAX_COUNTED_REQUESTS:
        raise UsageError(
            f"--count-tokens: {total:,} requests would take {total:,} countTokens calls "
            f"(at most {MAX_COUNTED_REQUESTS:,}); leave it out for the local estimate"
        )
    limiter = anyio.CapacityLimiter(settings.concurrency)
    counted: dict[str, InputEstimate] = {}

    async def count_one(contents: list[Any]) -> int:
        async with limiter:
            return await call_with_retries(
                settings.retry, lambda: api.count_tokens(settings.model_resource, contents)
            )

    for item in items:
        start, end = (0, None) if item.part is None else (item.part.start, item.part.end)
        requests = await anyio.to_thread.run_sync(_contents_of, item.path, start, end)
        tokens = [0] * len(requests)

        async def count_at(index: int, contents: list[Any], tokens: list[int] = tokens) -> None:
            tokens[index] = await count_one(contents)

        async with anyio.create_task_group() as tg:
            for index, contents in enumerate(requests):
                tg.start_soon(count_at, index, contents)
        long = [t for t in tokens if t > LONG_PROMPT_TOKENS]
        counted[item.key] = InputEstimate(
            len(tokens), sum(tokens), len(long), sum(long), counted=True
        )
    return counted
