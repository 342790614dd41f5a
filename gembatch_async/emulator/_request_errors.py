"""Per-request errors on purpose (``--request-errors P``): which requests fail, and how.

A request fails when a hash of the seed, the job's draw and its key falls under P. A
job's draw is its input's bytes and how many jobs were made from the same bytes before
(``draw_of``): the same job fails the same requests however often its output is made, in
any order, a fresh emulator fails the same requests of the same inputs (a demo with a
seed is repeatable), and a test can tell which; another job (a resubmission) draws again, as on
the service, whose per-request errors are mostly transient: code 13 INTERNAL says
"Please retry", and python-genai#1341 reports such errors in batch output for requests
that do not fail when sent again elsewhere. Lines without a key are chosen by their position instead. A failed request's output line is
``{"key": ..., "error": {"code": ..., "message": ...}}``: a google.rpc.Status with a
gRPC code, as the service writes it (python-genai#1341 shows one: code 13).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

_ERRORS: tuple[dict[str, Any], ...] = (
    {
        "code": 13,
        "message": "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    },
    {"code": 8, "message": "Resource has been exhausted (e.g. check quota)."},
)


def draw_of(input_sha256: str, earlier: int) -> str:
    """The draw of a job whose input has this sha256Hash, after ``earlier`` jobs of the
    same bytes."""
    return f"{input_sha256}#{earlier}"


@dataclasses.dataclass(frozen=True)
class RequestErrors:
    """The share of requests that come back as errors, chosen by (seed, job, key)."""

    share: float = 0.0
    seed: int | None = None

    def error_for(self, key: object, position: int, job: str) -> dict[str, Any] | None:
        """The error this request gets in ``job`` (its id), or None when it is answered."""
        if self.share <= 0:
            return None
        name = key if isinstance(key, str) else f"#position {position}"
        text = f"{self.seed or 0}\0{job}\0{name}".encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(text, digest_size=8).digest()
        if int.from_bytes(digest[:7], "big") / 2**56 >= self.share:
            return None
        return dict(_ERRORS[digest[7] % len(_ERRORS)])

    def apply(self, result: dict[str, Any], position: int, job: str) -> dict[str, Any]:
        """The output line with its response replaced by an error, if this request errs."""
        if "response" not in result:
            return result
        error = self.error_for(result.get("key"), position, job)
        if error is None:
            return result
        return {**({"key": result["key"]} if "key" in result else {}), "error": error}
