"""Per-request errors on the Vertex emulator (``--request-errors``, issue 20): a share of
rows comes back with a ``status`` and no ``response``, drawn as on the Gemini side (by
the job's input bytes, earlier jobs of them, and the key); ``run --retry-failed`` sends
exactly those rows again and merges the answers in input order.

The real CLI against the Vertex routes over a Cloud Storage emulator; what each job was
sent and wrote is read from Cloud Storage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gembatch_async.emulator import EmulatorConfig
from gembatch_async.emulator._request_errors import RequestErrors

from ..helpers import run_cli, wait_until
from ..services import Service, _gcs

SEED = 11
SHARE = 0.3
ERRORS = RequestErrors(SHARE, SEED)
ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED")


def _objects(service: Service, uri: str) -> list[bytes]:
    """The objects under a gs:// prefix (an output folder, or one object), in name order."""
    assert service.storage is not None
    bucket, name = uri.removeprefix("gs://").split("/", 1)
    blobs = _gcs(service.storage).list_blobs(bucket, prefix=name)
    return [blob.download_as_bytes() for blob in sorted(blobs, key=lambda b: b.name)]


def _rows(service: Service, folder: str) -> list[dict[str, Any]]:
    return [
        json.loads(raw) for data in _objects(service, folder + "/") for raw in data.splitlines()
    ]


@pytest.mark.parametrize(
    "emulator_config",
    [
        pytest.param(
            EmulatorConfig(port=0, processing_seconds=0.6, request_errors=SHARE, fault_seed=SEED),
            id="errors",
        )
    ],
)
@pytest.mark.parametrize("service", ["vertex"], indirect=True)
def test_vertex_request_errors_are_sent_again_alone_and_merged_in_order(
    service: Service, tmp_path: Path
) -> None:
    keys = [f"v{i:02d}" for i in range(30)]
    lines = [
        json.dumps({"key": k, "request": {"contents": [{"parts": [{"text": k}]}]}}).encode() + b"\n"
        for k in keys
    ]
    (tmp_path / "q.jsonl").write_bytes(b"".join(lines))
    env = service.env()
    assert run_cli(["submit", "q.jsonl"], cwd=tmp_path, env=env).returncode == 0
    wait_until(lambda: all(j["state"] in ENDED for j in service.jobs()))
    again = run_cli(["submit", "--retry-failed", "q.jsonl"], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    first, second = service.jobs()
    # The round carried exactly the failed rows' input lines, in input order (read
    # before run deletes the upload).
    sent = _objects(service, second["input"])
    result = run_cli(["run", "--interval", "0.3", "q.jsonl"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(service.jobs()) == 2

    failed1 = [i for i, k in enumerate(keys) if ERRORS.error_for(k, i, first["requestErrorsDraw"])]
    assert 3 < len(failed1) < 20
    # The first job's rows: the drawn ones failed, with a status and no response.
    written = {row["key"]: row for row in _rows(service, first["outputDirectory"])}
    assert sorted(k for k, row in written.items() if row["status"]) == [keys[i] for i in failed1]
    assert first["failedCount"] == len(failed1)
    for i in failed1:
        row = written[keys[i]]
        assert "response" not in row
        name, _, body = row["status"].partition(" error occurred: ")
        assert name in ("RESOURCE_EXHAUSTED", "INTERNAL"), row["status"]
        assert json.loads(body)["error"]["status"] == name

    assert sent == [b"".join(lines[i] for i in failed1)]
    still = [i for i in failed1 if ERRORS.error_for(keys[i], i, second["requestErrorsDraw"])]
    assert len(still) < len(failed1)

    got = [json.loads(line) for line in (tmp_path / "results" / "q.jsonl").read_text().splitlines()]
    assert [row["key"] for row in got] == keys, "one answer per request, in input order"
    assert [i for i, row in enumerate(got) if "error" in row] == still
    for i in still:
        assert got[i]["error"]["code"] in (429, 500)
    assert f"30 requests: {30 - len(still)} answered, {len(still)} failed" in result.stdout
