"""The emulator's scenario actions (/_emulator/end-batch, expire-file, refuse-delete, stall)."""

from __future__ import annotations

import io
import time
import urllib.error
from datetime import datetime, timezone

import pytest
from google.genai import errors, types

from gembatch_async.emulator import RunningEmulator
from tests.emulator.test_emulator_support import (
    AIOHTTP_SUBCLASS_WARNING,
    MODEL,
    jsonl_lines,
    no_retry,
    sync_client,
)

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)


def _upload(emu: RunningEmulator) -> str:
    client = sync_client(emu)  # held: a dropped client closes its connections mid-call
    uploaded = client.files.upload(file=io.BytesIO(jsonl_lines(2)), config={"mime_type": "jsonl"})
    assert uploaded.name is not None
    return uploaded.name


@pytest.mark.parametrize(
    ("wire", "sdk"),
    [
        pytest.param("BATCH_STATE_FAILED", types.JobState.JOB_STATE_FAILED, id="failed"),
        pytest.param("BATCH_STATE_EXPIRED", types.JobState.JOB_STATE_EXPIRED, id="expired"),
    ],
)
def test_end_batch_makes_a_job_fail_or_expire(
    emulator: RunningEmulator, wire: str, sdk: types.JobState
) -> None:
    """end-batch: the SDK then sees the job ended in that state; it can no longer be cancelled."""
    client = sync_client(emulator, retry_options=no_retry())
    job = client.batches.create(model=MODEL, src=_upload(emulator))
    assert job.name is not None
    emulator.end_batch(job.name, wire)
    got = client.batches.get(name=job.name)
    assert got.state == sdk
    assert got.done is True
    assert [b["state"] for b in emulator.state()["batches"]] == [wire]
    with pytest.raises(errors.ClientError, match="terminal state"):
        client.batches.cancel(name=job.name)


def test_end_batch_refuses_other_states(emulator: RunningEmulator) -> None:
    """Only FAILED and EXPIRED can be forced (SUCCEEDED and CANCELLED happen by themselves)."""
    client = sync_client(emulator)
    job = client.batches.create(model=MODEL, src=_upload(emulator))
    assert job.name is not None
    with pytest.raises(urllib.error.HTTPError) as caught:
        emulator.end_batch(job.name, "BATCH_STATE_SUCCEEDED")
    assert caught.value.code == 400


def test_expire_file_moves_the_expiry(emulator: RunningEmulator) -> None:
    """expire-file: the file's expirationTime is that many seconds away."""
    name = _upload(emulator)
    emulator.expire_file(name, 120)
    client = sync_client(emulator)
    got = client.files.get(name=name)
    assert got.expiration_time is not None
    left = (got.expiration_time - datetime.now(timezone.utc)).total_seconds()
    assert 100 < left <= 120


def test_refuse_delete_answers_400_for_that_file_only(emulator: RunningEmulator) -> None:
    """refuse-delete: that file's deletes fail with 400; other files delete; reset forgets it."""
    client = sync_client(emulator, retry_options=no_retry())
    kept, other = _upload(emulator), _upload(emulator)
    emulator.refuse_delete(kept)
    with pytest.raises(errors.ClientError) as caught:
        client.files.delete(name=kept)
    assert caught.value.code == 400
    client.files.delete(name=other)
    assert [f["name"] for f in emulator.state()["files"]] == [kept]
    emulator.reset()
    name = _upload(emulator)
    client.files.delete(name=name)


def test_reset_forgets_the_situations_set_up(emulator: RunningEmulator) -> None:
    """reset forgets a refused delete: the same file name, uploaded again, deletes."""
    client = sync_client(emulator, retry_options=no_retry())
    emulator.refuse_delete("files/kept")
    emulator.reset()
    uploaded = client.files.upload(
        file=io.BytesIO(jsonl_lines(1)), config={"name": "files/kept", "mime_type": "jsonl"}
    )
    assert uploaded.name == "files/kept"
    client.files.delete(name="files/kept")
    assert emulator.state()["files"] == []


def test_stall_holds_new_requests_of_one_endpoint(emulator: RunningEmulator) -> None:
    """stall: requests to that endpoint wait; other endpoints do not; 0 ends it."""
    client = sync_client(emulator)
    name = _upload(emulator)
    emulator.stall("get", 0.5)
    started = time.monotonic()
    client.files.get(name=name)
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    client.files.list()
    assert time.monotonic() - started < 0.5
    emulator.stall("get", 0)
    started = time.monotonic()
    client.files.get(name=name)
    assert time.monotonic() - started < 0.5
