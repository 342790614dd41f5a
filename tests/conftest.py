"""Shared fixtures: a real emulator on 127.0.0.1:0 and a hermetic environment."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator

TEST_API_KEY = "test-key-7d1c0a5e"


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's real credentials or endpoints."""
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "GEMINI_", "GEMBATCH_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Default emulator settings for one test; override by parametrizing this fixture."""
    return EmulatorConfig(host="127.0.0.1", port=0, processing_seconds=2.0)


@pytest.fixture
def emulator(emulator_config: EmulatorConfig) -> Iterator[RunningEmulator]:
    """A live emulator in a background thread, stopped after the test."""
    with EmulatorThread(emulator_config) as running:
        yield running
