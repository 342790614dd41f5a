"""What every route's answer is made of: JSON bodies in and out, pages with keyset
tokens, RFC 3339 times (the Gemini and the Vertex routes share them)."""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse

from gembatch_async.emulator._errors import ApiError

T = TypeVar("T")


def rfc3339(epoch: float) -> str:
    """RFC 3339 UTC timestamp with microseconds and a `Z`, as Google APIs send."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, status_code=200)


def _page(request: Request, default: int, maximum: int) -> tuple[str | None, int]:
    """(pageToken or None, page size) from the query, with the service's default and cap."""
    raw_size = request.query_params.get("pageSize") or request.query_params.get("page_size")
    try:
        size = int(raw_size) if raw_size else default
    except ValueError:
        raise ApiError(400, f"Invalid value for pageSize: {raw_size!r}") from None
    size = default if size <= 0 else min(size, maximum)
    token = request.query_params.get("pageToken") or request.query_params.get("page_token")
    return token or None, size


SortKey = tuple[float, str]


def _encode_token(key: SortKey) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_token(token: str) -> SortKey:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return float(raw[0]), str(raw[1])
    except (ValueError, TypeError, IndexError, KeyError):
        raise ApiError(400, "Invalid page token.") from None


def _keyset_page(
    records: list[T], sort_key: Callable[[T], SortKey], token: str | None, size: int
) -> tuple[list[T], str | None]:
    """One page plus the next token. The token names the last item seen (not an offset),
    so concurrent creates and deletes never make a pager skip or repeat an item."""
    ordered = sorted(records, key=sort_key)
    if token is not None:
        after = _decode_token(token)
        ordered = [r for r in ordered if sort_key(r) > after]
    chunk = ordered[:size]
    more = len(ordered) > size
    # Never an empty page with a token: the SDK pager would raise IndexError.
    return chunk, (_encode_token(sort_key(chunk[-1])) if chunk and more else None)


def _page_body(items: list[Any], next_token: str | None, key: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if items:
        body[key] = items
    if next_token:
        body["nextPageToken"] = next_token
    return body


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "Invalid JSON payload received.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Invalid JSON payload received: expected an object.")
    return data
