"""Strict JSON, as every reader of output lines parses it (``_results``, Vertex's
converter in ``_backends/_gcs``): a leaf, so the backends need not import results."""

from __future__ import annotations

import json
from typing import Any


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: One decoder for every line (``json.loads`` with an option builds one per call).
_STRICT = json.JSONDecoder(parse_constant=_not_json)


class TooDeepError(ValueError):
    """A JSON text nested deeper than the parser can follow (a ValueError, not a crash)."""


def strict_json(raw: bytes | str) -> Any:
    """A JSON text, strictly, as every reader of output lines parses it: ``NaN`` and
    ``Infinity`` are refused (they are not JSON), and nesting too deep to read is a
    :class:`TooDeepError`, never a ``RecursionError`` that stops a whole command."""
    try:
        return _STRICT.decode(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except RecursionError:
        raise TooDeepError("nested too deeply to read") from None
