"""The one seam: every SDK and transport error becomes one of ours, with no secret in it."""

from __future__ import annotations

import inspect

import aiohttp
import pytest
from google.genai import errors as genai_errors

from gembatch_async import (
    AlreadyExistsApiError,
    AmbiguousApiError,
    ApiError,
    NotFoundApiError,
    PermanentApiError,
    TransientApiError,
)
from gembatch_async._backends._genai import translate_errors
from tests.helpers import sdk_httpx as httpx2

SECRET = "fake-secret-key-0123456789"


def translated(error: BaseException, *, missing_is_403: bool = False) -> ApiError:
    with (
        pytest.raises(ApiError) as caught,
        translate_errors(missing_is_403=missing_is_403, secret=SECRET),
    ):
        raise error
    assert caught.value.__cause__ is error
    return caught.value


def api_error(code: int, status: str, message: str = "boom") -> genai_errors.APIError:
    body = {"error": {"code": code, "status": status, "message": message}}
    cls = genai_errors.ClientError if code < 500 else genai_errors.ServerError
    return cls(code, body)


def test_every_sdk_api_error_class_is_mapped() -> None:
    """Each APIError subclass the SDK defines is translated (none slips through)."""
    classes = [
        cls
        for _, cls in inspect.getmembers(genai_errors, inspect.isclass)
        if issubclass(cls, genai_errors.APIError)
    ]
    assert {c.__name__ for c in classes} >= {"APIError", "ClientError", "ServerError"}
    for cls in classes:
        assert isinstance(translated(cls(418, {"error": {"message": "x"}})), ApiError)


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        pytest.param(400, "INVALID_ARGUMENT", PermanentApiError, id="400"),
        pytest.param(401, "UNAUTHENTICATED", PermanentApiError, id="401"),
        pytest.param(404, "NOT_FOUND", NotFoundApiError, id="404"),
        pytest.param(409, "ALREADY_EXISTS", AlreadyExistsApiError, id="409"),
        pytest.param(408, "DEADLINE_EXCEEDED", TransientApiError, id="408"),
        pytest.param(429, "RESOURCE_EXHAUSTED", TransientApiError, id="429"),
        pytest.param(500, "INTERNAL", AmbiguousApiError, id="500"),
        pytest.param(503, "UNAVAILABLE", AmbiguousApiError, id="503"),
        pytest.param(504, "DEADLINE_EXCEEDED", AmbiguousApiError, id="504"),
    ],
)
def test_status_codes_map_to_the_right_class(
    code: int, status: str, expected: type[ApiError]
) -> None:
    """Transient vs permanent vs ambiguous follows the HTTP status."""
    error = translated(api_error(code, status))
    assert type(error) is expected
    assert error.code == code
    assert error.status == status


def test_403_means_missing_only_for_files() -> None:
    """The Files API's 403 for a missing file is "not found"; elsewhere it is permanent."""
    assert (
        type(translated(api_error(403, "PERMISSION_DENIED"), missing_is_403=True))
        is NotFoundApiError
    )
    assert type(translated(api_error(403, "PERMISSION_DENIED"))) is PermanentApiError


def test_retry_delay_read_from_body() -> None:
    """RetryInfo.retryDelay in a 429 body becomes retry_after."""
    body = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "quota",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}],
        }
    }
    assert translated(genai_errors.ClientError(429, body)).retry_after == 7.0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(httpx2.ReadTimeout("slow"), AmbiguousApiError, id="httpx-timeout"),
        pytest.param(httpx2.RemoteProtocolError("dropped"), AmbiguousApiError, id="httpx-dropped"),
        pytest.param(httpx2.ConnectError("refused"), TransientApiError, id="httpx-connect"),
        pytest.param(aiohttp.ServerDisconnectedError(), AmbiguousApiError, id="aiohttp-dropped"),
        pytest.param(aiohttp.ClientPayloadError("cut"), AmbiguousApiError, id="aiohttp-payload"),
        pytest.param(ConnectionResetError(104, "reset"), AmbiguousApiError, id="reset"),
        pytest.param(TimeoutError(), AmbiguousApiError, id="timeout"),
    ],
)
def test_transport_errors_are_retryable(error: BaseException, expected: type[ApiError]) -> None:
    """A dropped or timed-out request is transient, and ambiguous unless it never connected."""
    assert type(translated(error)) is expected


@pytest.mark.promise("key-never-shown")
def test_secret_is_redacted_from_messages() -> None:
    """A message that somehow carries the key is shown without it."""
    error = translated(api_error(400, "INVALID_ARGUMENT", f"bad key {SECRET}"))
    assert SECRET not in str(error)
    assert "[redacted]" in str(error)
