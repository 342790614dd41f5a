"""The webhook receiver over real HTTP: it verifies, refuses what it cannot verify
(changing nothing), dedupes by webhook-id, and names only jobs of the journal."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import jwt
import pytest
import standardwebhooks
from cryptography.hazmat.primitives.asymmetric import rsa

from gembatch_async._webhooks import (
    METADATA_KEY,
    WebhookSettings,
    serve_receiver,
    webhook_app,
)
from gembatch_async.emulator import RunningEmulator

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # Standard Webhooks' example form
TOKEN = "gba-token-1"
IDENTITY = "in.jsonl@identity"


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def _event(token: str | None = TOKEN, batch: str = "batches/abc") -> bytes:
    event: dict[str, Any] = {"type": "batch.succeeded", "version": "v1", "data": {"id": batch}}
    if token is not None:
        event["user_metadata"] = {METADATA_KEY: token}
    return json.dumps(event).encode()


def _hmac_headers(body: bytes, webhook_id: str, sent: float | None = None) -> dict[str, str]:
    stamp = datetime.fromtimestamp(sent or time.time(), tz=timezone.utc)
    signature = standardwebhooks.Webhook(SECRET).sign(webhook_id, stamp, body.decode())
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signature,
    }


def _exchange(
    settings: WebhookSettings, posts: list[tuple[bytes, dict[str, str]]]
) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Serve the receiver, send ``posts`` in order; the answers and the jobs it named."""
    named: list[str] = []

    def index(token: str | None, batch: str | None) -> str | None:
        return IDENTITY if token == TOKEN or batch == "batches/ours" else None

    async def main() -> list[tuple[int, dict[str, Any]]]:
        app = webhook_app(settings, index, named.append)
        async with serve_receiver(app, "127.0.0.1", 0) as port:
            url = f"http://127.0.0.1:{port}/hook"
            return [await anyio.to_thread.run_sync(_post, url, b, h) for b, h in posts]

    return anyio.run(main), named


def _settings(**extra: Any) -> WebhookSettings:
    return WebhookSettings(url="http://127.0.0.1/hook", secret=SECRET, **extra)


def test_a_signed_delivery_names_its_journal_job() -> None:
    body = _event()
    answers, named = _exchange(_settings(), [(body, _hmac_headers(body, "msg_1"))])
    assert answers == [(200, {"status": "accepted"})]
    assert named == [IDENTITY]


@pytest.mark.parametrize(
    "forge",
    ["tampered body", "wrong secret", "stale", "no signature", "garbage signature"],
)
@pytest.mark.promise("webhook-only-a-hint")
def test_a_delivery_that_does_not_verify_is_refused_and_changes_nothing(forge: str) -> None:
    body = _event()
    headers = _hmac_headers(body, "msg_1")
    if forge == "tampered body":
        body = _event(batch="batches/other")
    elif forge == "wrong secret":
        other = standardwebhooks.Webhook("whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLi4uLi4u")
        stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=timezone.utc)
        headers["webhook-signature"] = other.sign("msg_1", stamp, body.decode())
    elif forge == "stale":  # inside standardwebhooks' 5 minutes, outside ours
        headers = _hmac_headers(body, "msg_1", sent=time.time() - 60)
    elif forge == "no signature":
        del headers["webhook-signature"]
    else:
        headers["webhook-signature"] = "v1,not base64!"
    answers, named = _exchange(_settings(tolerance_seconds=10), [(body, headers)])
    assert answers[0][0] in (400, 401), answers
    assert named == [], "a refused delivery names no job"


def test_a_duplicate_delivery_is_taken_once() -> None:
    body = _event()
    headers = _hmac_headers(body, "msg_dup")
    answers, named = _exchange(_settings(), [(body, headers), (body, headers)])
    assert [a[1]["status"] for a in answers] == ["accepted", "duplicate"]
    assert named == [IDENTITY]


