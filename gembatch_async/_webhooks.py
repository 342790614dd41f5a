"""Told when done: receive the Gemini API's webhook deliveries, verify them, and hand
the job each names to the watcher as a hint.

A delivery is only ever a HINT. The watcher answers one by asking the service for the
job's state (a GET) and downloads only what the service confirms, exactly as after a
poll; polling stays on at a long interval. So a forged delivery costs at most one GET,
and a lost one costs at most one fallback interval: neither can lose or corrupt a
result. Verification keeps the GETs to deliveries from the service.

What is known of the wire (cited beside the code that relies on it):

- The Gemini API sends Standard Webhooks: headers ``webhook-id``, ``webhook-timestamp``
  (Unix seconds) and ``webhook-signature``; at-least-once, retried for 24 hours.
  Source: Google's launch post "Reduce friction and latency for long-running jobs with
  Webhooks in Gemini API" (blog.google, 2026-05-04); ai.google.dev/gemini-api/docs/webhooks.
- Static (project) webhooks sign ``v1,<base64 HMAC-SHA256>`` over
  ``id.timestamp.body`` with a ``whsec_`` secret; Google's cookbook verifies them with
  the ``standardwebhooks`` library. Source: google-gemini/cookbook
  quickstarts/Webhooks.ipynb and Webhooks_cloud_run.ipynb.
- Dynamic webhooks (``webhook_config`` on ``batches.create``, Gemini API only) put an
  RS256 JWT in ``webhook-signature``, verified against Google's JWKS, and echo
  ``user_metadata``. Source: SDK 3.6.1 ``types.WebhookConfig`` and
  ``batches._CreateBatchJobConfig_to_mldev`` / ``_to_vertex`` (Vertex raises);
  hookdeck.com "How to secure and verify Gemini webhooks" and hookdeck/webhook-skills
  skills/gemini-webhooks/references/verification.md (third party: the JWKS URL below,
  ``kid`` lookup, ``aud`` = the endpoint URL).

Not known (the tool is safe under each answer, see the functions): whether the JWT
binds the body, its ``iss``, whether ``aud`` is always set, where ``user_metadata``
sits in the body, and whether ``data.id`` is ``batches/ID`` or ``ID``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import jwt
import standardwebhooks
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ._errors import GembatchError, UsageError
from ._identity import token_of
from ._journal import Journal, batch_name_of

#: Google's key set for dynamic webhooks. Source (third party, unconfirmed by Google's
#: pages we could read): hookdeck/webhook-skills gemini-webhooks verification.md.
#: Point ``jwks_url`` elsewhere (the emulator serves its own) when it differs.
DEFAULT_JWKS_URL = "https://generativelanguage.googleapis.com/.well-known/jwks.json"
#: Standard Webhooks' replay window, which the Gemini guides repeat ("reject if > 5
#: minutes old"). Source: standardwebhooks 1.x (its verify uses 5 minutes).
TOLERANCE_SECONDS = 300.0
#: The key of our user_metadata: the token that ends the job's display name, which
#: names one journal line (see ``_identity.token_of``).
METADATA_KEY = "gembatch_token"
#: A delivery is a thin notice (pointers, not results): anything larger is not one.
MAX_BODY_BYTES = 1 << 20
#: Delivery ids remembered to refuse replays; older than the window they cannot pass
#: the timestamp check anyway.
_SEEN_MAX = 10_000


class WebhookRefused(GembatchError):
    """A delivery that is not shown to come from the service (answered 4xx/5xx)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class WebhookSettings:
    """Ask for a dynamic webhook on each job, and where and how to receive it."""

    #: The public URL the service posts to (given as ``webhook_config.uris``).
    url: str
    #: Where ``run`` serves the receiver (a tunnel or proxy forwards ``url`` here).
    listen_host: str = "127.0.0.1"
    listen_port: int = 8788
    jwks_url: str = DEFAULT_JWKS_URL
    #: A static (project) webhook's ``whsec_`` signing secret, if one posts here too
    #: (kept out of repr: secrets never appear in output).
    secret: str | None = field(default=None, repr=False)
    tolerance_seconds: float = TOLERANCE_SECONDS

    def __post_init__(self) -> None:
        if not self.url.startswith(("https://", "http://")):
            raise UsageError(f"--webhook-url must be an http(s) URL, got {self.url!r}")
        if not 0 <= self.listen_port <= 65535:
            raise UsageError(f"the webhook port must be 0 to 65535, got {self.listen_port}")


