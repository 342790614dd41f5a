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
"""

from __future__ import annotations

import contextlib
import datetime
import json
import pathlib
import random
from typing import Any

from gembatch_async._schema import GENERATE
from gembatch_async.emulator._responses import fake_response
from gembatch_async.emulator._store import _windows
from gembatch_async.emulator._validation import request_error


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
) -> tuple[int, int]:
    """Write a job's output lines for its input, streaming (a worker thread): lines go to
    ``output_paths`` in turn; only the first ``limit`` rows when the job ended early.
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
                targets[written % len(targets)].write(json.dumps(line).encode() + b"\n")
                written += 1
                failed += bool(line.get("status"))
    return written, failed
