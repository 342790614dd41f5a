"""What tokens cost: batch and interactive (standard) rates, from pydantic's genai-prices
or from the user, and "unknown" (never 0, never a guess) when neither knows.

The rates come from ``genai-prices`` (github.com/pydantic/genai-prices), a maintained
table of LLM prices. Its Google entries carry the Gemini API's batch rates as a price
variant ``when={"processing": "batch"}`` (its notes: "Batch rates verified on
2026-10-14 at https://ai.google.dev/gemini-api/docs/pricing (Batch tab); batch
history before then is not modelled"). A model it knows without such a variant
(e.g. gemini-embedding-001 in 0.2.3), or a date before the variant starts, has no
known batch rate: the standard rate is not used in its place (batch is cheaper, and
by how much is Google's to say). genai-prices needs Python 3.11+; on 3.10 every rate
is unknown unless given with ``--price``.

Costs are per request in two ways only: the tier above 200k prompt tokens (priced
from the requests counted apart, see ``_results._usage``) and the modality (audio,
image and video tokens of models that price them apart). The first is exact; the
second is "unknown" when such tokens occur, since usage sums do not say how a
modality's tokens split between cached and not. Tokens only: grounding searches and
other per-call fees are not in ``usageMetadata`` and are not counted.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ._errors import UsageError
from ._results._usage import LONG_PROMPT_TOKENS, TokenCounts, TokenUsage

_MILLION = Decimal(1_000_000)
#: The price variant genai-prices gives batch rates under.
_BATCH_CONTEXT = {"processing": "batch"}
#: Per-modality price keys of genai-prices (a model with any prices modalities apart).
_MEDIA_INPUT_KEYS = ("input_audio_mtok", "input_image_mtok", "input_video_mtok")
_MEDIA_OUTPUT_KEYS = ("output_audio_mtok", "output_image_mtok", "output_video_mtok")
_OVERRIDE_KEYS = {
    "input": "input",
    "output": "output",
    "cached": "cached",
    "interactive-input": "input",
    "interactive-output": "output",
    "interactive-cached": "cached",
}


@dataclass(frozen=True)
class Rates:
    """USD per million tokens; ``long_*`` for requests whose prompt passed 200k tokens
    (None: the same as below it)."""

    input: Decimal
    #: None: the model has no output rate (an embedding model): output tokens make it unknown.
    output: Decimal | None
    #: Cached prompt tokens; None: not known (a cost with cached tokens is unknown).
    cached: Decimal | None = None
    long_input: Decimal | None = None
    long_output: Decimal | None = None
    long_cached: Decimal | None = None
    #: The model prices some input / output modality apart from text.
    media_input: bool = False
    media_output: bool = False


@dataclass(frozen=True)
class PriceOverride:
    """Rates the user gives (``--price input=0.125,output=0.75``), USD per million
    tokens: batch rates, and optionally the interactive ones to compare with."""

    batch: Rates | None = None
    interactive: Rates | None = None


@dataclass(frozen=True)
class Cost:
    """What some tokens cost, at batch prices and at interactive (standard) prices.

    A figure is None when it is not known (an unknown model, a rate the source lacks);
    ``note`` then says why. ``source`` names what priced it and the date of the rates.
    """

    model: str
    batch_usd: float | None
    interactive_usd: float | None
    source: str
    note: str = ""
    #: Only the input side was priced (a dry run's estimate: answers are not known yet).
    input_only: bool = False


def parse_price_override(text: str) -> PriceOverride:
    """``input=0.125,output=0.75[,cached=0.0125][,interactive-input=..,...]``, USD per
    million tokens; a UsageError names what is wrong."""
    given: dict[str, Decimal] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in _OVERRIDE_KEYS:
            raise UsageError(
                f"--price: {item!r}: expected NAME=USD_PER_MILLION_TOKENS with NAME one of "
                + ", ".join(_OVERRIDE_KEYS)
            )
        given[name] = _rate(name, value)
    return PriceOverride(_rates_given(given, ""), _rates_given(given, "interactive-"))


def _rate(name: str, value: str) -> Decimal:
    try:
        rate = Decimal(value.strip())
    except InvalidOperation:
        rate = Decimal(-1)
    if not rate.is_finite() or rate < 0:
        raise UsageError(f"--price: {name}={value}: not a price (USD per million tokens, >= 0)")
    return rate


def _rates_given(given: dict[str, Decimal], prefix: str) -> Rates | None:
    names = [prefix + n for n in ("input", "output", "cached")]
    if not any(n in given for n in names):
        return None
    if names[0] not in given or names[1] not in given:
        raise UsageError(f"--price: give both {names[0]}= and {names[1]}= (or neither)")
    return Rates(given[names[0]], given[names[1]], given.get(names[2]))


# -- the maintained source -------------------------------------------------------------------
def _source() -> Any | None:
    """The genai_prices module, or None when it is not installed (Python 3.10). Imported
    by name: it is optional there, and its objects are read through a narrow seam."""
    try:
        return importlib.import_module("genai_prices")
    except ImportError:
        return None


def _source_version() -> str | None:
    source = _source()
    return None if source is None else str(source.__version__)


def _model_ref(model: str) -> str:
    """``models/NAME`` and ``publishers/google/models/NAME`` as the bare NAME."""
    return model.rsplit("/", 1)[-1]


def _find_model(model: str) -> Any | None:
    """genai-prices' entry for the model among Google's, or None."""
    source = _source()
    if source is None:
        return None
    try:
        _, info = source.data_snapshot.get_snapshot().find_provider_model(
            _model_ref(model), None, "google", None
        )
    except LookupError:
        return None
    return info


def _batch_variant_active(info: Any, when: dt.datetime) -> bool:
    """The source has a batch rate for the model at that date."""
    return any(
        variant.when == _BATCH_CONTEXT
        and (variant.constraint is None or variant.constraint.active(when))
        for variant in info.price_variants or ()
    )


def _split_tier(value: Any) -> tuple[Decimal | None, Decimal | None, bool]:
    """(rate up to 200k prompt tokens, rate above, understood). A tier that starts
    anywhere else is not understood (its requests were not counted apart)."""
    if value is None or isinstance(value, Decimal):
        return value, None, True
    tiers = list(value.tiers)
    if len(tiers) == 1 and tiers[0].start == LONG_PROMPT_TOKENS:
        return value.base, tiers[0].price, True
    return value.base, None, False


def _rates_from(price: Any) -> Rates | None:
    """Rates from a genai-prices ModelPrice, or None when it has no input rate."""
    input_rate, long_input, ok_in = _split_tier(price.input_mtok)
    output_rate, long_output, ok_out = _split_tier(price.output_mtok)
    cached, long_cached, ok_cached = _split_tier(price.cache_read_mtok)
    if input_rate is None or not (ok_in and ok_out and ok_cached):
        return None
    return Rates(
        input_rate,
        output_rate,
        cached,
        long_input,
        long_output,
        long_cached,
        media_input=any(getattr(price, k) is not None for k in _MEDIA_INPUT_KEYS),
        media_output=any(getattr(price, k) is not None for k in _MEDIA_OUTPUT_KEYS),
    )


@dataclass(frozen=True)
class _Looked:
    batch: Rates | None
    interactive: Rates | None
    source: str
    note: str


def _look_up(model: str, when: dt.datetime) -> _Looked:
    """The source's rates for the model at ``when``, and why any is missing."""
    version = _source_version()
    if version is None:
        return _Looked(None, None, "no price source", "genai-prices needs Python 3.11+")
    source = f"genai-prices {version}, rates of {when.date().isoformat()}"
    info = _find_model(model)
    if info is None:
        return _Looked(
            None, None, source, f"genai-prices {version} does not know {_model_ref(model)}"
        )
    interactive = _rates_from(info.get_prices(when))
    batch = (
        _rates_from(info.get_prices(when, _BATCH_CONTEXT))
        if _batch_variant_active(info, when)
        else None
    )
    missing = [
        what for what, rates in (("batch", batch), ("interactive", interactive)) if not rates
    ]
    note = (
        f"genai-prices {version} has no {' or '.join(missing)} rate for {_model_ref(model)}"
        if missing
        else ""
    )
    return _Looked(batch, interactive, source, note)


