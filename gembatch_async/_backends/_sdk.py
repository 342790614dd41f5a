"""The google-genai names we use that are not its public API, each looked up with a fallback.

The SDK promises nothing about these across releases, so none is imported by name at
module level: each is looked up when needed, and a release without it gets an answer
that is safe, if poorer:

- ``BaseApiClient.async_request`` (reached as ``client.aio._api_client``) and
  ``batches._BatchJob_from_mldev`` with ``BatchJob._from_response``: one raw GET of a
  batch through the client's own transport, parsed as ``AsyncBatches.get`` parses it,
  because the public ``batches.get`` drops the Gemini API's ``batchStats`` and
  ``error`` (googleapis/python-genai#1323; google/genai/batches.py ``_BatchJob_from_mldev``
  copies neither). Without them: the public ``batches.get``, and the counts and the
  error are unknown (None), which status shows as such.
- ``client._api_client._http_options`` (the caller's retry options, to refuse a client
  whose SDK retries could create a batch twice). Unreadable: the client is refused,
  since its retries cannot be checked.
- ``client._api_client.api_key`` (the key to redact from messages). Unreadable: the key
  the SDK itself would take from the environment is redacted instead.

Checked on google-genai 3.0.0 and 3.6.1 (``nox -s sdk_oldest sdk_newest``);
tests/backends/test_sdk_seam.py fails when a release moves one of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google import genai
from google.genai import batches as sdk_batches
from google.genai import types

#: One raw GET: a path under the API's base URL -> the response body (None: empty).
RawGet = Callable[[str], Awaitable[str | None]]


def raw_get(client: genai.Client) -> RawGet | None:
    """The client's own transport for one raw GET (its auth, base URL, timeout and
    retry options apply), or None when this SDK release has none we know."""
    request = getattr(getattr(client.aio, "_api_client", None), "async_request", None)
    if not callable(request) or not can_parse_batches():
        return None

    async def get(path: str) -> str | None:
        response = await request("get", path, {}, None)
        body = getattr(response, "body", None)
        return body if isinstance(body, str) and body else None

    return get


def can_parse_batches() -> bool:
    """Whether this release has the converter ``AsyncBatches.get`` uses for the Gemini API."""
    return callable(getattr(sdk_batches, "_BatchJob_from_mldev", None)) and callable(
        getattr(types.BatchJob, "_from_response", None)
    )


def batch_job_from_raw(raw: dict[str, Any]) -> types.BatchJob:
    """A raw Gemini API batch operation as ``AsyncBatches.get`` parses it (only called
    after :func:`raw_get` found the converter)."""
    converted = sdk_batches._BatchJob_from_mldev(raw)
    job = types.BatchJob._from_response(response=converted, kwargs={})
    assert isinstance(job, types.BatchJob)
    return job


def http_options_of(client: genai.Client) -> types.HttpOptions | None:
    """The options a client was built with, or None when this release hides them."""
    options = getattr(getattr(client, "_api_client", None), "_http_options", None)
    return options if isinstance(options, types.HttpOptions) else None


def api_key_of(client: genai.Client) -> str | None:
    """The API key a client sends, or None when this release hides it."""
    key = getattr(getattr(client, "_api_client", None), "api_key", None)
    return key if isinstance(key, str) else None
