"""The SDK's private names we read (``_backends/_sdk.py``): there on this release, and a
public fallback that still reads the job when a release drops them."""

from __future__ import annotations

import io

import pytest
from google import genai
from google.genai import types

from gembatch_async._backends import _sdk
from gembatch_async._backends._genai import NO_SDK_RETRIES, GeminiApi
from gembatch_async.emulator import RunningEmulator

from ..helpers import TEST_API_KEY


def emulator_client(emulator: RunningEmulator) -> genai.Client:
    options = types.HttpOptions(base_url=emulator.base_url, retry_options=NO_SDK_RETRIES)
    return genai.Client(api_key=TEST_API_KEY, http_options=options)


async def created_batch(client: genai.Client, requests: int) -> str:
    data = b'{"key": "a", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n' * requests
    uploaded = await client.aio.files.upload(
        file=io.BytesIO(data), config={"mime_type": "application/jsonl"}
    )
    created = await client.aio.batches.create(
        model="gemini-3.1-flash-lite", src=uploaded.name or ""
    )
    return created.name or ""


def test_this_sdk_release_has_every_private_name_we_read() -> None:
    """Fails on a google-genai release that moved one: the tool still works there (the
    fallbacks), but status loses its counts until _sdk.py follows the SDK."""
    client = genai.Client(
        api_key=TEST_API_KEY, http_options=types.HttpOptions(retry_options=NO_SDK_RETRIES)
    )
    assert _sdk.can_parse_batches()
    assert _sdk.raw_get(client) is not None
    options = _sdk.http_options_of(client)
    assert options is not None
    assert options.retry_options == NO_SDK_RETRIES
    assert _sdk.api_key_of(client) == TEST_API_KEY


@pytest.mark.asyncio
async def test_the_public_fallback_reads_the_job_with_its_counts_unknown(
    emulator: RunningEmulator,
) -> None:
    """What a release without the private names gets: the job as batches.get reads it,
    its counts unknown (None), never made up; the seam itself has them."""
    client = emulator_client(emulator)
    api = GeminiApi(client)
    name = await created_batch(client, requests=2)
    fallback = await api.public_batch_detail(name)
    seam = await api.get_batch_detail(name)
    assert fallback.job.name == name
    assert fallback.job.state == types.JobState.JOB_STATE_PENDING
    assert fallback.stats is None
    assert fallback.error is None
    assert seam.stats is not None
    assert seam.stats.requests == 2
    await client.aio.aclose()
