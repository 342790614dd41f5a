"""Emulator settings, shared by the server, the CLI and the tests."""

from __future__ import annotations

import dataclasses
import pathlib

from gembatch_async.emulator._faults import parse_fault_spec

# Bare model ids served by default (models.get/list and batch create accept only these).
DEFAULT_MODELS: tuple[str, ...] = (
    "gemini-3.1-flash-lite",
    "gemini-3.5-flash",
    "gemini-3-flash-preview",
    "gemini-3.1-pro-preview",
)


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
    models: tuple[str, ...] = DEFAULT_MODELS
    storage_quota_bytes: int = 20 * 10**9
    max_unfinished_batches: int = 100
    max_file_bytes: int = 2 * 10**9
    # Share of requests (0..1) answered by a per-request error line, chosen by a hash
    # of fault_seed and the request's key (see _request_errors).
    request_errors: float = 0.0

    def __post_init__(self) -> None:
        # Fail at configuration time (the CLI reports FaultSpecError as a usage error).
        parse_fault_spec(self.faults)
        if self.latency_ms < 0 or self.processing_seconds < 0:
            raise ValueError("latency_ms and processing_seconds must not be negative")
        if not 0.0 <= self.request_errors <= 1.0:  # also refuses NaN
            raise ValueError("request_errors must be a share between 0 and 1")
