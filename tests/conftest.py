"""Shared fixtures: a real emulator on 127.0.0.1:0 and a hermetic environment."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator

import certifi
import pytest

from gembatch_async.emulator import (
    EmulatorConfig,
    EmulatorThread,
    RunningEmulator,
    RunningStorageEmulator,
    serve_storage_emulator,
)

from .services import Service

TEST_API_KEY = "test-key-7d1c0a5e"
#: The bucket the storage_emulator fixture creates.
TEST_BUCKET = "gembatch-test"


@pytest.fixture(scope="session")
def _one_certificate(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A trust store of one CA certificate (the first of certifi's bundle)."""
    bundle = pathlib.Path(certifi.where()).read_text(encoding="ascii")
    end = "-----END CERTIFICATE-----\n"
    path = tmp_path_factory.mktemp("tls") / "one-ca.pem"
    path.write_text(bundle[: bundle.index(end) + len(end)], encoding="ascii")
    return path


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, _one_certificate: pathlib.Path) -> None:
    """No test sees the developer's real credentials or endpoints.

    Every google-genai Client builds three TLS contexts (httpx, aiohttp, websockets),
    each loading a CA bundle of ~150 certificates: 0.14 CPU s per client, thousands of
    clients in the suite (each in-process CLI call makes its own). The SDK takes the
    bundle from $SSL_CERT_FILE (google/genai/_api_client.py, _ensure_httpx_ssl_ctx and
    its aiohttp and websocket twins); the tests speak plain HTTP to 127.0.0.1 only, so
    a one-certificate store (5 ms per client) changes nothing they check. CLI
    subprocesses inherit it through cli_env."""
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "GEMINI_", "GEMBATCH_", "STORAGE_EMULATOR_HOST")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(_one_certificate))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Default emulator settings for one test; override by parametrizing this fixture."""
    return EmulatorConfig(host="127.0.0.1", port=0, processing_seconds=2.0)


@pytest.fixture
def emulator(emulator_config: EmulatorConfig) -> Iterator[RunningEmulator]:
    """A live emulator in a background thread, stopped after the test."""
    with EmulatorThread(emulator_config) as running:
        yield running


@pytest.fixture
def storage_emulator() -> Iterator[RunningStorageEmulator]:
    """A Cloud Storage emulator on 127.0.0.1:0 with the bucket TEST_BUCKET."""
    with serve_storage_emulator(buckets=[TEST_BUCKET]) as running:
        yield running


@pytest.fixture
def vertex_emulator(storage_emulator: RunningStorageEmulator) -> Iterator[RunningEmulator]:
    """The emulator, its Vertex routes reading and writing `storage_emulator` (1 s jobs)."""
    config = EmulatorConfig(
        port=0, processing_seconds=1.0, storage_emulator_host=storage_emulator.url
    )
    with EmulatorThread(config) as running:
        yield running


@pytest.fixture(params=["gemini", "vertex"])
def service(request: pytest.FixtureRequest, emulator_config: EmulatorConfig) -> Iterator[Service]:
    """Each backend in turn, its emulator built from ``emulator_config``: the Gemini
    API, or the Vertex routes over a Cloud Storage emulator with the bucket TEST_BUCKET."""
    if request.param == "gemini":
        with EmulatorThread(emulator_config) as running:
            yield Service("gemini", running)
        return
    with serve_storage_emulator(buckets=[TEST_BUCKET]) as gcs:
        config = dataclasses.replace(emulator_config, storage_emulator_host=gcs.url)
        with EmulatorThread(config) as running:
            yield Service("vertex", running, gcs)
