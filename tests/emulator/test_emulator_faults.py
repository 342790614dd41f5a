"""Fault injection, latency and request counters of the emulator."""

from __future__ import annotations

import io
import random
import time
import urllib.error

import aiohttp
import anyio
import pytest
from google.genai import errors

from gembatch_async.emulator import (
    EmulatorConfig,
    FaultSpecError,
    RunningEmulator,
    parse_fault_spec,
)
from tests.emulator.test_emulator_support import (
    AIO_TRANSPORTS,
    AIOHTTP_SUBCLASS_WARNING,
    API_KEY,
    MODEL,
    aio_client,
    inline_src,
    no_retry,
    raw_get,
    sync_client,
)
from tests.helpers import sdk_httpx as httpx2

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

KEY = {"x-goog-api-key": API_KEY}


def test_parse_fault_spec() -> None:
    """Valid specs parse into rules; empty means none."""
    rules = parse_fault_spec(" upload:0.5:503, *:1:reset,create:0:lost,get:1:429 ")
    assert [(r.endpoint, r.probability, r.kind, r.status) for r in rules] == [
        ("upload", 0.5, "status", 503),
        ("*", 1.0, "reset", None),
        ("create", 0.0, "lost", None),
        ("get", 1.0, "status", 429),
    ]
    assert parse_fault_spec("") == []


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("upload:0.5", "ENDPOINT:PROBABILITY:KIND"),
        ("fetch:0.5:503", "unknown endpoint"),
        ("get:1.5:503", "between 0 and 1"),
        ("get:abc:503", "not a number"),
        ("get:0.5:302", "400-599"),
        ("get:0.5:boom", "400-599"),
    ],
)
def test_parse_fault_spec_errors(spec: str, fragment: str) -> None:
    """Bad specs raise FaultSpecError (a ValueError) naming the problem."""
    with pytest.raises(FaultSpecError, match=fragment):
        parse_fault_spec(spec)


def test_config_validates_faults() -> None:
    """EmulatorConfig rejects a bad fault spec at construction (the CLI's usage error)."""
    with pytest.raises(FaultSpecError):
        EmulatorConfig(faults="upload:2:503")


def test_admin_rejects_bad_spec(emulator: RunningEmulator) -> None:
    """POST /_emulator/faults with a bad spec answers 400 and keeps the old faults."""
    with pytest.raises(urllib.error.HTTPError) as info:
        emulator.set_faults("nonsense")
    assert info.value.code == 400
    assert raw_get(emulator, "/v1/models", **KEY).status_code == 200


def test_status_fault(emulator: RunningEmulator) -> None:
    """An injected 503 carries the real error body; other endpoints are untouched."""
    emulator.set_faults("get:1:503")
    client = sync_client(emulator)
    with pytest.raises(errors.ServerError) as info:
        client.models.get(model=MODEL)
    assert info.value.code == 503
    assert info.value.status == "UNAVAILABLE"
    assert [m.name for m in client.models.list()]
    assert emulator.state()["requests"]["get"]["count"] == 1


def test_429_fault_has_retry_after(emulator: RunningEmulator) -> None:
    """An injected 429 is RESOURCE_EXHAUSTED JSON with a Retry-After header."""
    emulator.set_faults("list:1:429")
    response = raw_get(emulator, "/v1/files", **KEY)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    client = sync_client(emulator)
    with pytest.raises(errors.ClientError) as info:
        client.files.list()
    assert info.value.code == 429


def test_upload_chunk_fault_ends_upload(emulator: RunningEmulator) -> None:
    """A status fault on a chunk is reported at once (no SDK chunk resends); nothing stored."""
    # A seed whose first draw spares the upload start and whose second hits the chunk.
    seed = next(s for s in range(1000) if _draws(s, 2)[0] >= 0.5 > _draws(s, 2)[1])
    emulator.set_faults("upload:0.5:500", seed=seed)
    client = sync_client(emulator)
    started = time.monotonic()
    with pytest.raises(errors.ServerError) as info:
        client.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    assert info.value.code == 500
    assert time.monotonic() - started < 0.9  # the SDK would sleep 1 s before a resend
    state = emulator.state()
    assert state["files"] == []
    assert state["requests"]["upload"]["count"] == 2