def dynamic_webhook(url: str | None, token: str) -> dict[str, Any] | None:
    """``webhook_config`` for one job: our URL, and the token that maps the delivery
    back to its journal line (the service echoes user_metadata). None without a URL."""
    if url is None:
        return None
    return {"uris": [url], "user_metadata": {METADATA_KEY: token}}


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: what it says happened, and to which job."""

    webhook_id: str
    type: str
    batch_name: str | None
    token: str | None


class Verifier:
    """Checks one delivery: headers, timestamp window, then the signature (HMAC when it
    reads ``v1,...`` and a secret is set, else the dynamic webhook's JWT)."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        # PyJWKClient caches the key set and refetches when a kid is unknown (rotation).
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300)

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> Delivery:
        """The delivery, or WebhookRefused. Blocking (may fetch the key set)."""
        webhook_id, stamp, signature = _standard_headers(headers)
        self._check_fresh(stamp, now)
        if _is_hmac(signature):
            self._check_hmac(body, webhook_id, stamp, signature)
        else:
            self._check_jwt(signature, now)
        return _delivery(webhook_id, body)

    def _check_fresh(self, stamp: str, now: float) -> None:
        try:
            sent = float(stamp)
        except ValueError:
            raise WebhookRefused(400, "webhook-timestamp is not a number") from None
        if abs(now - sent) > self.settings.tolerance_seconds:
            raise WebhookRefused(401, "webhook-timestamp is outside the tolerance window")

    def _check_hmac(self, body: bytes, webhook_id: str, stamp: str, signature: str) -> None:
        if not self.settings.secret:
            raise WebhookRefused(401, "an HMAC signature, but no webhook secret is set")
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": stamp,
            "webhook-signature": signature,
        }
        try:
            hook = standardwebhooks.Webhook(self.settings.secret)
            hook.verify(body, headers, json_parse=False)
        except (standardwebhooks.WebhookVerificationError, ValueError) as exc:
            # ValueError: an entry without a comma, bad base64 or a non-UTF-8 body.
            raise WebhookRefused(401, f"bad signature ({exc})") from None

    def _check_jwt(self, token: str, now: float) -> None:
        """RS256 by a key of the configured key set, unexpired. ``aud``, when the token
        has one, must name our URL; a token without one passes (unknown whether the
        service always sets it). Whether the token binds the body is unknown too: a
        replayed token on a forged body can at most make the watcher GET a job."""
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise WebhookRefused(503, f"the webhook key set cannot be read: {exc}") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise WebhookRefused(401, f"bad signature ({exc})") from None
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                options={"verify_aud": False},
                leeway=self.settings.tolerance_seconds,
            )
        except jwt.InvalidTokenError as exc:
            raise WebhookRefused(401, f"bad signature ({exc})") from None
        audience = claims.get("aud")
        if audience is not None and self.settings.url not in _as_list(audience):
            raise WebhookRefused(401, "the signature is for another endpoint (aud)")


def _standard_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    lowered = {k.lower(): v for k, v in headers.items()}
    found = [lowered.get(k, "") for k in ("webhook-id", "webhook-timestamp", "webhook-signature")]
    if not all(found):
        raise WebhookRefused(400, "missing webhook-id, webhook-timestamp or webhook-signature")
    return found[0], found[1], found[2]


def _is_hmac(signature: str) -> bool:
    """Standard Webhooks' symmetric form: space-separated ``v1,<base64>`` entries."""
    return signature.startswith("v1,")


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else [value]


