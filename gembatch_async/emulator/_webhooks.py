"""Dynamic webhooks: a job created with ``webhookConfig`` is announced to its URIs when
it ends, signed as the service signs them, with faults for the receiver's tests.

What the service is known to do (docs/fidelity.md has the rows):

- ``batch.webhookConfig`` {uris, user_metadata} on create, Gemini API only. Source:
  SDK 3.6.1 ``batches._CreateBatchJobConfig_to_mldev`` and ``types.WebhookConfig``
  (driven against a logging fake, it sends ``user_metadata`` in snake_case inside
  ``webhookConfig``; both spellings are accepted here). Pending webhooks are kept in
  memory only: a restarted emulator loses them, as the service may lose a delivery.
- Events ``batch.succeeded``, ``batch.failed``, ``batch.expired`` (no cancelled event
  is listed). Source: SDK 3.6.1 ``_gaos/types/webhooks/webhook.py``
  (``WebhookSubscribedEvent``).
- Standard Webhooks headers ``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``; a dynamic webhook's signature is an RS256 JWT checked against
  the service's JWKS (served here at ``/.well-known/jwks.json``, the path third-party
  guides name for Google's). At-least-once, retried with backoff (24 h at Google; a
  few tries here). Sources: blog.google "Reduce friction and latency for long-running
  jobs with Webhooks in Gemini API" (2026-05-04); hookdeck/webhook-skills
  gemini-webhooks verification.md and overview.md (body ``{type, version, timestamp,
  data: {id, ...}}``).

Unknown, chosen here and marked so: the JWT's claims (``aud`` = the URI, ``iat``,
``exp`` five minutes on; nothing binds the body), ``data.id`` as ``batches/ID``, and
``user_metadata`` at the body's top level.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

#: Wire state -> event type. Source: SDK 3.6.1 WebhookSubscribedEvent.
EVENTS = {
    "BATCH_STATE_SUCCEEDED": "batch.succeeded",
    "BATCH_STATE_FAILED": "batch.failed",
    "BATCH_STATE_EXPIRED": "batch.expired",
}
WEBHOOK_FAULTS = ("duplicate", "late", "lost", "bad-signature")
_TICK_SECONDS = 0.05
_TRIES = 4
_POST_TIMEOUT = 5.0
#: Straight to the URI: no proxy from the environment between the service and it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def parse_webhook_faults(spec: str) -> dict[str, float]:
    """``duplicate,late=SECONDS,lost,bad-signature`` (any subset) -> {kind: seconds}."""
    faults: dict[str, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        kind, _, value = item.partition("=")
        if kind not in WEBHOOK_FAULTS or (value and kind != "late"):
            raise ValueError(
                f"webhook fault {item!r}: use duplicate, late=SECONDS, lost or bad-signature"
            )
        try:
            faults[kind] = float(value) if value else 0.0
        except ValueError:
            raise ValueError(f"webhook fault {item!r}: late=SECONDS needs a number") from None
    return faults


@dataclasses.dataclass
class _Pending:
    uris: list[str]
    user_metadata: dict[str, Any] | None


class _Key:
    """An RSA key pair and its public JWK, under a key id."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


class WebhookSender:
    """Remembers which jobs asked for webhooks and delivers each job's end once
    (twice, late, never, or badly signed under faults)."""

    def __init__(self, faults: str = "") -> None:
        self.faults = parse_webhook_faults(faults)
        self._pending: dict[str, _Pending] = {}
        #: Every delivery attempt's outcome, for tests: (batch, uri, status or error).
        self.log: list[dict[str, Any]] = []

    # The keys are made when first needed: an RSA key takes ~0.1 CPU s, and most
    # emulators (every test's) never sign a webhook nor serve the key set.
    @functools.cached_property
    def _key(self) -> _Key:
        """Signs every delivery; the JWKS holds its public half."""
        return _Key()

    @functools.cached_property
    def _stranger(self) -> _Key:
        """Signs the bad-signature fault: a key the JWKS does not hold, same kid."""
        stranger = _Key()
        stranger.kid = self._key.kid
        return stranger

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._key.jwk]}

    def expect(self, batch_name: str, config: dict[str, Any]) -> None:
        """A created job's ``webhookConfig`` (either spelling)."""
        uris = config.get("uris")
        metadata = config.get("user_metadata", config.get("userMetadata"))
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise ValueError("webhookConfig.uris must be a list of URIs")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError("webhookConfig.user_metadata must be an object")
        if uris:
            self._pending[batch_name] = _Pending(list(uris), metadata)

    def reset(self) -> None:
        self._pending.clear()
        self.log.clear()

    async def run(self, state_of: Callable[[str], str | None]) -> None:
        """Until cancelled: each tick, deliver for every job that has ended.
        ``state_of(name)`` is the job's wire state, or None once it is gone."""
        async with anyio.create_task_group() as tg:
            while True:
                for name in list(self._pending):
                    state = state_of(name)
                    if state is None or state == "BATCH_STATE_CANCELLED":  # no event listed
                        self._pending.pop(name, None)
                    elif state in EVENTS:
                        tg.start_soon(self._announce, name, state, self._pending.pop(name))
                await anyio.sleep(_TICK_SECONDS)

    async def _announce(self, name: str, state: str, pending: _Pending) -> None:
        if "lost" in self.faults:
            self.log.append({"batch": name, "outcome": "lost"})
            return
        await anyio.sleep(self.faults.get("late", 0.0))
        webhook_id = f"msg_{uuid.uuid4().hex}"
        body = _body(name, state, pending.user_metadata)
        times = 2 if "duplicate" in self.faults else 1
        for uri in pending.uris:
            for _ in range(times):
                await self._deliver(name, uri, webhook_id, body)

    async def _deliver(self, name: str, uri: str, webhook_id: str, body: bytes) -> None:
        """POST with retries and backoff (the service retries for 24 hours)."""
        delay = 0.2
        for _ in range(_TRIES):
            stamp = int(time.time())
            signer = self._stranger if "bad-signature" in self.faults else self._key
            token = signer.sign({"aud": uri, "iat": stamp, "exp": stamp + 300})
            headers = {
                "content-type": "application/json",
                "webhook-id": webhook_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": token,
            }
            outcome = await anyio.to_thread.run_sync(_post, uri, body, headers)
            self.log.append({"batch": name, "uri": uri, "id": webhook_id, "outcome": outcome})
            if isinstance(outcome, int) and 200 <= outcome < 300:
                return
            await anyio.sleep(delay)
            delay *= 2


def _body(name: str, state: str, metadata: dict[str, Any] | None) -> bytes:
    event: dict[str, Any] = {
        "type": EVENTS[state],
        "version": "v1",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "data": {"id": name},
    }
    if metadata is not None:
        event["user_metadata"] = metadata
    return json.dumps(event).encode()


def _post(uri: str, body: bytes, headers: dict[str, str]) -> int | str:
    """The receiver's status, or why there was none."""
    request = urllib.request.Request(uri, data=body, headers=headers, method="POST")
    try:
        with _DIRECT.open(request, timeout=_POST_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return f"error: {exc}"
