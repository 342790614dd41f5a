"""The lines of a Vertex batch prediction job's ``predictions.jsonl``.

Each input line ``{"request": {...}, ...}`` gets one output line::

    {"key": "k1", "status": "", "processed_time": "2026-11-28T13:33:46.791+00:00",
     "request": {...the request as given...}, "response": {...GenerateContentResponse...}}

and a request the service refuses::

    {"key": "k2", "status": "Bad Request: {\\"error\\": {\\"code\\": 400, \\"message\\": ...,
     \\"status\\": \\"INVALID_ARGUMENT\\"}}", "processed_time": "...", "request": {...}}

Based on Google's documentation of Gemini batch output on Cloud Storage ("for succeeded
rows, model responses are stored in the ``response`` field; otherwise error details are
stored in the ``status`` field") and a real output line published with
kkrishnan90/gemini-batch-predictions (``status: ""``, ``processed_time``, ``request``,
``response``, in that order). The wording inside a failed line's ``status`` is the
emulator's: treat any non-empty ``status`` as the request's failure, kept as text.
Fields of the input line other than ``request`` (such as a ``key``) are passed through;
lines are written in an order of their own, as the service does not keep input order.

With ``--request-errors`` a share of the valid requests fails as a transient error
would: the row keeps its ``key``, ``processed_time`` and ``request``, has no
``response``, and its ``status`` is ``"<STATUS> error occurred: "`` and the error body,
the form googleapis/python-aiplatform#4485 quotes from a Gemini batch job on Vertex::

    RESOURCE_EXHAUSTED error occurred: {"error": {"code": 429, "message": "Online
    prediction request quota exceeded for gemini-1.5-pro. Please try again later with
    backoff.", "status": "RESOURCE_EXHAUSTED"}}

Which requests fail is drawn as on the Gemini emulator (``_request_errors``: the seed,
the job's draw of its input bytes and earlier jobs of them, the key). The INTERNAL
message is a guess (none captured on Vertex); the tool reads any non-empty ``status``
as a failure and takes the code and name from a JSON body when there is one.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import pathlib
import random
from typing import Any

from gembatch_async._schema import GENERATE
from gembatch_async.emulator._request_errors import RequestErrors
from gembatch_async.emulator._responses import fake_response
from gembatch_async.emulator._store import _windows
from gembatch_async.emulator._validation import request_error

#: The drawn errors' google.rpc codes as Vertex writes them: (HTTP code, status name).
_HTTP_OF = {13: (500, "INTERNAL"), 8: (429, "RESOURCE_EXHAUSTED")}


def processed_time(epoch: float) -> str:
    """The ``processed_time`` stamp: milliseconds and a numeric UTC offset."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+00:00"


def failure_status(message: str) -> str:
    """A failed line's ``status``: the HTTP reason, then the error body."""
    body = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    return f"Bad Request: {json.dumps(body)}"


def prediction_line(
    raw: bytes, job_id: str, model: str, position: int, stamp: str
) -> dict[str, Any]:
    """The output line for one input line (see the module docstring)."""
    try:
        line = json.loads(raw)
    except ValueError:
        return {
            "status": failure_status("Invalid JSON payload: the line is not valid JSON."),
            "processed_time": stamp,
        }
    if not isinstance(line, dict):
        return {
            "status": failure_status("Invalid request: each line must be a JSON object."),
            "processed_time": stamp,
        }
    request = line.get("request")
    out: dict[str, Any] = {k: v for k, v in line.items() if k != "request"}
    error = (
        request_error(request, GENERATE)
        if isinstance(request, dict)
        else "Invalid request: the line has no `request` object."
    )
    out["status"] = "" if error is None else failure_status(error)
    out["processed_time"] = stamp
    out["request"] = request
    if error is None and isinstance(request, dict):
        out["response"] = fake_response(request, job_id, model, position)
    return out


def drawn_status(error: dict[str, Any], model: str) -> str:
    """A drawn per-request error (``RequestErrors``) as a Vertex row's ``status``."""
    http, name = _HTTP_OF.get(int(error.get("code", 13)), (500, "INTERNAL"))
    if name == "RESOURCE_EXHAUSTED":  # python-aiplatform#4485's words
        message = (
            f"Online prediction request quota exceeded for {model}. "
            "Please try again later with backoff."
        )
    else:  # a guess: no INTERNAL row of a Vertex batch job is captured
        message = "Internal error encountered."
    body = {"error": {"code": http, "message": message, "status": name}}
    return f"{name} error occurred: {json.dumps(body)}"


def with_drawn_error(
    line: dict[str, Any], errors: RequestErrors | None, draw: str, position: int, model: str
) -> dict[str, Any]:
    """The row with its response replaced by a drawn error, when this request draws one."""
    if errors is None or "response" not in line:
        return line
    error = errors.error_for(line.get("key"), position, draw)
    if error is None:
        return line
    failed = {k: v for k, v in line.items() if k != "response"}
    failed["status"] = drawn_status(error, model)
    return failed


def drawn_failures_blocking(path: pathlib.Path, errors: RequestErrors, draw: str) -> int:
    """How many valid requests of an input draw an error (the job's failed count)."""
    failed = position = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            answered = _answerable(raw)  # as prediction_line decides
            if answered is not None:
                failed += errors.error_for(answered.get("key"), position, draw) is not None
            position += 1
    return failed


def _answerable(raw: bytes) -> dict[str, Any] | None:
    """The input line when prediction_line would answer it with a response, else None."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    request = line.get("request") if isinstance(line, dict) else None
    if not isinstance(request, dict) or request_error(request, GENERATE) is not None:
        return None
    return line  # type: ignore[no-any-return]


def file_sha256(path: pathlib.Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shard_names(shards: int) -> list[str]:
    """The output files of a job: ``predictions.jsonl``, or its shards
    ``predictions.jsonl-00000-of-00002`` ... (the naming public readers of Vertex
    batch output handle; see EmulatorConfig.vertex_output_shards)."""
    if shards <= 1:
        return ["predictions.jsonl"]
    return [f"predictions.jsonl-{i:05d}-of-{shards:05d}" for i in range(shards)]


def write_predictions_blocking(
    input_path: pathlib.Path,
    output_paths: list[pathlib.Path],
    job_id: str,
    model: str,
    stamp: str,
    limit: int | None = None,
    errors: RequestErrors | None = None,
    draw: str = "",
) -> tuple[int, int]:
    """Write a job's output lines for its input, streaming (a worker thread): lines go to
    ``output_paths`` in turn; only the first ``limit`` rows when the job ended early;
    requests that draw an error (``errors``, by the job's ``draw``) fail.
    Returns (rows written, rows among them that failed)."""
    rng = random.Random(job_id)  # the same order every time for one job
    written = failed = 0
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(input_path.open("rb"))
        targets = [stack.enter_context(path.open("wb")) for path in output_paths]
        for window in _windows(src, rng):
            for position, raw in window:
                if limit is not None and written >= limit:
                    return written, failed
                line = prediction_line(raw, job_id, model, position, stamp)
                line = with_drawn_error(line, errors, draw, position, model)
                targets[written % len(targets)].write(json.dumps(line).encode() + b"\n")
                written += 1
                failed += bool(line.get("status"))
    return written, failed
