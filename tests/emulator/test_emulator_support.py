"""Helpers shared by the emulator tests (no tests here): SDK clients and small polls."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from google import genai
from google.genai import types

from gembatch_async.emulator import RunningEmulator
from tests.helpers import sdk_httpx as httpx2

API_KEY = "test-key-7d1c0a5e"
# google-genai subclasses aiohttp.ClientSession, which aiohttp deprecates; the project's
# filterwarnings=error would turn that SDK-internal warning into a test failure.
AIOHTTP_SUBCLASS_WARNING = "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
# The SDK hands aiohttp each 8 MiB chunk as raw bytes, which aiohttp warns about.
AIOHTTP_LARGE_BODY_WARNING = "ignore:Sending a large body directly:ResourceWarning"
AIO_TRANSPORTS = ("aiohttp", "httpx")
MODEL = "gemini-3.5-flash"


def sync_client(emu: RunningEmulator, *, api_key: str = API_KEY, **options: Any) -> genai.Client:
    """A real SDK client pointed at the emulator (sync calls go through httpx2)."""
    http_options = types.HttpOptions(base_url=emu.base_url, **options)
    return genai.Client(api_key=api_key, http_options=http_options)


def aio_client(emu: RunningEmulator, transport: str, **options: Any) -> genai.Client:
    """A client whose `.aio` side uses aiohttp or httpx2, as the SDK picks them."""
    if transport == "httpx":
        # A custom transport makes the SDK choose httpx even though aiohttp is importable.
        options["async_client_args"] = {"transport": httpx2.AsyncHTTPTransport()}
    return sync_client(emu, **options)


def no_retry() -> types.HttpRetryOptions:
    """Retry options with one attempt: also disables aiohttp's implicit re-send."""
    return types.HttpRetryOptions(attempts=1)


def inline_src(count: int = 1) -> list[types.InlinedRequest]:
    """Inlined batch requests with metadata keys `k{i}`."""
    return [
        types.InlinedRequest(
            contents=[types.Content(parts=[types.Part(text=f"q{i}")], role="user")],
            metadata={"key": f"k{i}"},
        )
        for i in range(count)
    ]


def jsonl_lines(n: int, prefix: str = "req") -> bytes:
    """n valid batch input lines with keys `{prefix}-{i}`."""
    lines = [
        json.dumps(
            {"key": f"{prefix}-{i}", "request": {"contents": [{"parts": [{"text": f"q{i}"}]}]}}
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def write(tmp_path: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    """Write bytes to a temp file and return its path."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def raw_get(emu: RunningEmulator, path: str, **headers: str) -> Any:
    """A plain HTTP GET (for what the SDK hides: headers, raw bodies, missing keys)."""
    with httpx2.Client(base_url=emu.base_url, timeout=30) as http:
        response: Any = http.get(path, headers=headers)
        return response


def wait_state(
    client: genai.Client, emu: RunningEmulator, name: str, wanted: str, step: float = 0.1
) -> Any:
    """Read the job until it reaches `wanted` (a JobState name); between reads the
    emulator's clock moves ``step`` seconds forward instead of the test sleeping."""
    for _ in range(int(120 / step)):
        job = client.batches.get(name=name)
        if job.state is not None and job.state.name == wanted:
            return job
        emu.advance_clock(step)
    raise AssertionError(f"{name} stuck in {job.state} after 120 s of emulator time")


def state_file(emu: RunningEmulator, name: str) -> dict[str, Any]:
    """One file entry from /_emulator/state."""
    files: list[dict[str, Any]] = emu.state()["files"]
    return next(f for f in files if f["name"] == name)
