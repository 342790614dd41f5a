"""Emulator fidelity: model catalogue, batch embeddings, per-request validation,
files:register, and an exact unfinished-jobs limit, all through the real SDK."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import subprocess
from typing import Any

import pytest
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from gembatch_async.emulator import EmulatorConfig, EmulatorThread, RunningEmulator
from tests.emulator.test_emulator_support import (
    AIOHTTP_SUBCLASS_WARNING,
    MODEL,
    aio_client,
    jsonl_lines,
    no_retry,
    sync_client,
    wait_state,
)

from ..zygote import cli_popen

pytestmark = [
    pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING),
    # The SDK marks batches.create_embeddings experimental.
    pytest.mark.filterwarnings("ignore:batches.create_embeddings"),
]

EMBED_MODEL = "gemini-embedding-001"
EMBED_METHODS = ["embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent"]
FAST = EmulatorConfig(port=0, processing_seconds=1.0)
SLOW = EmulatorConfig(port=0, processing_seconds=120.0)


def upload(client: genai.Client, lines: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})
    assert uploaded.name is not None
    return uploaded.name


def output_lines(client: genai.Client, job: types.BatchJob) -> dict[str, dict[str, Any]]:
    """The downloaded output file of a finished job, by key."""
    assert job.dest is not None
    assert job.dest.file_name is not None
    raw = client.files.download(file=job.dest.file_name)
    rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def embed_line(key: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "request": {"content": {"parts": [{"text": text}]}, **extra}}


def generate_line(key: str, **request: Any) -> dict[str, Any]:
    return {"key": key, "request": {"contents": [{"parts": [{"text": "hi"}]}], **request}}


# -- catalogue ---------------------------------------------------------------------------


def test_catalogue_has_current_and_embedding_models(emulator: RunningEmulator) -> None:
    """models.get answers for the 2.5 family and embedding models, with their real methods."""
    client = sync_client(emulator)
    for name in ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite"):
        model = client.models.get(model=name)
        assert model.supported_actions == [
            "generateContent",
            "countTokens",
            "createCachedContent",
            "batchGenerateContent",
        ]
    embedding = client.models.get(model=EMBED_MODEL)
    assert embedding.supported_actions == EMBED_METHODS
    assert embedding.output_token_limit == 1
    listed = {m.name for m in client.models.list()}
    assert {f"models/{EMBED_MODEL}", "models/gemini-3.5-flash", "models/gemini-2.5-flash"} <= listed


def test_batch_routes_check_the_model_method(emulator: RunningEmulator) -> None:
    """An embedding model cannot run a generate batch, nor a generation model an embed batch."""
    client = sync_client(emulator)
    generate_src = upload(client, [generate_line("a")])
    embed_src = upload(client, [embed_line("a", "x")])
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=EMBED_MODEL, src=generate_src)
    assert info.value.code == 404
    assert "not supported for batchGenerateContent" in str(info.value.message)
    with pytest.raises(errors.ClientError) as info:
        client.batches.create_embeddings(model=MODEL, src={"file_name": embed_src})
    assert info.value.code == 404
    assert "not supported for asyncBatchEmbedContent" in str(info.value.message)
    assert emulator.state()["batches"] == []


@pytest.mark.parametrize(
    "emulator_config",
    [EmulatorConfig(port=0, extra_models=("my-tuned-flash", "models/my-embedding-v9"))],
)
def test_config_adds_models(emulator: RunningEmulator) -> None:
    """EmulatorConfig.extra_models serves more models; an 'embedding' name embeds."""
    client = sync_client(emulator)
    tuned = client.models.get(model="my-tuned-flash")
    assert tuned.supported_actions is not None
    assert "batchGenerateContent" in tuned.supported_actions
    assert client.models.get(model="my-embedding-v9").supported_actions == EMBED_METHODS
    listed = [m.name for m in client.models.list()]
    assert listed[-2:] == ["models/my-tuned-flash", "models/my-embedding-v9"]
    job = client.batches.create(model="my-tuned-flash", src=upload(client, [generate_line("a")]))
    assert job.model == "models/my-tuned-flash"


def test_cli_model_flag_adds_models() -> None:
    """`gembatch-async emulator --model NAME` (repeatable) serves the added models."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_"))}
    command = ["emulator", "--port", "0"]
    server = cli_popen(
        [*command, "--model", "team-flash-x", "--model", "team-embedding-x"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        emu = RunningEmulator("127.0.0.1", int(url.rsplit(":", 1)[1]), url)
        client = sync_client(emu)
        flash = client.models.get(model="team-flash-x")
        assert flash.supported_actions is not None
        assert "batchGenerateContent" in flash.supported_actions
        assert client.models.get(model="team-embedding-x").supported_actions == EMBED_METHODS
        assert client.models.get(model="gemini-2.5-flash").name == "models/gemini-2.5-flash"
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()


# -- batch embeddings ----------------------------------------------------------------------


@pytest.mark.parametrize("emulator_config", [FAST])
def test_embedding_batch_from_file(emulator: RunningEmulator) -> None:
    """asyncBatchEmbedContent from a file: PENDING -> SUCCEEDED, an output line per key
    with an embedding's values, outputDimensionality honoured, listed and deletable."""
    client = sync_client(emulator)
    source = upload(
        client,
        [
            embed_line("doc-1", "alpha", taskType="RETRIEVAL_DOCUMENT", title="A"),
            embed_line("doc-2", "beta", output_dimensionality=8),
            embed_line("doc-3", "gamma", outputDimensionality=16),
        ],
    )
    job = client.batches.create_embeddings(
        model=EMBED_MODEL, src={"file_name": source}, config={"display_name": "emb"}
    )
    assert job.name is not None
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.model == f"models/{EMBED_MODEL}"
    assert job.display_name == "emb"
    done = wait_state(client, emulator, job.name, "JOB_STATE_SUCCEEDED")
    rows = output_lines(client, done)
    assert sorted(rows) == ["doc-1", "doc-2", "doc-3"]
    sizes = {key: len(row["response"]["embedding"]["values"]) for key, row in rows.items()}
    assert sizes == {"doc-1": 3072, "doc-2": 8, "doc-3": 16}
    assert all(isinstance(v, float) for v in rows["doc-2"]["response"]["embedding"]["values"])
    state = emulator.state()["batches"][0]
    assert state["requestCount"] == 3
    assert [b.name for b in client.batches.list(config={"page_size": 10})] == [job.name]
    client.batches.delete(name=job.name)
    assert emulator.state()["batches"] == []


@pytest.mark.asyncio
@pytest.mark.parametrize("emulator_config", [FAST])
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_embedding_batch_inline(emulator: RunningEmulator, transport: str) -> None:
    """Inline embeddings come back as inlined embed-content responses, one per content."""
    client = aio_client(emulator, transport, retry_options=no_retry())
    src = {
        "inlined_requests": {
            "contents": [{"parts": [{"text": t}]} for t in ("one", "two", "three")],
            "config": {"output_dimensionality": 4, "task_type": "SEMANTIC_SIMILARITY"},
        }
    }
    job = await client.aio.batches.create_embeddings(model=EMBED_MODEL, src=src)  # type: ignore[arg-type]
    assert job.name is not None
    for _ in range(100):
        done = await client.aio.batches.get(name=job.name)
        if done.state == types.JobState.JOB_STATE_SUCCEEDED:
            break
        await asyncio.sleep(0.05)
    assert done.dest is not None
    responses = done.dest.inlined_embed_content_responses
    assert responses is not None
    assert len(responses) == 3
    vectors = [
        r.response.embedding.values for r in responses if r.response and r.response.embedding
    ]
    assert [len(v or []) for v in vectors] == [4, 4, 4]
    await client.aio.aclose()


@pytest.mark.parametrize("emulator_config", [SLOW])
def test_embedding_batch_cancel(emulator: RunningEmulator) -> None:
    """An embedding batch cancels like any other and then reports CANCELLED."""
    client = sync_client(emulator)
    job = client.batches.create_embeddings(
        model=EMBED_MODEL, src={"file_name": upload(client, [embed_line("a", "x")])}
    )
    assert job.name is not None
    client.batches.cancel(name=job.name)
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_CANCELLED


# -- per-request validation -----------------------------------------------------------------


@pytest.mark.parametrize("emulator_config", [dataclasses.replace(FAST, answer_invalid_lines=True)])
def test_unknown_fields_get_per_request_errors(emulator: RunningEmulator) -> None:
    """With --answer-invalid-lines, lines naming fields the API lacks get the service's
    error; the rest are answered, in either JSON spelling."""
    client = sync_client(emulator)
    lines = [
        generate_line("camel", generationConfig={"temperature": 0.2, "maxOutputTokens": 8}),
        generate_line("snake", generation_config={"max_output_tokens": 8}),
        generate_line("nested-ok", generationConfig={"thinkingConfig": {"thinking_budget": 0}}),
        generate_line("typo", generationConfig={"temprature": 0.2}),
        generate_line("misplaced", generationConfig={"safetySettings": []}),
        generate_line("root-typo", temprature=1),
        {"key": "deep", "request": {"contents": [{"parts": [{"txt": "hi"}]}]}},
        generate_line("type", generation_config={"temperature": "hot"}),
    ]
    job = client.batches.create(model=MODEL, src=upload(client, lines))
    assert job.name is not None
    rows = output_lines(client, wait_state(client, emulator, job.name, "JOB_STATE_SUCCEEDED"))
    assert {k for k, row in rows.items() if "response" in row} == {"camel", "snake", "nested-ok"}
    unknown = 'Invalid JSON payload received. Unknown name "{}"{}: Cannot find field.'
    expected = {
        "typo": unknown.format("temprature", " at 'generation_config'"),
        "misplaced": unknown.format("safetySettings", " at 'generation_config'"),
        "root-typo": unknown.format("temprature", ""),
        "deep": unknown.format("txt", " at 'contents[0].parts[0]'"),
        "type": "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"",
    }
    for key, message in expected.items():
        assert rows[key]["error"] == {
            "code": 400,
            "message": message,
            "status": "INVALID_ARGUMENT",
        }, key
    stats = client.batches.get(name=job.name)
    assert stats.state == types.JobState.JOB_STATE_SUCCEEDED


def test_inline_request_with_unknown_field_fails_the_create(emulator: RunningEmulator) -> None:
    """Inline requests are part of the create body: a bad field refuses the whole create."""
    client = sync_client(emulator)
    bad = {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temprature": 1}}
    with httpx_client(emulator) as http:
        response = http.post(
            f"/v1beta/models/{MODEL}:batchGenerateContent",
            json={"batch": {"inputConfig": {"requests": {"requests": [{"request": bad}]}}}},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["message"] == (
        'Invalid JSON payload received. Unknown name "temprature" at '
        "'batch.input_config.requests.requests[0].request.generation_config': Cannot find field."
    )
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert emulator.state()["batches"] == []
    # The SDK's own inline requests pass the same check.
    ok = client.batches.create(
        model=MODEL,
        src=[
            types.InlinedRequest(
                contents="hi",
                config=types.GenerateContentConfig(
                    temperature=0.1,
                    system_instruction="terse",
                    safety_settings=[
                        types.SafetySetting(
                            category=types.HarmCategory.HARM_CATEGORY_HATE_SPEECH,
                            threshold=types.HarmBlockThreshold.BLOCK_ONLY_HIGH,
                        )
                    ],
                    thinking_config=types.ThinkingConfig(thinking_budget=0),
                ),
            )
        ],
    )
    assert ok.name is not None


def httpx_client(emulator: RunningEmulator) -> Any:
    from tests.helpers import sdk_httpx

    return sdk_httpx.Client(base_url=emulator.base_url, headers={"x-goog-api-key": "k"}, timeout=30)


# -- files:register ---------------------------------------------------------------------------


def test_register_files_is_permission_denied(emulator: RunningEmulator) -> None:
    """files:register answers 403 PERMISSION_DENIED, as for a caller without GCS access."""
    client = sync_client(emulator)
    with pytest.raises(errors.ClientError) as info:
        client.files.register_files(
            auth=Credentials(token="not-a-real-token"),  # type: ignore[no-untyped-call]
            uris=["gs://some-bucket/doc.pdf"],
        )
    assert info.value.code == 403
    assert info.value.status == "PERMISSION_DENIED"
    assert "gs://some-bucket/doc.pdf" in str(info.value.message)


# -- the unfinished-jobs limit -------------------------------------------------------------------


def test_unfinished_limit_is_exact_under_concurrency() -> None:
    """Many concurrent creates against a small limit: exactly the limit is accepted."""
    limit, attempts = 5, 40
    config = EmulatorConfig(port=0, processing_seconds=300, max_unfinished_batches=limit)
    with EmulatorThread(config) as emu:
        client = sync_client(emu)
        source = upload(client, [generate_line(f"k{i}") for i in range(50)])

        async def fire() -> list[BaseException | types.BatchJob]:
            aio = aio_client(emu, "aiohttp", retry_options=no_retry())
            try:
                creates = [aio.aio.batches.create(model=MODEL, src=source) for _ in range(attempts)]
                return await asyncio.gather(*creates, return_exceptions=True)
            finally:
                await aio.aio.aclose()

        results = asyncio.run(fire())
        accepted = [r for r in results if isinstance(r, types.BatchJob)]
        refused = [r for r in results if isinstance(r, errors.ClientError) and r.code == 429]
        assert len(accepted) == limit
        assert len(refused) == attempts - limit
        live = [b for b in emu.state()["batches"] if b["state"] == "BATCH_STATE_PENDING"]
        assert len(live) == limit


def test_jsonl_lines_helper_is_valid_input() -> None:
    """The shared helper's lines pass the request schema (guards the other tests)."""
    from gembatch_async._schema import GENERATE, check_request

    for raw in jsonl_lines(3).splitlines():
        assert check_request(json.loads(raw)["request"], GENERATE) == []
