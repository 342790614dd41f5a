"""Emulator settings, shared by the server, the CLI and the tests."""

from __future__ import annotations

import dataclasses
import pathlib

from gembatch_async.emulator._faults import parse_fault_spec
from gembatch_async.emulator._models import DEFAULT_MODELS


@dataclasses.dataclass(frozen=True)
class EmulatorConfig:
    """How one emulator instance behaves; immutable so it can cross threads safely."""

    host: str = "127.0.0.1"
    port: int = 8089
    # None keeps everything in memory (blobs in a temp dir removed on shutdown).
    state_dir: pathlib.Path | None = None
    latency_ms: float = 0.0
    # A batch is PENDING for the first third, RUNNING until this, then SUCCEEDED.
    processing_seconds: float = 30.0
    faults: str = ""
    fault_seed: int | None = None
    # The catalogue served (bare ids); see _models.py for what each supports.
    models: tuple[str, ...] = DEFAULT_MODELS
    # More models to serve beside `models` (the CLI's repeatable --model NAME).
    extra_models: tuple[str, ...] = ()
    storage_quota_bytes: int = 20 * 10**9
    max_unfinished_batches: int = 100
    #: Enqueued tokens allowed per model across unfinished jobs (None: no quota);
    #: the emulator counts one token per 4 bytes of request JSON.
    enqueued_token_quota: int | None = None
    #: Unfinished jobs end EXPIRED this long after creation (None: never; the
    #: service's own limit is 48 h).
    expire_after_seconds: float | None = None
    max_file_bytes: int = 2 * 10**9
    # Share of requests (0..1) answered by a per-request error line, chosen by a hash
    # of fault_seed and the request's key (see _request_errors).
    request_errors: float = 0.0
    #: Test only: output keys that read as numbers written as JSON numbers ("000007" -> 7).
    #: Reported for the real service, unconfirmed (see _numeric_keys); off by default.
    numeric_keys: bool = False
    #: The Cloud Storage (emulator) the Vertex routes read gs:// inputs from and write
    #: outputs to, e.g. "http://127.0.0.1:4443". None: $STORAGE_EMULATOR_HOST when the
    #: app starts; unset too, and Vertex creates answer 400 (never real Cloud Storage).
    storage_emulator_host: str | None = None

    def __post_init__(self) -> None:
        # Fail at configuration time (the CLI reports FaultSpecError as a usage error).
        parse_fault_spec(self.faults)
        if self.latency_ms < 0 or self.processing_seconds < 0:
            raise ValueError("latency_ms and processing_seconds must not be negative")
        if not 0.0 <= self.request_errors <= 1.0:  # also refuses NaN
            raise ValueError("request_errors must be a share between 0 and 1")
        if any(
            not name.strip() or "/" in name.removeprefix("models/") for name in self.extra_models
        ):
            raise ValueError("model names must be non-empty ids such as gemini-2.5-flash")

    @property
    def served_models(self) -> tuple[str, ...]:
        """Bare ids of every model served, in models.list order, each once."""
        names = (*self.models, *(m.strip().removeprefix("models/") for m in self.extra_models))
        return tuple(dict.fromkeys(names))