def _delivery(webhook_id: str, body: bytes) -> Delivery:
    """What a verified body says. Both plausible places of user_metadata are read (top
    level, or inside ``data``), and ``data.id`` with or without ``batches/``."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRefused(400, "the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookRefused(400, "the body is not a JSON object")
    raw_data = event.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    metadata = event.get("user_metadata") or data.get("user_metadata") or {}
    token = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    batch_id = data.get("id") or data.get("name")
    batch_name = None
    if isinstance(batch_id, str) and batch_id:
        batch_name = batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"
    return Delivery(
        webhook_id,
        str(event.get("type", "")),
        batch_name,
        token if isinstance(token, str) else None,
    )


class _Seen:
    """Delivery ids already acted on: the service delivers at least once, and a
    captured delivery may be sent again inside the window."""

    def __init__(self, limit: int = _SEEN_MAX) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def first_time(self, webhook_id: str) -> bool:
        if webhook_id in self._ids:
            return False
        self._ids[webhook_id] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)
        return True


class Nudges:
    """The watcher's inbox: identities a delivery named, and a wake-up for it."""

    def __init__(self) -> None:
        self._wanted: set[str] = set()
        self._arrived = anyio.Event()

    def tell(self, identity: str) -> None:
        self._wanted.add(identity)
        self._arrived.set()

    async def wait(self) -> None:
        await self._arrived.wait()

    def take(self) -> set[str]:
        """The identities named since the last take (and re-arm the wake-up)."""
        wanted, self._wanted = self._wanted, set()
        self._arrived = anyio.Event()
        return wanted


#: Maps (token, batch name) to the journal identity of the job, or None if not ours.
JobIndex = Callable[[str | None, str | None], str | None]


def webhook_app(
    settings: WebhookSettings,
    index: JobIndex,
    on_job: Callable[[str], None],
    *,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The ASGI receiver: POST to any path. 2xx: taken (acted on, a duplicate, or not a
    job of ours: the service need not retry); 400/401/413: refused, nothing changes;
    503: the key set could not be read (the service retries)."""
    verifier = Verifier(settings)
    seen = _Seen()

    async def receive(request: Request) -> JSONResponse:
        body = await _body_within(request, MAX_BODY_BYTES)
        if body is None:
            return JSONResponse({"error": "too large"}, status_code=413)
        try:
            delivery = await anyio.to_thread.run_sync(
                verifier.verify, body, dict(request.headers), clock()
            )
        except WebhookRefused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status)
        if not seen.first_time(delivery.webhook_id):
            return JSONResponse({"status": "duplicate"})
        identity = index(delivery.token, delivery.batch_name)
        if identity is None:
            return JSONResponse({"status": "ignored"})
        on_job(identity)
        return JSONResponse({"status": "accepted"})

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])


class _QuietServer(uvicorn.Server):
    """uvicorn, leaving signals to the CLI (its stop handling ends the run)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def journal_index(journal: Journal) -> JobIndex:
    """Which input of the journal a delivery names: by the token our user_metadata
    carries, else by the batch name (a static webhook's delivery has no metadata)."""

    def identity_for(token: str | None, batch_name: str | None) -> str | None:
        for identity, line in journal.refresh().latest.items():
            if token is not None and token_of(line.get("display_name")) == token:
                return identity
            if batch_name is not None and batch_name_of(line) == batch_name:
                return identity
        return None

    return identity_for


@contextlib.asynccontextmanager
async def receiving(
    settings: WebhookSettings | None, journal: Journal
) -> AsyncIterator[Nudges | None]:
    """While the block runs, serve the receiver for ``run`` (nothing without settings);
    yields the watcher's inbox."""
    if settings is None:
        yield None
        return
    nudges = Nudges()
    app = webhook_app(settings, journal_index(journal), nudges.tell)
    async with serve_receiver(app, settings.listen_host, settings.listen_port):
        yield nudges


async def _body_within(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` (never held whole)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def serve_receiver(app: Starlette, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``app`` in this event loop while the block runs; yields the bound port."""
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        raise UsageError(
            f"cannot listen for webhooks on {host}:{port}: {exc.strerror or exc}"
        ) from None
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=2,  # the run's end is not held by a slow sender
    )
    server = _QuietServer(config)
    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: server.serve(sockets=[sock]))
            try:
                yield int(sock.getsockname()[1])
            finally:
                server.should_exit = True
