"""Emulator settings, shared by the server, the CLI and the tests."""

from __future__ import annotations

import dataclasses
import pathlib

from gembatch_async.emulator._faults import parse_fault_spec
from gembatch_async.emulator._models import DEFAULT_MODELS
from gembatch_async.emulator._webhooks import parse_webhook_faults


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
    #: The project's file storage quota. Source: the service's own 429 names it,
    #: ``quota_id: "FileStorageBytesPerProject" quota_value: 21474836480`` (20 GiB,
    #: python-genai#1172); Google's docs say "20 GB" (ai.google.dev files guide).
    storage_quota_bytes: int = 20 * 2**30
    max_unfinished_batches: int = 100
    #: Enqueued tokens allowed per model across unfinished jobs (None: no quota);
    #: the emulator counts one token per 4 bytes of request JSON.
    enqueued_token_quota: int | None = None
    #: Unfinished jobs end EXPIRED this long after creation (None: never). Source: a
    #: job pending or running for more than 48 hours expires (Google's batch API guide,
    #: as read for PROTOCOL.md section 5; users saw it in python-genai#1482 and #2974).
    expire_after_seconds: float | None = 48 * 3600
    max_file_bytes: int = 2 * 10**9
    #: Kinder than the service, for tests of per-request errors: input-file lines the
    #: service cannot parse are answered line by line in the output (an error line
    #: each) instead of refusing the whole create with 400 (the default; see
    #: _validation.input_file_error for the sources).
    answer_invalid_lines: bool = False
    #: Request fields (either spelling, at any depth) the service refuses in an input
    #: file although its schema has them, as it refused ``responseSchema`` with 400
    #: "Request contains an invalid argument." (python-genai#1150). Lets a test make
    #: the service refuse a file that pre-flight (the schema) accepts.
    refused_fields: tuple[str, ...] = ()
    # Share of requests (0..1) answered by a per-request error line, chosen by a hash
    # of fault_seed, the job and the request's key (see _request_errors).
    request_errors: float = 0.0
    #: Test only: output keys that read as numbers written as JSON numbers ("000007" -> 7).
    #: Reported for the real service, unconfirmed (see _numeric_keys); off by default.
    numeric_keys: bool = False
    #: The Cloud Storage (emulator) the Vertex routes read gs:// inputs from and write
    #: outputs to, e.g. "http://127.0.0.1:4443". None: $STORAGE_EMULATOR_HOST when the
    #: app starts; unset too, and Vertex creates answer 400 (never real Cloud Storage).
    storage_emulator_host: str | None = None
    #: Vertex refuses a job of more requests, or an input object larger than this
    #: ("Batch prediction with Gemini", Quotas and limits: 200,000 requests, 1 GB).
    vertex_max_requests: int = 200_000
    vertex_max_input_bytes: int = 10**9
    #: How many files a Vertex job's predictions are written in: 1 writes
    #: ``predictions.jsonl`` (what Gemini batch jobs are documented and seen to write);
    #: more write ``predictions.jsonl-0000N-of-0000M`` shards (seen in public readers
    #: of Vertex output; the API reference names ``predictions_0001.jsonl`` ...), for
    #: tests that the tool reads every shard.
    vertex_output_shards: int = 1
    #: Faults of every dynamic webhook delivery: any of ``duplicate`` (sent twice, same
    #: webhook-id), ``late=SECONDS``, ``lost`` (never sent), ``bad-signature`` (signed
    #: by a key the JWKS does not hold), comma-separated (see _webhooks).
    webhook_faults: str = ""

    def __post_init__(self) -> None:
        # Fail at configuration time (the CLI reports FaultSpecError as a usage error).
        parse_fault_spec(self.faults)
        parse_webhook_faults(self.webhook_faults)
        if self.latency_ms < 0 or self.processing_seconds < 0:
            raise ValueError("latency_ms and processing_seconds must not be negative")
        if self.vertex_output_shards < 1 or self.vertex_max_requests < 1:
            raise ValueError("vertex_output_shards and vertex_max_requests must be at least 1")
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
