"""Tokens used: the sum of the answers' ``usageMetadata``, as the service reports them.

Each answer of a generate job carries a ``usageMetadata`` object (camelCase, as in
the real outputs in tests/fixtures/real-gemini-batch: ``promptTokenCount``,
``candidatesTokenCount``, ``totalTokenCount``, ``promptTokensDetails``). The fields
and what they mean are the SDK's ``GenerateContentResponseUsageMetadata``
(google-genai 3.6.1, ``types.py``): ``promptTokenCount`` includes the cached
content's tokens (``cachedContentTokenCount``), and the total is prompt +
candidates + ``toolUsePromptTokenCount`` + ``thoughtsTokenCount``.

Prices change at a prompt size (Gemini's "prompts longer than 200k tokens" tier,
ai.google.dev/gemini-api/docs/pricing), per request, so the requests whose prompt
passed it are also counted apart: a sum of prompts says nothing about each one.
A batch embedding answer has no ``usageMetadata``; the SDK's type for it,
``SingleEmbedContentResponse``, has a ``token_count`` (``tokenCount`` on the wire),
counted as its prompt when present (a number, or a string as proto3 JSON writes an
int64). Whether the service writes it is not captured (the emulator does, see
``emulator._responses.fake_embedding``): an answer with neither counts as one without
usage, and its cost is "unknown", never 0.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

#: The prompt size above which a request is priced at the higher tier
#: (Source: ai.google.dev/gemini-api/docs/pricing, "prompts > 200k tokens"; the
#: tiers in genai-prices' Google data all start at 200000).
LONG_PROMPT_TOKENS = 200_000


@dataclass(frozen=True)
class TokenCounts:
    """Token counts of some answers, summed from their ``usageMetadata``."""

    #: Answers that carried a usageMetadata.
    requests: int = 0
    #: Prompt tokens, cached ones included.
    prompt: int = 0
    #: Of the prompt, tokens read from a cache (billed at the cache rate).
    cached: int = 0
    #: Answer (candidates) tokens.
    output: int = 0
    #: Thinking tokens (billed as output).
    thinking: int = 0
    #: Tokens of tool results given back to the model (billed as input).
    tool_use: int = 0
    #: Prompt tokens of another modality than text (audio, image, video, document).
    media_prompt: int = 0
    #: Answer tokens of another modality than text (an image model's images).
    media_output: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(TokenCounts))
        )

    @property
    def total(self) -> int:
        return self.prompt + self.output + self.thinking + self.tool_use

    @classmethod
    def from_dict(cls, data: object) -> TokenCounts | None:
        if not isinstance(data, Mapping):
            return None
        values = [data.get(f.name, 0) for f in fields(cls)]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            return None
        return cls(*values)


@dataclass(frozen=True)
class TokenUsage:
    """The tokens of one job's (or several jobs') answers: all of them, and of those
    the requests whose prompt was over :data:`LONG_PROMPT_TOKENS` (priced higher)."""

    tokens: TokenCounts = TokenCounts()
    long_prompts: TokenCounts = TokenCounts()
    #: Answers without a usageMetadata (embeddings, error lines are not counted at all).
    without_usage: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.tokens + other.tokens,
            self.long_prompts + other.long_prompts,
            self.without_usage + other.without_usage,
        )

    @classmethod
    def from_dict(cls, data: object) -> TokenUsage | None:
        """The usage a journal line or JSON output records, or None for garbage."""
        if not isinstance(data, Mapping):
            return None
        tokens = TokenCounts.from_dict(data.get("tokens"))
        long_prompts = TokenCounts.from_dict(data.get("long_prompts", {}))
        without = data.get("without_usage", 0)
        if tokens is None or long_prompts is None or not isinstance(without, int):
            return None
        return cls(tokens, long_prompts, without)


def _count(value: object) -> int:
    """A token count as the service writes it (an int, or a string: proto int64 in
    JSON may be a string), anything else as 0."""
    if type(value) is int:  # the common case, first
        return max(value, 0)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _media(details: object) -> int:
    """Tokens of the non-text modalities in a ``*TokensDetails`` list."""
    if not isinstance(details, list):
        return 0
    if (
        len(details) == 1
        and isinstance(details[0], Mapping)
        and details[0].get("modality") == "TEXT"
    ):
        return 0  # the common case: text only
    return sum(
        _count(d.get("tokenCount"))
        for d in details
        if isinstance(d, Mapping) and d.get("modality") not in (None, "TEXT")
    )


def counts_of(usage: Mapping[str, Any]) -> TokenCounts:
    """One answer's counts from its ``usageMetadata``."""
    return TokenCounts(
        requests=1,
        prompt=_count(usage.get("promptTokenCount")),
        cached=_count(usage.get("cachedContentTokenCount")),
        output=_count(usage.get("candidatesTokenCount")),
        thinking=_count(usage.get("thoughtsTokenCount")),
        tool_use=_count(usage.get("toolUsePromptTokenCount")),
        media_prompt=_media(usage.get("promptTokensDetails")),
        media_output=_media(usage.get("candidatesTokensDetails")),
    )


#: The usageMetadata fields summed, in TokenCounts' order after ``requests``.
_FIELDS = (
    "promptTokenCount",
    "cachedContentTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
)


class UsageTally:
    """Sums answers' usage as they are read (one per output line). Plain integer sums:
    this runs once per answer of every download (a few microseconds each)."""

    def __init__(self) -> None:
        self._sums = [0] * 8  # TokenCounts' fields, in order
        self._long = [0] * 8
        self._without = 0

    def add_response(self, response: object) -> None:
        """Count one answer's ``response`` object (a generate or an embed answer)."""
        usage = response.get("usageMetadata") if isinstance(response, dict) else None
        if isinstance(usage, dict):
            row = [1, *map(_count, map(usage.get, _FIELDS)), 0, 0]
            if "promptTokensDetails" in usage:
                row[6] = _media(usage["promptTokensDetails"])
            if "candidatesTokensDetails" in usage:
                row[7] = _media(usage["candidatesTokensDetails"])
        elif isinstance(response, dict) and "tokenCount" in response:
            row = [1, _count(response["tokenCount"]), 0, 0, 0, 0, 0, 0]
        else:
            self._without += 1
            return
        self._sums = list(map(operator.add, self._sums, row))
        if row[1] > LONG_PROMPT_TOKENS:
            self._long = list(map(operator.add, self._long, row))

    def usage(self) -> TokenUsage:
        return TokenUsage(TokenCounts(*self._sums), TokenCounts(*self._long), self._without)
