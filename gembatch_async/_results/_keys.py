"""A request key as the join matches it: a 128-bit digest, and the number the service
may have written it as."""

from __future__ import annotations

import hashlib
import math
import re


def key_digest(key: str) -> bytes:
    """128 bits of a key: collisions are out of reach even across billions of keys."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# A key the service turned into a JSON number: reported for keys like "000000", not
# confirmed (nothing in Google's docs or googleapis/python-genai shows it). Whatever it
# does, an answer is never given to the wrong request: a number is matched to the one
# request key that reads as that number (as a double, like protobuf's Struct, which
# keeps numbers as doubles), and left unmatched (reported) when several do ("0", "000").
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_MAX_NUMBER_TEXT = 400
_NUMBER_START = frozenset("-0123456789")


def numeric_key(value: float) -> float | None:
    """A number as a key: a finite double (-0 is 0), or None."""
    try:
        number = float(value) + 0.0
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def numeric_form(key: str) -> float | None:
    """The number a string key would become if the service wrote it as one, or None."""
    if not key or key[0] not in _NUMBER_START or len(key) > _MAX_NUMBER_TEXT:
        return None  # most keys, at the cost of one comparison
    if not _NUMBER.fullmatch(key):
        return None
    return numeric_key(float(key))


def number_digest(number: float) -> bytes:
    """128 bits of a numeric key, apart from every string key's (another personalisation)."""
    text = repr(number).encode()
    return hashlib.blake2b(text, digest_size=16, person=b"gba-number").digest()


def answer_digest(key: str | float) -> bytes:
    """The digest an answer is indexed under: its string key's, or its number's."""
    return key_digest(key) if isinstance(key, str) else number_digest(key)
