"""Tokens and costs as short text: one phrase per file, one line per command."""

from __future__ import annotations

from .._prices import Cost
from .._results._usage import TokenUsage

#: How the dry run's estimate is made, and how close it is (see ``_submit._estimate``).
ESTIMATE_METHOD = (
    "estimated as characters / 4 (Google's rule of thumb; within about 30% per file "
    "on real answers); output tokens are not known before the answers"
)


COUNT_METHOD = (
    "counted with the API's countTokens, one call per request: the contents only (the "
    "SDK sends no system instruction, tools or response schema to it on the Gemini API); "
    "output tokens are not known before the answers"
)


def usd(value: float | None) -> str:
    """A dollar figure with the digits that matter, or "unknown" (never 0 for unknown)."""
    if value is None:
        return "unknown"
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    digits = 4 if value >= 0.01 else 6
    return "$" + f"{value:.{digits}f}".rstrip("0")


def tokens_text(usage: TokenUsage) -> str:
    """``1,234 in (56 cached), 789 out, 1,000 thinking``."""
    counts = usage.tokens
    text = f"{counts.prompt + counts.tool_use:,} in"
    if counts.cached:
        text += f" ({counts.cached:,} cached)"
    text += f", {counts.output:,} out"
    if counts.thinking:
        text += f", {counts.thinking:,} thinking"
    if usage.without_usage:
        text += f"; {usage.without_usage:,} answers reported no tokens"
    return text


def cost_text(cost: Cost, *, with_source: bool = True) -> str:
    """``$0.0012 at batch prices (interactive $0.0024; SOURCE)``, or what is unknown and why."""
    what = "input " if cost.input_only else ""
    text = f"{what}{usd(cost.batch_usd)} at batch prices (interactive {usd(cost.interactive_usd)}"
    details = [cost.note] if cost.note else []
    if with_source:
        details.append(cost.source)
    return text + "".join(f"; {d}" for d in details) + ")"


def short_cost(cost: Cost | None) -> str:
    """A file's cost in a few words (the command's last line gives the source)."""
    if cost is None:
        return ""
    return f"{usd(cost.batch_usd)} at batch prices"


def file_usage_text(usage: TokenUsage | None, cost: Cost | None) -> str:
    """``; 3,474 tokens, $0.0026 at batch prices`` for one file's line, or ""."""
    if usage is None:
        return ""
    text = f"; {usage.tokens.total:,} tokens" if usage.tokens.requests else "; tokens not reported"
    return text + (f", {short_cost(cost)}" if cost is not None else "")


def usage_line(usage: TokenUsage | None, cost: Cost | None) -> str | None:
    """The command's closing line on tokens and cost, or None when no usage was read."""
    if usage is None or cost is None:
        return None
    return f"tokens: {tokens_text(usage)}; cost {cost_text(cost)}"