def test_a_delivery_for_a_job_not_in_the_journal_is_taken_and_ignored() -> None:
    body = _event(token=None, batch="batches/not-ours")
    answers, named = _exchange(_settings(), [(body, _hmac_headers(body, "msg_2"))])
    assert answers == [(200, {"status": "ignored"})]
    assert named == []


def test_a_static_webhook_without_metadata_maps_by_batch_name() -> None:
    body = _event(token=None, batch="ours")  # data.id without "batches/": both are read
    answers, named = _exchange(_settings(), [(body, _hmac_headers(body, "msg_3"))])
    assert answers == [(200, {"status": "accepted"})]
    assert named == [IDENTITY]


def test_a_jwt_from_a_key_outside_the_key_set_is_refused(emulator: RunningEmulator) -> None:
    """The dynamic form: an RS256 JWT whose key the (emulator's) JWKS does not hold."""
    now = int(time.time())
    url = "http://127.0.0.1/hook"
    token = _jwt(now)
    body = _event()
    headers = {"webhook-id": "msg_4", "webhook-timestamp": str(now), "webhook-signature": token}
    settings = WebhookSettings(url=url, jwks_url=f"{emulator.base_url}/.well-known/jwks.json")
    answers, named = _exchange(settings, [(body, headers)])
    assert answers[0][0] == 401
    assert named == []


def test_an_unreadable_key_set_asks_for_a_retry() -> None:
    """503, so the service delivers again; nothing is acted on."""
    now = int(time.time())
    body = _event()
    headers = {"webhook-id": "m", "webhook-timestamp": str(now), "webhook-signature": _jwt(now)}
    settings = WebhookSettings(url="http://127.0.0.1/hook", jwks_url="http://127.0.0.1:9/jwks")
    answers, named = _exchange(settings, [(body, headers)])
    assert answers[0][0] == 503
    assert named == []


def _jwt(now: int) -> str:
    """A well-formed RS256 JWT from a key no key set holds."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"aud": "http://127.0.0.1/hook", "iat": now, "exp": now + 300}
    return jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": uuid.uuid4().hex})


def test_a_body_larger_than_a_notice_is_refused_unread() -> None:
    body = b'{"pad": "' + b"x" * (2 << 20) + b'"}'
    answers, named = _exchange(_settings(), [(body, _hmac_headers(body, "msg_big"))])
    assert answers == [(413, {"error": "too large"})]
    assert named == []


class _KeySet:
    """One RSA key, its JWKS served over HTTP on 127.0.0.1 (a stand-in for Google's)."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        document = json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
def key_set() -> Iterator[_KeySet]:
    keys = _KeySet()
    thread = threading.Thread(target=keys.server.serve_forever, daemon=True)
    thread.start()
    yield keys
    keys.server.shutdown()
    keys.server.server_close()


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"aud": "http://127.0.0.1/hook"}, 200),
        ({}, 200),  # no aud: unknown whether the service always sets one
        ({"aud": "https://elsewhere.example/hook"}, 401),
        ({"aud": "http://127.0.0.1/hook", "exp": -3600}, 401),
    ],
    ids=["our-aud", "no-aud", "other-aud", "expired"],
)
def test_a_dynamic_webhook_jwt_is_checked_against_the_key_set(
    key_set: _KeySet, claims: dict[str, Any], status: int
) -> None:
    now = int(time.time())
    if "exp" in claims:
        claims = {**claims, "exp": now + int(claims["exp"])}
    body = _event()
    headers = {
        "webhook-id": "msg_jwt",
        "webhook-timestamp": str(now),
        "webhook-signature": key_set.sign(claims),
    }
    settings = WebhookSettings(url="http://127.0.0.1/hook", jwks_url=key_set.url)
    answers, named = _exchange(settings, [(body, headers)])
    assert answers[0][0] == status, answers
    assert named == ([IDENTITY] if status == 200 else [])


def test_the_secret_stays_out_of_the_settings_repr() -> None:
    assert SECRET not in repr(_settings())
    assert SECRET.removeprefix("whsec_") not in repr(_settings())
