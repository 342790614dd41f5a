"""Keys written back as JSON numbers (``EmulatorConfig.numeric_keys``): a test-only behaviour.

Reported for the real service, not confirmed: a request key like ``"000007"`` came back
in the output as the number ``7`` (issue 16; nothing in Google's docs or in
googleapis/python-genai shows it). Off by default: the emulator copies keys as given, as
every captured output does. On, every key that reads as a JSON number (leading zeros
allowed) is written as that number, so tests can hold the tool to it.
"""

from __future__ import annotations

import math
import re
from typing import Any

_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def numerified(result: dict[str, Any]) -> dict[str, Any]:
    """The output line with its key as a number, when the key reads as one."""
    key = result.get("key")
    if not isinstance(key, str) or len(key) > 400 or not _NUMBER.fullmatch(key):
        return result
    number: float = int(key) if key.lstrip("-").isdigit() else float(key)
    if isinstance(number, float) and not math.isfinite(number):
        return result
    return {**result, "key": number}
