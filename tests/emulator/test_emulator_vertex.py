"""Vertex AI batch prediction against the emulator: the real google-genai SDK in Vertex
mode over HTTP, and real google-cloud-storage against the in-process storage emulator."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import pytest
import requests
from google import genai
from google.api_core import exceptions as api_exceptions
from google.cloud import storage
from google.genai import errors, types

from gembatch_async.emulator import (
    EmulatorConfig,
    EmulatorThread,
    RunningEmulator,
    RunningStorageEmulator,
)
from tests.conftest import TEST_BUCKET
from tests.emulator.test_emulator_support import AIOHTTP_SUBCLASS_WARNING
from tests.helpers import sdk_httpx as httpx2

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

PROJECT = "gembatch-test-project"
LOCATION = "us-central1"
MODEL = "gemini-2.5-flash"
ENDED = {
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_EXPIRED",
}


def static_token() -> google.auth.credentials.Credentials:
    """Credentials holding a token that never expires: no refresh, no ADC, no network."""
    token: google.auth.credentials.Credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token="emulator"
    )
    return token


def vertex_client(emu: RunningEmulator, **options: Any) -> genai.Client:
    """The recipe the Vertex backend uses against the emulator: explicit project and
    location, a static bearer token (no ADC, no network), the emulator as base URL."""
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=static_token(),
        http_options=types.HttpOptions(base_url=emu.base_url, **options),
    )


def gcs_client(gcs: RunningStorageEmulator) -> storage.Client:
    """google-cloud-storage pointed at the storage emulator without touching the env."""
    return storage.Client(
        project=PROJECT,
        credentials=google.auth.credentials.AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": gcs.url},
    )


def request_line(key: str, text: str, **extra: Any) -> dict[str, Any]:
    """One input line in the Batch API's shape, with a key."""
    request = {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}
    return {"key": key, "request": request}


def put_input(gcs: RunningStorageEmulator, name: str, lines: list[dict[str, Any]]) -> str:
    """Write JSONL lines to gs://TEST_BUCKET/name; returns the URI."""
    data = "".join(json.dumps(line) + "\n" for line in lines)
    gcs_client(gcs).bucket(TEST_BUCKET).blob(name).upload_from_string(data)
    return f"gs://{TEST_BUCKET}/{name}"


def create(
    client: genai.Client, src: str, display_name: str = "job", model: str = MODEL
) -> types.BatchJob:
    """batches.create with a gs:// input and an output prefix beside it."""
    config = types.CreateBatchJobConfig(
        display_name=display_name, dest=f"gs://{TEST_BUCKET}/out/{display_name}"
    )
    job = client.batches.create(model=model, src=src, config=config)
    assert job.name is not None
    return job


def states_until_end(
    client: genai.Client, emu: RunningEmulator, name: str, step: float = 0.1
) -> list[str]:
    """The distinct states a job goes through until it ends, in order. Between reads the
    emulator's clock moves ``step`` seconds (shorter than any phase these tests give a
    job), so every state is seen and nothing waits in real time."""
    seen: list[str] = []
    for _ in range(int(120 / step)):
        state = client.batches.get(name=name).state
        assert state is not None
        if not seen or seen[-1] != state.name:
            seen.append(state.name)
        if seen[-1] in ENDED:
            return seen
        emu.advance_clock(step)
    raise AssertionError(f"job still {seen[-1:]} after 120 s of emulator time")


def read_predictions(gcs: RunningStorageEmulator, directory: str) -> list[dict[str, Any]]:
    """The lines of predictions.jsonl in a job's gs:// output directory."""
    bucket, prefix = directory.removeprefix("gs://").split("/", 1)
    blob = gcs_client(gcs).bucket(bucket).blob(f"{prefix}/predictions.jsonl")
    return [json.loads(line) for line in blob.download_as_text().splitlines()]


def objects(gcs: RunningStorageEmulator, prefix: str = "") -> list[str]:
    """Names of the objects in TEST_BUCKET under prefix."""
    return [blob.name for blob in gcs_client(gcs).list_blobs(TEST_BUCKET, prefix=prefix)]


