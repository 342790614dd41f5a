"""The emulator announces a job's end to its dynamic webhook, signed, with faults."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from google import genai
from google.genai import types

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator
from gembatch_async.emulator._webhooks import WebhookSender

from ..helpers import TEST_API_KEY, wait_until, write_jsonl


class _Recorder:
    """A plain HTTP server that keeps every POST (headers and body) and answers 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes, float]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                recorder.posts.append(
                    ({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    found = _Recorder()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()


def _emulator(faults: str = "") -> EmulatorThread:
    return EmulatorThread(EmulatorConfig(port=0, processing_seconds=0.4, webhook_faults=faults))


def _create(emulator: RunningEmulator, tmp_path: Path, uri: str) -> str:
    client = genai.Client(
        api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url)
    )
    src = write_jsonl(tmp_path / "in.jsonl", 2)
    upload = client.files.upload(file=src, config={"mime_type": "jsonl"})
    job = client.batches.create(
        model="gemini-2.5-flash",
        src=upload.name or "",
        config=types.CreateBatchJobConfig(
            display_name="wh",
            webhook_config=types.WebhookConfig(uris=[uri], user_metadata={"who": "test"}),
        ),
    )
    return job.name or ""


def _claims(emulator: RunningEmulator, token: str, audience: str) -> dict[str, Any]:
    keys = jwt.PyJWKClient(f"{emulator.base_url}/.well-known/jwks.json")
    key = keys.get_signing_key_from_jwt(token)
    return dict(jwt.decode(token, key.key, algorithms=["RS256"], audience=audience))


def test_a_job_end_is_posted_signed_with_the_jwks_key(recorder: _Recorder, tmp_path: Path) -> None:
    with _emulator() as emulator:
        name = _create(emulator, tmp_path, recorder.url)
        wait_until(lambda: len(recorder.posts) == 1, timeout=10)
        headers, body, _ = recorder.posts[0]
        assert headers["webhook-id"]
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 10
        assert _claims(emulator, headers["webhook-signature"], recorder.url)["aud"] == recorder.url
        event = json.loads(body)
        assert event["type"] == "batch.succeeded"
        assert event["data"]["id"] == name
        assert event["user_metadata"] == {"who": "test"}
        time.sleep(0.3)
        assert len(recorder.posts) == 1, "one job end, one delivery"


def test_duplicate_sends_the_same_delivery_twice(recorder: _Recorder, tmp_path: Path) -> None:
    with _emulator("duplicate") as emulator:
        _create(emulator, tmp_path, recorder.url)
        wait_until(lambda: len(recorder.posts) == 2, timeout=10)
        assert recorder.posts[0][0]["webhook-id"] == recorder.posts[1][0]["webhook-id"]


def test_lost_sends_nothing(recorder: _Recorder, tmp_path: Path) -> None:
    with _emulator("lost") as emulator:
        name = _create(emulator, tmp_path, recorder.url)
        wait_until(lambda: any(w["outcome"] == "lost" for w in emulator.state()["webhooks"]))
        assert recorder.posts == []
        assert [b["state"] for b in emulator.state()["batches"] if b["name"] == name] == [
            "BATCH_STATE_SUCCEEDED"
        ]


def test_bad_signature_does_not_verify(recorder: _Recorder, tmp_path: Path) -> None:
    with _emulator("bad-signature") as emulator:
        _create(emulator, tmp_path, recorder.url)
        wait_until(lambda: len(recorder.posts) >= 1, timeout=10)
        with pytest.raises(jwt.InvalidSignatureError):
            _claims(emulator, recorder.posts[0][0]["webhook-signature"], recorder.url)


def test_late_waits_before_sending(recorder: _Recorder, tmp_path: Path) -> None:
    with _emulator("late=1.5") as emulator:
        _create(emulator, tmp_path, recorder.url)
        created = time.time()
        wait_until(lambda: len(recorder.posts) == 1, timeout=10)
        assert recorder.posts[0][2] - created >= 0.4 + 1.5 - 0.2


def test_a_cancelled_job_is_not_announced(recorder: _Recorder, tmp_path: Path) -> None:
    """No cancelled event is listed (SDK 3.6.1 WebhookSubscribedEvent)."""
    with EmulatorThread(EmulatorConfig(port=0, processing_seconds=1.0)) as emulator:
        name = _create(emulator, tmp_path, recorder.url)
        client = genai.Client(
            api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url)
        )
        client.batches.cancel(name=name)
        time.sleep(1.3)
        assert recorder.posts == []


def test_the_signing_keys_are_made_when_first_needed() -> None:
    """An RSA key costs ~0.1 CPU s and most emulators never sign: a new sender has no key,
    the key set makes one (the same one every time), the stranger waits for its fault."""
    sender = WebhookSender()
    assert "_key" not in vars(sender)
    first = sender.jwks()
    assert sender.jwks() == first
    assert "_stranger" not in vars(sender)
