"""pytest plugin: point the SDK's own test clients at the emulator.

google-genai's ``tests/conftest.py`` builds each client from a
``ReplayApiClient`` handed to ``Client`` through a patched ``_get_api_client``,
so ``GOOGLE_GEMINI_BASE_URL`` (read by ``Client``) never reaches it, and some
modules pin their own ``base_url`` (the embedding tests use Google's autopush
host). This plugin sets ``http_options.base_url`` of every ``ReplayApiClient``
to the emulator. It changes the test harness's client construction only; every
request still goes through the unmodified SDK over HTTP.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

BASE_URL_ENV = "GEMBATCH_SDK_SUITE_BASE_URL"


def _with_base_url(http_options: Any, base_url: str) -> Any:
    """The test's http_options (None, dict or HttpOptions) with our base URL."""
    from google.genai import types

    if http_options is None:
        return types.HttpOptions(base_url=base_url)
    if isinstance(http_options, dict):
        return {**http_options, "base_url": base_url}
    return http_options.model_copy(update={"base_url": base_url})


def pytest_configure(config: pytest.Config) -> None:
    base_url = os.environ[BASE_URL_ENV]
    from google.genai import _replay_api_client

    original: Any = _replay_api_client.ReplayApiClient.__init__

    def init(self: Any, *args: Any, http_options: Any = None, **kwargs: Any) -> None:
        kwargs["http_options"] = _with_base_url(http_options, base_url)
        original(self, *args, **kwargs)

    _replay_api_client.ReplayApiClient.__init__ = init  # type: ignore[method-assign]