def job_state(emu: RunningEmulator, name: str) -> dict[str, Any]:
    """The job's entry in GET /_emulator/state."""
    entries: list[dict[str, Any]] = emu.state()["batchPredictionJobs"]
    (entry,) = [j for j in entries if j["name"] == name]
    return entry


@contextlib.contextmanager
def vertex_emulator_with(gcs: RunningStorageEmulator, **settings: Any) -> Iterator[RunningEmulator]:
    """An emulator with its own settings, its Vertex routes on `gcs`."""
    settings.setdefault("processing_seconds", 1.0)
    config = EmulatorConfig(port=0, storage_emulator_host=gcs.url, **settings)
    with EmulatorThread(config) as running:
        yield running


# ----- the lifecycle and its outputs ---------------------------------------------------------


def test_create_runs_to_success_with_one_output_line_per_request(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """A gs:// input goes PENDING -> RUNNING -> SUCCEEDED; predictions.jsonl in Cloud
    Storage has one line per request, each with its request, key, empty status, response."""
    lines = [request_line(f"k{i}", f"question {i}") for i in range(5)]
    src = put_input(storage_emulator, "in/five.jsonl", lines)
    client = vertex_client(vertex_emulator)
    job = create(client, src, "five")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.model == f"publishers/google/models/{MODEL}"
    assert job.src is not None
    assert job.src.gcs_uri == [src]
    assert job.name is not None
    assert job.name.split("/")[-1].isdigit()
    assert states_until_end(client, vertex_emulator, job.name) == [
        "JOB_STATE_PENDING",
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
    ]
    done = client.batches.get(name=job.name)
    assert done.completion_stats is not None
    assert done.completion_stats.successful_count == 5
    assert not done.completion_stats.failed_count
    assert done.start_time
    assert done.end_time
    assert done.create_time
    assert done.output_info is not None
    assert done.output_info.gcs_output_directory
    directory = done.output_info.gcs_output_directory
    assert directory.startswith(f"gs://{TEST_BUCKET}/out/five/prediction-model-")
    predictions = read_predictions(storage_emulator, directory)
    assert sorted(p["key"] for p in predictions) == [f"k{i}" for i in range(5)]
    by_key = {p["key"]: p for p in predictions}
    for line in lines:
        out = by_key[line["key"]]
        assert out["request"] == line["request"]
        assert out["status"] == ""
        assert out["processed_time"]
        assert out["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert job_state(vertex_emulator, job.name)["outputWritten"] is True


@pytest.mark.asyncio
async def test_async_client_over_aiohttp(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """The SDK's async side (aiohttp) creates, gets and lists Vertex jobs too."""
    src = put_input(storage_emulator, "in/async.jsonl", [request_line("a", "hello")])
    client = vertex_client(vertex_emulator)
    job = await client.aio.batches.create(
        model=MODEL, src=src, config={"display_name": "async", "dest": f"gs://{TEST_BUCKET}/o"}
    )
    assert job.name is not None
    got = await client.aio.batches.get(name=job.name)
    assert got.display_name == "async"
    listed = [j.name async for j in await client.aio.batches.list()]
    assert listed == [job.name]


def test_partially_succeeded_keeps_each_failed_request_with_its_status(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """A request the service refuses fails alone: PARTIALLY_SUCCEEDED, completionStats
    counting both kinds, the failed line with a non-empty status and no response."""
    lines = [
        request_line("good-1", "one"),
        request_line("bad", "two", generationConfig={"temprature": 0.5}),
        request_line("good-2", "three"),
    ]
    client = vertex_client(vertex_emulator)
    job = create(client, put_input(storage_emulator, "in/mixed.jsonl", lines), "mixed")
    assert (
        states_until_end(client, vertex_emulator, str(job.name))[-1]
        == "JOB_STATE_PARTIALLY_SUCCEEDED"
    )
    done = client.batches.get(name=str(job.name))
    assert done.completion_stats is not None
    assert (done.completion_stats.successful_count, done.completion_stats.failed_count) == (2, 1)
    assert done.output_info is not None
    assert done.output_info.gcs_output_directory
    by_key = {
        p["key"]: p
        for p in read_predictions(storage_emulator, done.output_info.gcs_output_directory)
    }
    assert set(by_key) == {"good-1", "bad", "good-2"}
    assert "temprature" in by_key["bad"]["status"]
    assert "response" not in by_key["bad"]
    assert by_key["bad"]["request"] == lines[1]["request"]
    assert by_key["good-1"]["status"] == ""
    assert "response" in by_key["good-1"]


def test_all_requests_failing_fails_the_job_with_its_outputs(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """Every request refused: FAILED with an error, and the per-request statuses written."""
    lines = [request_line("bad", "x", generationConfig={"temprature": 1})]
    client = vertex_client(vertex_emulator)
    job = create(client, put_input(storage_emulator, "in/bad.jsonl", lines), "allbad")
    assert states_until_end(client, vertex_emulator, str(job.name))[-1] == "JOB_STATE_FAILED"
    done = client.batches.get(name=str(job.name))
    assert done.error is not None
    assert done.error.code == 3
    assert done.output_info is not None
    assert done.output_info.gcs_output_directory
    (line,) = read_predictions(storage_emulator, done.output_info.gcs_output_directory)
    assert line["key"] == "bad"
    assert line["status"]


def test_missing_input_object_fails_the_job_not_the_create(
    vertex_emulator: RunningEmulator,
) -> None:
    """A gs:// input that does not exist: the create succeeds, the job ends FAILED with
    code 3 naming the object (as Vertex reports a failed data import)."""
    client = vertex_client(vertex_emulator)
    job = create(client, f"gs://{TEST_BUCKET}/in/nothing-here.jsonl", "missing")
    assert states_until_end(client, vertex_emulator, str(job.name)) == [
        "JOB_STATE_PENDING",
        "JOB_STATE_FAILED",
    ]
    done = client.batches.get(name=str(job.name))
    assert done.error is not None
    assert done.error.code == 3
    assert "nothing-here.jsonl" in str(done.error.message)
    assert done.output_info is None


def test_expired_when_not_done_in_time(storage_emulator: RunningStorageEmulator) -> None:
    """A job not ended expire_after_seconds after its creation is EXPIRED, with its
    requests counted incomplete and no outputs."""
    with vertex_emulator_with(
        storage_emulator, processing_seconds=30.0, expire_after_seconds=0.6
    ) as emu:
        client = vertex_client(emu)
        src = put_input(storage_emulator, "in/slow.jsonl", [request_line("a", "b")] * 1)
        job = create(client, src, "slow")
        assert states_until_end(client, emu, str(job.name)) == [
            "JOB_STATE_PENDING",
            "JOB_STATE_EXPIRED",
        ]
        done = client.batches.get(name=str(job.name))
        assert done.completion_stats is not None
        assert done.completion_stats.incomplete_count == 1
        assert objects(storage_emulator, "out/") == []


def test_jobs_past_the_slots_wait_queued(storage_emulator: RunningStorageEmulator) -> None:
    """Past max_unfinished_batches running jobs, Vertex queues instead of refusing:
    the second job is QUEUED until the first ends, then runs to success."""
    with vertex_emulator_with(storage_emulator, max_unfinished_batches=1) as emu:
        client = vertex_client(emu)
        src = put_input(storage_emulator, "in/q.jsonl", [request_line("a", "b")])
        first = create(client, src, "first")
        second = create(client, src, "second")
        assert second.state == types.JobState.JOB_STATE_QUEUED
        assert states_until_end(client, emu, str(second.name)) == [
            "JOB_STATE_QUEUED",
            "JOB_STATE_PENDING",
            "JOB_STATE_RUNNING",
            "JOB_STATE_SUCCEEDED",
        ]
        ended_first = client.batches.get(name=str(first.name))
        started_second = client.batches.get(name=str(second.name))
        assert ended_first.state == types.JobState.JOB_STATE_SUCCEEDED
        assert ended_first.end_time is not None
        assert started_second.start_time is not None
        assert started_second.start_time >= ended_first.end_time


# ----- cancel, delete, list -------------------------------------------------------------------


def test_cancel_goes_cancelling_then_cancelled(storage_emulator: RunningStorageEmulator) -> None:
    """cancel: CANCELLING, then CANCELLED; no outputs; a second cancel of an ended job is
    400 FAILED_PRECONDITION."""
    with vertex_emulator_with(storage_emulator, processing_seconds=6.0) as emu:
        client = vertex_client(emu)
        job = create(
            client, put_input(storage_emulator, "in/c.jsonl", [request_line("a", "b")]), "c"
        )
        client.batches.cancel(name=str(job.name))
        assert states_until_end(client, emu, str(job.name)) == [
            "JOB_STATE_CANCELLING",
            "JOB_STATE_CANCELLED",
        ]
        with pytest.raises(errors.ClientError) as refused:
            client.batches.cancel(name=str(job.name))
        assert refused.value.code == 400
        assert refused.value.status == "FAILED_PRECONDITION"
        assert objects(storage_emulator, "out/") == []
        assert emu.state()["requests"]["cancel"]["count"] == 2


def test_delete_only_ended_jobs_and_keep_their_outputs(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """delete refuses a running job (400), removes an ended one (get: 404, gone from the
    state document) and leaves its outputs in Cloud Storage."""
    client = vertex_client(vertex_emulator)
    job = create(client, put_input(storage_emulator, "in/d.jsonl", [request_line("a", "b")]), "d")
    with pytest.raises(errors.ClientError) as refused:
        client.batches.delete(name=str(job.name))
    assert refused.value.code == 400
    states_until_end(client, vertex_emulator, str(job.name))
    deleted = client.batches.delete(name=str(job.name))
    assert deleted.done is True
    with pytest.raises(errors.ClientError) as gone:
        client.batches.get(name=str(job.name))
    assert gone.value.code == 404
    assert vertex_emulator.state()["batchPredictionJobs"] == []
    assert [o for o in objects(storage_emulator, "out/d/") if o.endswith("predictions.jsonl")]


def test_list_filters_by_display_name_and_pages_without_empty_pages(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """The display_name filter finds exactly the job of that name (what an ambiguous
    create is looked up with); paging returns every match once, newest first, and the
    last page carries no nextPageToken."""
    client = vertex_client(vertex_emulator)
    src = put_input(storage_emulator, "in/l.jsonl", [request_line("a", "b")])
    names = [str(create(client, src, f"run-{i}").name) for i in range(5)]
    other = create(client, src, "other")
    found = list(client.batches.list(config={"filter": 'display_name="run-3"'}))
    assert [j.name for j in found] == [names[3]]
    pager = client.batches.list(config={"filter": 'display_name:"run-*"', "page_size": 2})
    assert [j.name for j in pager] == names[::-1]
    sizes, token = [], None
    path = f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs"
    with httpx2.Client(base_url=vertex_emulator.base_url, timeout=30) as http:
        while True:
            params = {"filter": 'display_name:"run-*"', "pageSize": "2"}
            if token:
                params["pageToken"] = token
            body = http.get(path, params=params, headers={"Authorization": "Bearer t"}).json()
            sizes.append(len(body.get("batchPredictionJobs", [])))
            token = body.get("nextPageToken")
            if not token:
                break
    assert sizes == [2, 2, 1]
    unfinished = client.batches.list(
        config={"filter": 'state!="JOB_STATE_SUCCEEDED" AND display_name="other"'}
    )
    assert [j.name for j in unfinished] == [other.name]
    with pytest.raises(errors.ClientError) as bad:
        list(client.batches.list(config={"filter": 'display_name="a" OR display_name="b"'}))
    assert bad.value.code == 400


def test_jobs_are_scoped_to_their_project_and_location(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """A job is listed and found only under its own location; its name carries the
    project number, and the SDK finds it by its id."""
    client = vertex_client(vertex_emulator)
    job = create(client, put_input(storage_emulator, "in/s.jsonl", [request_line("a", "b")]), "s")
    assert str(job.name).startswith("projects/")
    assert PROJECT not in str(job.name)
    elsewhere = genai.Client(
        vertexai=True,
        project=PROJECT,
        location="europe-west4",
        credentials=static_token(),
        http_options=types.HttpOptions(base_url=vertex_emulator.base_url),
    )
    assert list(elsewhere.batches.list()) == []
    with pytest.raises(errors.ClientError) as missing:
        elsewhere.batches.get(name=str(job.name))
    assert missing.value.code == 404


# ----- models, faults, credentials, state -----------------------------------------------------


def test_models_get_in_vertex_mode(vertex_emulator: RunningEmulator) -> None:
    """models.get answers the publisher model from the catalogue; an unknown model, and a
    create with one, answer 404."""
    client = vertex_client(vertex_emulator)
    model = client.models.get(model=MODEL)
    assert model.name == f"publishers/google/models/{MODEL}"
    with pytest.raises(errors.ClientError) as unknown:
        client.models.get(model="gemini-0.1-imaginary")
    assert unknown.value.code == 404
    with pytest.raises(errors.ClientError) as create_unknown:
        create(client, f"gs://{TEST_BUCKET}/in/x.jsonl", "x", model="gemini-0.1-imaginary")
    assert create_unknown.value.code == 404
    assert vertex_emulator.state()["batchPredictionJobs"] == []


def test_v1_routes(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """The same service under v1 (HttpOptions(api_version="v1"))."""
    client = vertex_client(vertex_emulator, api_version="v1")
    job = create(client, put_input(storage_emulator, "in/v1.jsonl", [request_line("a", "b")]), "v1")
    assert client.batches.get(name=str(job.name)).display_name == "v1"
    assert client.models.get(model=MODEL).name == f"publishers/google/models/{MODEL}"


def test_lost_create_still_creates_the_job_once(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """A `lost` create fault: the client sees a failure, the job exists once, and the
    display_name look-up finds it."""
    client = vertex_client(vertex_emulator)
    src = put_input(storage_emulator, "in/lost.jsonl", [request_line("a", "b")])
    vertex_emulator.set_faults("create:1:lost", seed=3)
    with pytest.raises((errors.ServerError, httpx2.HTTPError)):
        create(client, src, "lost-create")
    vertex_emulator.set_faults("")
    found = list(client.batches.list(config={"filter": 'display_name="lost-create"'}))
    assert len(found) == 1
    state = vertex_emulator.state()
    assert [j["displayName"] for j in state["batchPredictionJobs"]] == ["lost-create"]
    assert state["requests"]["create"]["count"] == 1


def test_injected_status_faults_reach_the_sdk(vertex_emulator: RunningEmulator) -> None:
    """A `get:1:503` fault answers the Vertex get with 503, counted under `get`."""
    client = vertex_client(vertex_emulator)
    vertex_emulator.set_faults("get:1:503")
    with pytest.raises(errors.ServerError) as failed:
        client.batches.get(name="1234567890123456789")
    assert failed.value.code == 503
    assert vertex_emulator.state()["requests"]["get"]["count"] == 1


def test_create_without_cloud_storage_is_refused(storage_emulator: RunningStorageEmulator) -> None:
    """No storage emulator configured (nor STORAGE_EMULATOR_HOST): 400, never real GCS."""
    with EmulatorThread(EmulatorConfig(port=0)) as emu:
        with pytest.raises(errors.ClientError) as refused:
            create(vertex_client(emu), f"gs://{TEST_BUCKET}/in/x.jsonl", "x")
        assert refused.value.code == 400
        assert "STORAGE_EMULATOR_HOST" in str(refused.value.message)


def test_requests_without_credentials_are_unauthenticated(vertex_emulator: RunningEmulator) -> None:
    """No bearer token (nor API key): 401, as Vertex answers."""
    path = f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs"
    with httpx2.Client(base_url=vertex_emulator.base_url, timeout=30) as http:
        assert http.get(path).status_code == 401
        assert http.get(path, headers={"Authorization": "Bearer x"}).status_code == 200


def test_sdk_quirks_behind_the_client_recipe(
    vertex_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the recipe is what it is (google-genai 3.6): AnonymousCredentials cannot give a
    token; GOOGLE_VERTEX_BASE_URL works with an explicit project and location."""
    anonymous = genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=google.auth.credentials.AnonymousCredentials(),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=vertex_emulator.base_url),
    )
    with pytest.raises(google.auth.exceptions.GoogleAuthError):
        list(anonymous.batches.list())
    assert vertex_emulator.state()["requests"]["list"]["count"] == 0
    monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", vertex_emulator.base_url)
    from_env = genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=static_token(),
    )
    assert list(from_env.batches.list()) == []
    assert vertex_emulator.state()["requests"]["list"]["count"] == 1


def test_state_document_lists_jobs_and_reset_clears_them(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """GET /_emulator/state lists batchPredictionJobs with name, displayName, state,
    inputUris and outputDirectory; POST /_emulator/reset forgets them."""
    client = vertex_client(vertex_emulator)
    src = put_input(storage_emulator, "in/st.jsonl", [request_line("a", "b")] * 2)
    job = create(client, src, "st")
    entry = job_state(vertex_emulator, str(job.name))
    assert entry["displayName"] == "st"
    assert entry["state"] == "JOB_STATE_PENDING"
    assert entry["inputUris"] == [src]
    assert entry["outputDirectory"].startswith(f"gs://{TEST_BUCKET}/out/st/prediction-model-")
    assert entry["requestCount"] == 2
    vertex_emulator.reset()
    assert vertex_emulator.state()["batchPredictionJobs"] == []


def test_jobs_survive_a_restart_with_a_state_dir(
    storage_emulator: RunningStorageEmulator, tmp_path: Any
) -> None:
    """With state_dir, a job created before a restart is there after it and completes."""
    with vertex_emulator_with(storage_emulator, state_dir=tmp_path) as emu:
        src = put_input(storage_emulator, "in/r.jsonl", [request_line("a", "b")])
        job = create(vertex_client(emu), src, "restart")
    with vertex_emulator_with(storage_emulator, state_dir=tmp_path) as emu:
        client = vertex_client(emu)
        assert states_until_end(client, emu, str(job.name))[-1] == "JOB_STATE_SUCCEEDED"


# ----- the Cloud Storage emulator and google-cloud-storage -------------------------------------


def test_google_cloud_storage_recipe_against_the_storage_emulator(
    storage_emulator: RunningStorageEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With STORAGE_EMULATOR_HOST, storage.Client() needs no credentials or project: a
    resumable upload of a few MB (crc32c checked), download, list and delete work."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage_emulator.url)
    client = storage.Client()
    data = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB
    blob = client.bucket(TEST_BUCKET).blob("big/input.jsonl")
    # A writer streams a resumable upload in chunks (upload_from_filename switches to
    # resumable only past 8 MB).
    with blob.open("wb", chunk_size=1024 * 1024, checksum="crc32c") as writer:
        for start in range(0, len(data), 500_000):
            writer.write(data[start : start + 500_000])
    assert storage_emulator.requests()["upload"]["count"] >= 4  # start + 3 or more chunks
    assert (
        client.bucket(TEST_BUCKET).blob("big/input.jsonl").download_as_bytes(checksum="crc32c")
        == data
    )
    assert [b.name for b in client.list_blobs(TEST_BUCKET, prefix="big/")] == ["big/input.jsonl"]
    client.bucket(TEST_BUCKET).blob("big/input.jsonl").delete()
    assert [b.name for b in client.list_blobs(TEST_BUCKET)] == []


def test_storage_faults(storage_emulator: RunningStorageEmulator) -> None:
    """The storage emulator's faults: `upload:1:503` fails an upload and stores nothing;
    `upload:1:lost` fails it too, but the object is stored."""
    client = gcs_client(storage_emulator)
    storage_emulator.set_faults("upload:1:503")
    with pytest.raises(api_exceptions.ServiceUnavailable):
        client.bucket(TEST_BUCKET).blob("f/a").upload_from_string(b"x", retry=None)
    assert objects(storage_emulator, "f/") == []
    storage_emulator.set_faults("upload:1:lost", seed=1)
    with pytest.raises((api_exceptions.ServiceUnavailable, requests.ConnectionError)):
        client.bucket(TEST_BUCKET).blob("f/b").upload_from_string(b"y", retry=None)
    storage_emulator.set_faults("")
    assert objects(storage_emulator, "f/") == ["f/b"]


# ----- issue 16: the service's limits, its table import, early ends, sharded output ----------


def test_the_documented_limits_are_the_defaults() -> None:
    """200,000 requests a job and 1 GB an input file ("Batch prediction with Gemini",
    Quotas and limits); one predictions.jsonl, as Gemini jobs are seen to write."""
    config = EmulatorConfig()
    assert (config.vertex_max_requests, config.vertex_max_input_bytes) == (200_000, 10**9)
    assert config.vertex_output_shards == 1


def test_a_create_past_the_limits_is_refused(storage_emulator: RunningStorageEmulator) -> None:
    """More requests than a job takes, or an input object over the size limit: 400
    INVALID_ARGUMENT at create (the form is a guess, see docs/fidelity.md), no job;
    a job at the limit runs."""
    with vertex_emulator_with(
        storage_emulator, vertex_max_requests=3, vertex_max_input_bytes=400
    ) as emu:
        client = vertex_client(emu)
        at_limit = put_input(storage_emulator, "in/three.jsonl", [request_line("a", "b")] * 3)
        assert create(client, at_limit, "three").name
        over = put_input(storage_emulator, "in/four.jsonl", [request_line("a", "b")] * 4)
        with pytest.raises(errors.ClientError) as refused:
            create(client, over, "four")
        assert (refused.value.code, refused.value.status) == (400, "INVALID_ARGUMENT")
        assert "at most 3" in str(refused.value.message)
        big = put_input(storage_emulator, "in/big.jsonl", [request_line("a", "b" * 500)])
        with pytest.raises(errors.ClientError) as too_big:
            create(client, big, "big")
        assert too_big.value.code == 400
        assert "at most 400 bytes" in str(too_big.value.message)
        assert [j["displayName"] for j in emu.state()["batchPredictionJobs"]] == ["three"]


def _nested(levels: int) -> dict[str, Any]:
    """An object ``levels`` objects deep, a string at the bottom."""
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels - 1):
        value = {"inner": value}
    return value


#: One line each Vertex's table import refuses, and the BigQuery words expected.
IMPORT_FAILURES: dict[str, tuple[dict[str, Any], str]] = {
    "type changes between lines": (
        {"generationConfig": {"responseJsonSchema": {"type": ["string", "null"]}}},
        "has changed type",
    ),
    "an empty object": ({"tools": [{"googleSearch": {}}]}, "Unsupported empty struct type"),
    "nesting deeper than 15": (
        # request.generationConfig.responseJsonSchema, 13 objects, a leaf: 16 levels
        {"generationConfig": {"responseJsonSchema": _nested(13)}},
        "maximum allowed depth is 15",
    ),
    "a $defs key": (
        {"generationConfig": {"responseJsonSchema": {"$defs": {"a": {"type": "string"}}}}},
        'Invalid field name "$defs"',
    ),
}


@pytest.mark.parametrize("case", list(IMPORT_FAILURES))
def test_a_line_the_table_import_refuses_fails_the_whole_job(
    case: str, vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """Issue 16, python-aiplatform#4110: Vertex imports the input as a BigQuery table, so
    one line it cannot store fails every request: FAILED, code 3, "Failed to import
    data. ..." and no output at all."""
    extra, words = IMPORT_FAILURES[case]
    lines = [
        request_line("ok-1", "one", generationConfig={"responseJsonSchema": {"type": "string"}}),
        request_line("odd", "two", **extra),
        request_line("ok-2", "three"),
    ]
    client = vertex_client(vertex_emulator)
    job = create(client, put_input(storage_emulator, "in/imp.jsonl", lines), "imp")
    assert states_until_end(client, vertex_emulator, str(job.name))[-1] == "JOB_STATE_FAILED"
    done = client.batches.get(name=str(job.name))
    assert done.error is not None
    assert done.error.code == 3
    assert str(done.error.message).startswith("Failed to import data. ")
    assert words in str(done.error.message)
    assert objects(storage_emulator, "out/") == []


def test_fifteen_levels_and_numbers_of_both_kinds_import(
    vertex_emulator: RunningEmulator, storage_emulator: RunningStorageEmulator
) -> None:
    """The limits are not tighter than BigQuery's: 15 levels, 1 then 0.5 in one field."""
    lines = [
        request_line(
            "a", "one", generationConfig={"responseJsonSchema": _nested(12), "temperature": 1}
        ),
        request_line("b", "two", generationConfig={"temperature": 0.5}),
    ]
    client = vertex_client(vertex_emulator)
    job = create(client, put_input(storage_emulator, "in/fine.jsonl", lines), "fine")
    assert states_until_end(client, vertex_emulator, str(job.name))[-1] == "JOB_STATE_SUCCEEDED"


def _rows_written(gcs: RunningStorageEmulator, job: types.BatchJob) -> list[dict[str, Any]]:
    assert job.output_info is not None
    assert job.output_info.gcs_output_directory
    return read_predictions(gcs, job.output_info.gcs_output_directory)


def test_a_job_cancelled_while_running_keeps_its_completed_rows_and_says_cancelled(
    storage_emulator: RunningStorageEmulator,
) -> None:
    """Cancel mid-run: CANCELLED with error code 1 (Code.CANCELLED), the rows it completed
    left in its output folder ("any files already outputted by the job are not
    deleted"), counted successful; the rest incomplete."""
    with vertex_emulator_with(storage_emulator, processing_seconds=3.0) as emu:
        client = vertex_client(emu)
        lines = [request_line(f"k{i}", "q") for i in range(20)]
        job = create(client, put_input(storage_emulator, "in/mid.jsonl", lines), "mid")
        # RUNNING from 1 s to 3 s: the emulator's clock moves 30% into it (no waiting).
        emu.advance_clock(1.6)
        assert client.batches.get(name=str(job.name)).state == types.JobState.JOB_STATE_RUNNING
        client.batches.cancel(name=str(job.name))
        emu.advance_clock(1.0)  # CANCELLING lasts the job's PENDING time
        assert states_until_end(client, emu, str(job.name))[-1] == "JOB_STATE_CANCELLED"
        done = client.batches.get(name=str(job.name))
        assert done.error is not None
        assert done.error.code == 1
        rows = _rows_written(storage_emulator, done)
        assert 0 < len(rows) < 20
        assert all(row["status"] == "" and "response" in row for row in rows)
        stats = done.completion_stats
        assert stats is not None
        assert (stats.successful_count, stats.incomplete_count) == (len(rows), 20 - len(rows))


def test_a_job_expired_while_running_keeps_its_completed_rows(
    storage_emulator: RunningStorageEmulator,
) -> None:
    """Expired after running 60% of its time: EXPIRED, 6 of 10 rows in its output folder."""
    with vertex_emulator_with(
        storage_emulator, processing_seconds=3.0, expire_after_seconds=2.2
    ) as emu:
        client = vertex_client(emu)
        lines = [request_line(f"k{i}", "q") for i in range(10)]
        job = create(client, put_input(storage_emulator, "in/exp.jsonl", lines), "exp")
        emu.advance_clock(2.2)  # to its expiry, without waiting for it
        assert states_until_end(client, emu, str(job.name))[-1] == "JOB_STATE_EXPIRED"
        done = client.batches.get(name=str(job.name))
        rows = _rows_written(storage_emulator, done)
        assert len({row["key"] for row in rows}) == len(rows)
        assert 5 <= len(rows) <= 7  # the job's clock starts when create returns
        assert done.completion_stats is not None
        assert done.completion_stats.incomplete_count == 10 - len(rows)


def test_output_in_shards(storage_emulator: RunningStorageEmulator) -> None:
    """vertex_output_shards=3: predictions.jsonl-0000N-of-00003, every row in exactly one."""
    with vertex_emulator_with(storage_emulator, vertex_output_shards=3) as emu:
        client = vertex_client(emu)
        lines = [request_line(f"k{i}", "q") for i in range(7)]
        job = create(client, put_input(storage_emulator, "in/sh.jsonl", lines), "sh")
        assert states_until_end(client, emu, str(job.name))[-1] == "JOB_STATE_SUCCEEDED"
        done = client.batches.get(name=str(job.name))
        assert done.output_info is not None
        folder = str(done.output_info.gcs_output_directory).removeprefix(f"gs://{TEST_BUCKET}/")
        names = objects(storage_emulator, folder + "/")
        assert [n.rsplit("/", 1)[-1] for n in names] == [
            f"predictions.jsonl-0000{i}-of-00003" for i in range(3)
        ]
        keys = [
            json.loads(line)["key"]
            for name in names
            for line in gcs_client(storage_emulator)
            .bucket(TEST_BUCKET)
            .blob(name)
            .download_as_text()
            .splitlines()
        ]
        assert sorted(keys) == sorted(f"k{i}" for i in range(7))
