"""The emulator's clock tests can advance (POST /_emulator/advance-clock): jobs and uploads
age at once, so a test needs no sleep to see a job run, finish or expire."""

from __future__ import annotations

import dataclasses
import io
import math
import urllib.error

import pytest
from google.genai import errors, types

from gembatch_async.emulator import (
    EmulatorConfig,
    EmulatorThread,
    RunningEmulator,
    RunningStorageEmulator,
)
from tests.emulator.test_emulator_support import (
    AIOHTTP_SUBCLASS_WARNING,
    MODEL,
    jsonl_lines,
    no_retry,
    sync_client,
)
from tests.emulator.test_emulator_vertex import (
    create,
    put_input,
    read_predictions,
    request_line,
    vertex_client,
)

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

HOUR = 3600.0
#: Jobs that would take an hour of real time: only the clock can finish them in a test.
HOUR_LONG = EmulatorConfig(port=0, processing_seconds=HOUR)


@pytest.mark.parametrize("emulator_config", [HOUR_LONG])
def test_advancing_the_clock_runs_and_finishes_a_job(emulator: RunningEmulator) -> None:
    """An hour-long job is PENDING, RUNNING after a third of the hour, SUCCEEDED with its
    output file after the rest; its times follow the advanced clock."""
    client = sync_client(emulator, retry_options=no_retry())
    upload = client.files.upload(file=io.BytesIO(jsonl_lines(3)), config={"mime_type": "jsonl"})
    job = client.batches.create(model=MODEL, src=str(upload.name))
    assert job.name is not None
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
    emulator.advance_clock(HOUR / 3 + 1)
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
    emulator.advance_clock(HOUR)
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.create_time is not None
    assert done.end_time is not None
    assert (done.end_time - done.create_time).total_seconds() == pytest.approx(HOUR, abs=0.01)
    assert done.dest is not None
    assert done.dest.file_name is not None
    output = client.files.download(file=done.dest.file_name)
    assert len(output.splitlines()) == 3


def test_advancing_the_clock_past_48_hours_expires_jobs_and_uploads(
    emulator: RunningEmulator,
) -> None:
    """Jobs slower than 48 h end EXPIRED, and uploads are gone (403), once the clock
    has moved 48 h: the service's lifetimes, without waiting for them."""
    slow = EmulatorConfig(port=0, processing_seconds=72 * HOUR)
    with EmulatorThread(slow) as running:
        client = sync_client(running, retry_options=no_retry())
        upload = client.files.upload(file=io.BytesIO(jsonl_lines(1)), config={"mime_type": "jsonl"})
        job = client.batches.create(model=MODEL, src=str(upload.name))
        assert job.name is not None
        running.advance_clock(48 * HOUR - 60)
        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
        client.files.get(name=str(upload.name))
        running.advance_clock(60)
        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_EXPIRED
        with pytest.raises(errors.ClientError) as gone:
            client.files.get(name=str(upload.name))
        assert gone.value.code == 403
        assert running.state()["files"] == []


def test_advancing_the_clock_finishes_vertex_jobs(
    storage_emulator: RunningStorageEmulator,
) -> None:
    """The Vertex routes follow the same clock: an hour-long job ends SUCCEEDED and writes
    its predictions as soon as the clock has passed its hour."""
    config = dataclasses.replace(HOUR_LONG, storage_emulator_host=storage_emulator.url)
    with EmulatorThread(config) as running:
        client = vertex_client(running)
        src = put_input(storage_emulator, "in/clock.jsonl", [request_line("a", "hello")])
        job = create(client, src, "clock")
        assert job.name is not None
        assert client.batches.get(name=job.name).state != types.JobState.JOB_STATE_SUCCEEDED
        running.advance_clock(HOUR + 1)
        done = client.batches.get(name=job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED
        assert done.output_info is not None
        assert done.output_info.gcs_output_directory
        predictions = read_predictions(storage_emulator, done.output_info.gcs_output_directory)
        assert [line["key"] for line in predictions] == ["a"]


@pytest.mark.parametrize("emulator_config", [HOUR_LONG])
@pytest.mark.parametrize("seconds", [-1.0, math.inf, math.nan])
def test_the_clock_only_moves_forward(emulator: RunningEmulator, seconds: float) -> None:
    """A negative, infinite or NaN advance answers 400 and leaves the clock alone (a job
    made after it is PENDING, as it would be at the wall clock's time)."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        emulator.advance_clock(seconds)
    assert refused.value.code == 400
    client = sync_client(emulator, retry_options=no_retry())
    job = client.batches.create(model=MODEL, src=sync_upload(emulator))
    assert job.name is not None
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING


def sync_upload(emulator: RunningEmulator) -> str:
    client = sync_client(emulator)
    upload = client.files.upload(file=io.BytesIO(jsonl_lines(1)), config={"mime_type": "jsonl"})
    return str(upload.name)
