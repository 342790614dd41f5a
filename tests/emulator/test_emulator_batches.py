"""Batches and Models APIs against the emulator, through the real google-genai SDK."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
from google.genai import errors, types

from gembatch_async.emulator import DEFAULT_MODELS, EmulatorConfig, RunningEmulator
from tests.emulator.test_emulator_support import (
    AIO_TRANSPORTS,
    AIOHTTP_SUBCLASS_WARNING,
    API_KEY,
    MODEL,
    aio_client,
    inline_src,
    jsonl_lines,
    raw_get,
    sync_client,
    wait_state,
)

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

FAST = EmulatorConfig(port=0, processing_seconds=1.0)
SLOW = EmulatorConfig(port=0, processing_seconds=60.0)
#: Kinder than the service: lines it cannot parse get an error line each, so a test can
#: see them in the output (by default the whole create answers 400, see test_emulator_fidelity).
ANSWERING = EmulatorConfig(port=0, processing_seconds=2.0, answer_invalid_lines=True)


def _upload_jsonl(emu: RunningEmulator, data: bytes) -> str:
    client = sync_client(emu)
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})
    assert uploaded.name is not None
    return uploaded.name


@pytest.mark.parametrize("emulator_config", [ANSWERING])
def test_batch_state_machine_and_output(emulator: RunningEmulator) -> None:
    """A file batch goes PENDING -> RUNNING -> SUCCEEDED and its output has a line per input."""
    data = jsonl_lines(4) + b"\n" + b'{"key": "bad", "request": 5}\n' + b"[1, 2]\n"
    source = _upload_jsonl(emulator, data)
    client = sync_client(emulator)
    job = client.batches.create(model=MODEL, src=source, config={"display_name": "sm"})
    assert job.name is not None
    assert len(job.name.removeprefix("batches/")) == 36  # as the service's (python-genai#1759)
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == "sm"
    assert job.model == f"models/{MODEL}"
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while not seen or seen[-1] != "JOB_STATE_SUCCEEDED":
        assert time.monotonic() < deadline
        state = client.batches.get(name=job.name).state
        assert state is not None
        if not seen or seen[-1] != state.name:
            seen.append(state.name)
        time.sleep(0.05)
    assert seen == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    done = client.batches.get(name=job.name)
    assert done.end_time is not None
    assert done.dest is not None
    assert done.dest.file_name == f"files/batch-{job.name.removeprefix('batches/')}"
    # files.get answers 400 for output files (their ids are too long): list shows them.
    (output,) = [f for f in client.files.list() if f.name == done.dest.file_name]
    assert output.source == types.FileSource.GENERATED
    assert output.download_uri
    lines = [json.loads(line) for line in client.files.download(file=output).splitlines()]
    assert len(lines) == 6  # blank line skipped; one line per request line
    by_key = {line.get("key"): line for line in lines}
    assert {f"req-{i}" for i in range(4)} | {"bad"} <= set(by_key)
    answer = by_key["req-2"]["response"]
    assert answer["candidates"][0]["content"]["parts"][0]["text"]
    assert answer["usageMetadata"]["totalTokenCount"] > 0
    assert answer["modelVersion"] == MODEL
    assert by_key["bad"]["error"]["code"] == 400
    assert sum(1 for line in lines if "key" not in line and "error" in line) == 1
    batch_state = emulator.state()["batches"][0]
    assert batch_state["state"] == "BATCH_STATE_SUCCEEDED"
    assert batch_state["outputFile"] == done.dest.file_name
    assert batch_state["inputFile"] == source


@pytest.mark.parametrize("emulator_config", [ANSWERING])
def test_batch_stats_on_the_wire(emulator: RunningEmulator) -> None:
    """Raw batch JSON carries the Operation envelope and string batchStats."""
    source = _upload_jsonl(emulator, jsonl_lines(3) + b"nope\n")
    client = sync_client(emulator)  # kept referenced: the SDK closes collected clients
    job = client.batches.create(model=MODEL, src=source)
    assert job.name is not None
    raw = raw_get(emulator, f"/v1beta/{job.name}", **{"x-goog-api-key": API_KEY}).json()
    meta = raw["metadata"]
    assert meta["@type"].endswith("GenerateContentBatch")
    assert "done" not in raw
    assert meta["batchStats"] == {"requestCount": "4", "pendingRequestCount": "4"}
    assert meta["inputConfig"] == {"fileName": source}
    wait_state(client, emulator, job.name, "JOB_STATE_SUCCEEDED")  # the 0.5 s job ends
    raw = raw_get(emulator, f"/v1beta/{job.name}", **{"x-goog-api-key": API_KEY}).json()
    assert raw["done"] is True
    assert raw["response"]["responsesFile"].startswith("files/batch-")
    assert raw["metadata"]["batchStats"] == {
        "requestCount": "4",
        "successfulRequestCount": "3",
        "failedRequestCount": "1",
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("emulator_config", [FAST])
@pytest.mark.parametrize("transport", AIO_TRANSPORTS)
async def test_aio_batch_roundtrip(emulator: RunningEmulator, transport: str) -> None:
    """aio upload, create, poll, download work on both async transports."""
    client = aio_client(emulator, transport)
    try:
        uploaded = await client.aio.files.upload(
            file=io.BytesIO(jsonl_lines(3)), config={"mime_type": "application/jsonl"}
        )
        assert uploaded.name is not None
        job = await client.aio.batches.create(model=MODEL, src=uploaded.name)
        assert job.name is not None
        for _ in range(100):
            job = await client.aio.batches.get(name=job.name)
            if job.done:
                break
            await asyncio.sleep(0.05)
        assert job.state == types.JobState.JOB_STATE_SUCCEEDED
        assert job.dest is not None
        assert job.dest.file_name is not None
        data = await client.aio.files.download(file=job.dest.file_name)
    finally:
        await client.aio.aclose()
    keys = {json.loads(line)["key"] for line in data.splitlines()}
    assert keys == {"req-0", "req-1", "req-2"}


@pytest.mark.parametrize("emulator_config", [FAST])
def test_inline_batch(emulator: RunningEmulator) -> None:
    """Inlined requests come back under dest.inlined_responses with their metadata."""
    client = sync_client(emulator)
    job = client.batches.create(model=MODEL, src=inline_src(3), config={"display_name": "inline"})
    assert job.name is not None
    done = wait_state(client, emulator, job.name, "JOB_STATE_SUCCEEDED")
    assert done.dest is not None
    assert done.dest.inlined_responses is not None
    items = done.dest.inlined_responses
    assert [item.metadata for item in items] == [{"key": f"k{i}"} for i in range(3)]
    assert all(item.response is not None and item.response.text for item in items)
    assert emulator.state()["batches"][0]["outputFile"] is None


def test_list_batches_paging(emulator: RunningEmulator) -> None:
    """batches.list with page_size=2 pages through 5 jobs under `operations`."""
    client = sync_client(emulator)
    created = {client.batches.create(model=MODEL, src=inline_src()).name for _ in range(5)}
    pager = client.batches.list(config={"page_size": 2})
    assert len(pager.page) == 2
    assert {job.name for job in pager} == created
    raw = raw_get(emulator, "/v1/batches?pageSize=2", **{"x-goog-api-key": API_KEY}).json()
    assert len(raw["operations"]) == 2
    assert raw["nextPageToken"]


@pytest.mark.parametrize("emulator_config", [SLOW])
def test_cancel_and_delete(emulator: RunningEmulator) -> None:
    """cancel moves a running job to CANCELLED; delete removes it; unknown ids give 404."""
    client = sync_client(emulator)
    job = client.batches.create(model=MODEL, src=inline_src())
    assert job.name is not None
    client.batches.cancel(name=job.name)
    cancelled = client.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.end_time
    with pytest.raises(errors.ClientError) as info:
        client.batches.cancel(name=job.name)
    assert info.value.code == 400
    assert info.value.status == "FAILED_PRECONDITION"
    client.batches.delete(name=job.name)
    assert emulator.state()["batches"] == []
    for call in (client.batches.get, client.batches.cancel, client.batches.delete):
        with pytest.raises(errors.ClientError) as info:
            call(name=job.name)
        assert info.value.code == 404
        assert info.value.status == "NOT_FOUND"


@pytest.mark.parametrize("emulator_config", [SLOW])
def test_unfinished_delete_allowed(emulator: RunningEmulator) -> None:
    """A pending job can be deleted outright."""
    client = sync_client(emulator)
    job = client.batches.create(model=MODEL, src=inline_src())
    assert job.name is not None
    assert job.state == types.JobState.JOB_STATE_PENDING
    client.batches.delete(name=job.name)
    assert emulator.state()["batches"] == []


def test_missing_source_file(emulator: RunningEmulator) -> None:
    """A batch whose source file does not exist is refused with 400 and not created."""
    client = sync_client(emulator)
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src="files/doesnotexist")
    assert info.value.code == 400
    assert info.value.status == "INVALID_ARGUMENT"
    assert emulator.state()["batches"] == []


@pytest.mark.parametrize(
    "emulator_config", [EmulatorConfig(port=0, processing_seconds=60, max_unfinished_batches=2)]
)
def test_unfinished_batch_limit(emulator: RunningEmulator) -> None:
    """Beyond max_unfinished_batches, create gives 429; cancelling one makes room."""
    client = sync_client(emulator)
    src = inline_src()
    first = client.batches.create(model=MODEL, src=src)
    client.batches.create(model=MODEL, src=src)
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src=src)
    assert info.value.code == 429
    assert info.value.status == "RESOURCE_EXHAUSTED"
    assert first.name is not None
    client.batches.cancel(name=first.name)
    client.batches.create(model=MODEL, src=src)
    assert len(emulator.state()["batches"]) == 3


def test_models_get_and_list(emulator: RunningEmulator) -> None:
    """models.get/list serve the catalogue, in order; a generation model supports batches."""
    client = sync_client(emulator)
    model = client.models.get(model=MODEL)
    assert model.name == f"models/{MODEL}"
    assert model.supported_actions is not None
    assert "batchGenerateContent" in model.supported_actions
    listed = [m.name for m in client.models.list()]
    assert listed == [f"models/{m}" for m in DEFAULT_MODELS]


def test_unknown_model_is_not_found(emulator: RunningEmulator) -> None:
    """An unknown or retired model gives 404 NOT_FOUND on get and on batch create."""
    client = sync_client(emulator)
    with pytest.raises(errors.ClientError) as info:
        client.models.get(model="gemini-1.0-pro")
    assert info.value.code == 404
    assert info.value.status == "NOT_FOUND"
    source = _upload_jsonl(emulator, jsonl_lines(1))
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model="gemini-1.0-pro", src=source)
    assert info.value.code == 404
    assert info.value.status == "NOT_FOUND"
    assert emulator.state()["batches"] == []
