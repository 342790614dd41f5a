"""The emulator's --request-errors: a share of requests, chosen by job and key, answered with an error."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator
from gembatch_async.emulator._request_errors import RequestErrors
from tests.emulator.test_emulator_support import MODEL, sync_client

from ..helpers import cli_env, run_cli


def output_of(emulator: RunningEmulator, data: bytes) -> tuple[str, list[dict[str, object]]]:
    """Run one file batch to the end; its request-errors draw and output lines."""
    client = sync_client(emulator)
    source = client.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})
    assert source.name is not None
    job = client.batches.create(model=MODEL, src=source.name)
    assert job.name is not None
    deadline = time.monotonic() + 10
    while (done := client.batches.get(name=job.name)).dest is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert done.dest.file_name is not None
    text = client.files.download(file=done.dest.file_name)
    (batch,) = [b for b in emulator.state()["batches"] if b["name"] == job.name]
    return str(batch["requestErrorsDraw"]), [json.loads(line) for line in text.splitlines()]


def requests(keys: list[str]) -> bytes:
    return b"".join(
        json.dumps({"key": key, "request": {"contents": [{"parts": [{"text": key}]}]}}).encode()
        + b"\n"
        for key in keys
    )


def test_share_of_requests_err_by_job_and_key_in_the_service_shape() -> None:
    """About P of the requests, chosen by the job and the key (not the order), as {key,
    error}; another job of the same requests (a resubmission) draws again, so a request
    that failed once can succeed, as on the service (python-genai#1341)."""
    keys = [f"k{i}" for i in range(400)]
    config = EmulatorConfig(port=0, processing_seconds=0.3, request_errors=0.25, fault_seed=9)
    with EmulatorThread(config) as emulator:
        first_job, first = output_of(emulator, requests(keys))
        second_job, second = output_of(emulator, requests(keys[::-1]))
    failing = {str(line["key"]) for line in first if "error" in line}
    again = {str(line["key"]) for line in second if "error" in line}
    assert 60 < len(failing) < 140
    assert 60 < len(again) < 140
    assert failing != again, "each job draws its own failures"
    assert failing - again, "some requests that failed in one job succeed in the next"
    expected = RequestErrors(0.25, 9)
    assert failing == {k for i, k in enumerate(keys) if expected.error_for(k, i, first_job)}
    assert again == {k for i, k in enumerate(keys) if expected.error_for(k, i, second_job)}
    errors = [line for line in first if "error" in line]
    assert all(set(line) == {"key", "error"} for line in errors)
    assert {line["error"]["code"] for line in errors} == {13, 8}  # type: ignore[index]
    assert all(line["error"]["message"] for line in errors)  # type: ignore[index]
    assert all(set(line) == {"key", "response"} for line in first if "error" not in line)


def test_seed_changes_which_requests_err() -> None:
    """Another seed, another set of failing keys; share 0 and 1 are none and all."""
    keys = [f"k{i}" for i in range(200)]
    one, other = RequestErrors(0.3, 1), RequestErrors(0.3, 2)
    assert {k for k in keys if one.error_for(k, 0, "j")} != {
        k for k in keys if other.error_for(k, 0, "j")
    }
    assert {k for k in keys if one.error_for(k, 0, "j")} == {
        k for k in keys if one.error_for(k, 5, "j")
    }, "chosen by key, not by position"
    assert not any(RequestErrors(0.0, 1).error_for(k, 0, "j") for k in keys)
    assert all(RequestErrors(1.0, 1).error_for(k, 0, "j") for k in keys)


@pytest.mark.parametrize("share", ["2", "-0.1", "nan", "x"])
def test_bad_share_is_a_usage_error(share: str, tmp_path: Path) -> None:
    """--request-errors outside 0..1 (or not a number): one line, exit 2."""
    result = run_cli(
        ["emulator", "--port", "0", "--request-errors", share],
        cwd=tmp_path,
        env=cli_env(None),
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "request" in result.stderr.splitlines()[-1]


def test_numeric_keys_is_off_by_default_and_numbers_keys_when_on() -> None:
    """numeric_keys (test only; reported for the real service, unconfirmed): keys that read
    as numbers come back as JSON numbers; by default every key comes back as given."""
    keys = ["000007", "2.50", "-3", "x1", "1e999"]
    plain = EmulatorConfig(port=0, processing_seconds=0.3)
    numbered = EmulatorConfig(port=0, processing_seconds=0.3, numeric_keys=True)
    with EmulatorThread(plain) as emulator:
        assert sorted(
            str(line["key"]) for line in output_of(emulator, requests(keys))[1]
        ) == sorted(keys)
    with EmulatorThread(numbered) as emulator:
        got = [line["key"] for line in output_of(emulator, requests(keys))[1]]
    assert sorted(got, key=str) == sorted([7, 2.5, -3, "x1", "1e999"], key=str)


def test_the_same_inputs_fail_the_same_requests_in_a_fresh_emulator() -> None:
    """Failures are drawn by the input's bytes (not the random batch id): a demo with a seed
    repeats; a second job of the same bytes (a resubmission) draws anew."""
    keys = [f"k{i}" for i in range(200)]
    config = EmulatorConfig(port=0, processing_seconds=0.2, request_errors=0.25, fault_seed=3)
    runs = []
    for _ in range(2):
        with EmulatorThread(config) as emulator:
            outputs = [output_of(emulator, requests(keys))[1] for _ in range(2)]
        runs.append([{str(line["key"]) for line in out if "error" in line} for out in outputs])
    assert runs[0] == runs[1], "a fresh emulator fails the same requests of the same inputs"
    first, second = runs[0]
    assert first
    assert second
    assert first != second, "a second job of the same bytes draws anew"
