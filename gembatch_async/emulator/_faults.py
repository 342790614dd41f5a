"""Fault injection (the --faults spec) and per-endpoint request counters."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Iterator
from typing import Literal

# Endpoint names used by the fault spec and by the request log in /_emulator/state.
ENDPOINTS: tuple[str, ...] = ("upload", "create", "get", "list", "delete", "cancel", "download")

FaultKind = Literal["status", "reset", "lost", "slow"]


class FaultSpecError(ValueError):
    """A --faults spec that cannot be parsed; the message says which item and why."""


@dataclasses.dataclass(frozen=True)
class FaultRule:
    """One `ENDPOINT:PROBABILITY:KIND` item."""

    endpoint: str  # one of ENDPOINTS or "*"
    probability: float
    kind: FaultKind
    status: int | None = None  # only for kind == "status"
    seconds: float = 0.0  # only for kind == "slow": held this long, then handled as usual
    #: Only for a 429: "generic" answers the body batches.create gives at a quota (no
    #: quota name, no retry delay); None the rate-limit form (RetryInfo, Retry-After).
    body: str | None = None

    def matches(self, endpoint: str) -> bool:
        """True when this rule applies to requests of `endpoint`."""
        return self.endpoint in ("*", endpoint)


def _parse_item(item: str) -> FaultRule:
    parts = [p.strip() for p in item.split(":")]
    if len(parts) != 3:
        raise FaultSpecError(f"fault {item!r}: expected ENDPOINT:PROBABILITY:KIND")
    endpoint, prob_text, kind_text = parts
    endpoint = endpoint.lower()
    if endpoint != "*" and endpoint not in ENDPOINTS:
        allowed = ", ".join((*ENDPOINTS, "*"))
        raise FaultSpecError(
            f"fault {item!r}: unknown endpoint {endpoint!r} (use one of {allowed})"
        )
    try:
        probability = float(prob_text)
    except ValueError:
        raise FaultSpecError(f"fault {item!r}: probability {prob_text!r} is not a number") from None
    if not math.isfinite(probability) or not 0.0 <= probability <= 1.0:
        raise FaultSpecError(f"fault {item!r}: probability must be between 0 and 1")
    kind_lower = kind_text.lower()
    if kind_lower.startswith("slow="):
        try:
            seconds = float(kind_lower.removeprefix("slow="))
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise FaultSpecError(f"fault {item!r}: slow=SECONDS needs a number of seconds >= 0")
        return FaultRule(endpoint, probability, "slow", seconds=seconds)
    if kind_lower in ("reset", "lost"):
        kind: FaultKind = "reset" if kind_lower == "reset" else "lost"
        return FaultRule(endpoint, probability, kind)
    status_text, _, body = kind_lower.partition("=")
    if not status_text.isdigit() or not 400 <= int(status_text) <= 599:
        raise FaultSpecError(
            f"fault {item!r}: kind {kind_text!r} must be an HTTP status 400-599, '429=generic', "
            "'reset', 'lost' or 'slow=SECONDS'"
        )
    if body and (status_text != "429" or body != "generic"):
        raise FaultSpecError(f"fault {item!r}: only 429 takes a body, and only '429=generic'")
    return FaultRule(endpoint, probability, "status", int(status_text), body=body or None)


def parse_fault_spec(spec: str) -> list[FaultRule]:
    """Parse `ENDPOINT:PROBABILITY:KIND[,...]`; an empty spec means no faults."""
    items = [item.strip() for item in spec.split(",")]
    return [_parse_item(item) for item in items if item]


class FaultInjector:
    """Seeded fault decisions, taken in request arrival order so a seed replays exactly."""

    def __init__(self, rules: list[FaultRule], seed: int | None) -> None:
        self.rules = rules
        self._rng = random.Random(seed)

    def decide(self, endpoint: str, *, allow_lost: bool = True) -> FaultRule | None:
        """The rule that fires for this request, if any (first matching rule wins).

        `allow_lost=False` skips `lost` rules (upload start and non-final chunks: a lost
        upload means the file got stored and only the final answer vanished).
        """
        for rule in self.rules:
            if not rule.matches(endpoint) or (rule.kind == "lost" and not allow_lost):
                continue
            # Draw for every candidate rule, even p=0/1, so the sequence depends only on
            # the spec and the order of requests.
            if self._rng.random() < rule.probability:
                return rule
        return None

    def lost_drops_connection(self) -> bool:
        """For a `lost` fault: True = drop the connection, False = answer 503."""
        return self._rng.random() < 0.5


@dataclasses.dataclass
class _Counter:
    count: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


class RequestLog:
    """Counts every API request per endpoint and the peak number open at once."""

    def __init__(self) -> None:
        self._counters = {name: _Counter() for name in ENDPOINTS}

    @contextlib.contextmanager
    def track(self, endpoint: str) -> Iterator[None]:
        """Count one request for the duration of the `with` block."""
        counter = self._counters.setdefault(endpoint, _Counter())
        counter.count += 1
        counter.in_flight += 1
        counter.max_in_flight = max(counter.max_in_flight, counter.in_flight)
        try:
            yield
        finally:
            counter.in_flight -= 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """`{"upload": {"count": n, "maxInFlight": m, "inFlight": k}, ...}` for
        /_emulator/state (``inFlight``: still being answered, e.g. a killed client's)."""
        return {
            name: {"count": c.count, "maxInFlight": c.max_in_flight, "inFlight": c.in_flight}
            for name, c in self._counters.items()
        }

    def reset(self) -> None:
        """Forget all counts (POST /_emulator/reset)."""
        self._counters = {name: _Counter() for name in ENDPOINTS}
