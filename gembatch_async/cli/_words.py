"""A count with its noun: "1 error", "2 errors". Every line that counts something is
built with it, so singular and plural agree in one place, not site by site."""

from __future__ import annotations


def count_of(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, the noun in the plural (``plural``, else noun + "s")
    unless the count is exactly 1."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def agreeing(count: int, singular: str, plural: str) -> str:
    """The verb that agrees with a count's noun: "has" for 1, "have" otherwise."""
    return singular if count == 1 else plural