# -- pricing ---------------------------------------------------------------------------------
def _cost_of(
    counts: TokenCounts, input_: Decimal, output: Decimal | None, cached: Decimal | None
) -> Decimal | None:
    """What these counts cost, or None when a rate they need is not known."""
    answer = counts.output + counts.thinking
    if (counts.cached and cached is None) or (answer and output is None):
        return None
    uncached = counts.prompt - counts.cached + counts.tool_use
    total = uncached * input_ + counts.cached * (cached or 0) + answer * (output or 0)
    return total / _MILLION


def usd(usage: TokenUsage, rates: Rates | None) -> Decimal | None:
    """What ``usage`` costs at ``rates``, or None when it cannot be said exactly."""
    if rates is None:
        return None
    tokens, long = usage.tokens, usage.long_prompts
    if (tokens.media_prompt and rates.media_input) or (tokens.media_output and rates.media_output):
        return None
    short = _difference(tokens, long)
    below = _cost_of(short, rates.input, rates.output, rates.cached)
    above = _cost_of(
        long,
        rates.long_input or rates.input,
        rates.long_output or rates.output,
        rates.long_cached or rates.cached,
    )
    return None if below is None or above is None else below + above


def _difference(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(*(x - y for x, y in zip(astuple(a), astuple(b), strict=True)))


def price_tokens(
    usage: TokenUsage,
    model: str,
    *,
    when: dt.datetime | None = None,
    override: PriceOverride | None = None,
    input_only: bool = False,
) -> Cost:
    """What ``usage`` of ``model`` costs at batch and at interactive prices, with the
    rates in force at ``when`` (a job's creation time; default now)."""
    when = when or dt.datetime.now(dt.timezone.utc)
    looked = _look_up(model, when)
    override = override or PriceOverride()
    batch_rates = override.batch or looked.batch
    interactive_rates = override.interactive or looked.interactive
    source = looked.source
    if override.batch or override.interactive:
        given = " and ".join(
            what
            for what, r in (("batch", override.batch), ("interactive", override.interactive))
            if r
        )
        source = f"{given} rates from --price" + (
            "" if override.batch and override.interactive else f"; the rest: {looked.source}"
        )
    if usage.without_usage:  # answers that do not say what they used (embeddings)
        note = f"{usage.without_usage} answers reported no token counts"
        return Cost(_model_ref(model), None, None, source, note, input_only)
    batch, interactive = usd(usage, batch_rates), usd(usage, interactive_rates)
    note = (
        ""
        if batch is not None and interactive is not None
        else _why_unknown(usage, looked.note, batch_rates, interactive_rates)
    )
    return Cost(_model_ref(model), _float(batch), _float(interactive), source, note, input_only)


def _why_unknown(
    usage: TokenUsage, note: str, batch: Rates | None, interactive: Rates | None
) -> str:
    if note and (batch is None or interactive is None):
        return note
    if usage.tokens.media_prompt or usage.tokens.media_output:
        return "audio, image or video tokens are priced apart and not summed apart"
    return "cached tokens have no known rate"


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def price_answers(
    usage: TokenUsage | None,
    model: str,
    created_at: float | None,
    override: PriceOverride | None = None,
) -> Cost | None:
    """What a job's answers cost at the rates in force when it was created (None: no usage read)."""
    if usage is None:
        return None
    when = None if created_at is None else dt.datetime.fromtimestamp(created_at, dt.timezone.utc)
    return price_tokens(usage, model, when=when, override=override)


def total_cost(costs: Sequence[Cost]) -> Cost | None:
    """The sum of several costs: a figure is unknown when any part of it is."""
    if not costs:
        return None
    models = sorted({c.model for c in costs})
    batch = [c.batch_usd for c in costs]
    interactive = [c.interactive_usd for c in costs]
    return Cost(
        models[0] if len(models) == 1 else ", ".join(models),
        None if None in batch else sum(b for b in batch if b is not None),
        None if None in interactive else sum(i for i in interactive if i is not None),
        "; ".join(dict.fromkeys(c.source for c in costs)),
        next((c.note for c in costs if c.note), ""),
        all(c.input_only for c in costs),
    )