def test_reset_fault_sync(emulator: RunningEmulator) -> None:
    """`reset` drops the connection: the sync SDK raises a transport error, not an APIError."""
    emulator.set_faults("list:1:reset")
    client = sync_client(emulator, retry_options=no_retry())
    with pytest.raises(httpx2.TransportError):
        client.files.list()
    assert emulator.state()["requests"]["list"]["count"] == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", AIO_TRANSPORTS)
async def test_reset_fault_aio(emulator: RunningEmulator, transport: str) -> None:
    """`reset` before create: both async transports raise a connection error; nothing made."""
    emulator.set_faults("create:1:reset")
    client = aio_client(emulator, transport, retry_options=no_retry())
    try:
        with pytest.raises((aiohttp.ClientError, httpx2.TransportError)):
            await client.aio.batches.create(model=MODEL, src=inline_src())
    finally:
        await client.aio.aclose()
    state = emulator.state()
    assert state["batches"] == []
    assert state["requests"]["create"]["count"] == 1


def test_lost_create_still_creates(emulator: RunningEmulator) -> None:
    """`lost` on create: every call fails (503 or dropped) but every batch exists."""
    emulator.set_faults("create:1:lost", seed=3)
    client = sync_client(emulator, retry_options=no_retry())
    outcomes = set()
    for _ in range(6):
        with pytest.raises((errors.ServerError, httpx2.TransportError)) as info:
            client.batches.create(model=MODEL, src=inline_src())
        outcomes.add(type(info.value).__name__)
    assert "ServerError" in outcomes
    assert len(outcomes) == 2  # both flavours of a lost response occur
    assert len(emulator.state()["batches"]) == 6


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", AIO_TRANSPORTS)
async def test_lost_upload_stores_file(emulator: RunningEmulator, transport: str) -> None:
    """`lost` on upload hits the final chunk: the SDK fails, yet the file is stored."""
    emulator.set_faults("upload:1:lost", seed=1)
    client = aio_client(emulator, transport, retry_options=no_retry())
    try:
        with pytest.raises((errors.APIError, aiohttp.ClientError, httpx2.TransportError)):
            await client.aio.files.upload(
                file=io.BytesIO(b"payload"), config={"mime_type": "text/plain"}
            )
    finally:
        await client.aio.aclose()
    files = emulator.state()["files"]
    assert [f["sizeBytes"] for f in files] == [7]


def _draws(seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


def _pattern(emu: RunningEmulator, seed: int) -> list[bool]:
    emu.reset()
    emu.set_faults("get:0.5:503", seed=seed)
    return [raw_get(emu, f"/v1/models/{MODEL}", **KEY).status_code == 503 for _ in range(24)]


def test_fault_seed_repeatable(emulator: RunningEmulator) -> None:
    """The same seed replays the same fault sequence; another seed gives another one."""
    first = _pattern(emulator, 42)
    assert 0 < sum(first) < len(first)
    assert _pattern(emulator, 42) == first
    assert _pattern(emulator, 43) != first


@pytest.mark.asyncio
@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, latency_ms=300)])
async def test_latency_overlaps_and_counts(emulator: RunningEmulator) -> None:
    """Latency delays each request, concurrent requests overlap, maxInFlight sees them."""
    client = aio_client(emulator, "httpx")
    results = []

    async def get_model() -> None:
        results.append(await client.aio.models.get(model=MODEL))

    started = time.monotonic()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(get_model)
    finally:
        await client.aio.aclose()
    elapsed = time.monotonic() - started
    assert len(results) == 5
    assert 0.3 <= elapsed < 1.2
    requests = emulator.state()["requests"]
    assert requests["get"] == {"count": 5, "maxInFlight": 5, "inFlight": 0}
    assert requests["create"] == {"count": 0, "maxInFlight": 0, "inFlight": 0}


def test_counts_include_failures_and_reset(emulator: RunningEmulator) -> None:
    """Failed requests are counted; POST /_emulator/reset clears counters and resources."""
    client = sync_client(emulator)
    client.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    with pytest.raises(errors.ClientError):
        client.files.get(name="files/missing")
    with pytest.raises(errors.ClientError):
        client.batches.get(name="batches/missing")
    state = emulator.state()
    assert state["requests"]["get"]["count"] == 2
    assert state["requests"]["upload"]["count"] == 2
    emulator.reset()
    state = emulator.state()
    assert state["files"] == []
    assert all(
        v == {"count": 0, "maxInFlight": 0, "inFlight": 0} for v in state["requests"].values()
    )
