"""The emulator's defaults are the Gemini API's answers, each from a cited source
(docs/fidelity.md): storage quota, output files, input files the service refuses.
Every test drives the real google-genai SDK over HTTP."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import errors

from gembatch_async.emulator import EmulatorConfig, RunningEmulator
from tests.emulator.test_emulator_support import (
    AIOHTTP_SUBCLASS_WARNING,
    API_KEY,
    MODEL,
    jsonl_lines,
    sync_client,
    wait_state,
)
from tests.helpers import cli_env, sdk_httpx

from ..zygote import cli_popen

pytestmark = pytest.mark.filterwarnings(AIOHTTP_SUBCLASS_WARNING)

FAST = EmulatorConfig(port=0, processing_seconds=1.0)
GIB = 2**30


def _upload(client: genai.Client, data: bytes) -> str:
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})
    assert uploaded.name is not None
    return uploaded.name


def _error(exc: pytest.ExceptionInfo[errors.ClientError]) -> dict[str, Any]:
    body = exc.value.details
    assert isinstance(body, dict)
    error = body["error"]
    assert isinstance(error, dict)
    return error


# -- storage quota ----------------------------------------------------------------------------


def test_storage_quota_is_20_gib_by_default(emulator: RunningEmulator) -> None:
    """Uploads may fill the project up to 21,474,836,480 bytes, not one byte more
    (python-genai#1172 quotes the quota's value)."""
    assert EmulatorConfig().storage_quota_bytes == 21_474_836_480

    def start(size: int) -> Any:
        with sdk_httpx.Client(base_url=emulator.base_url) as http:
            return http.post(
                "/upload/v1beta/files",
                headers={
                    "x-goog-api-key": API_KEY,
                    "X-Goog-Upload-Protocol": "resumable",
                    "X-Goog-Upload-Command": "start",
                    "X-Goog-Upload-Header-Content-Length": str(size),
                },
                json={"file": {"mimeType": "application/jsonl", "sizeBytes": str(size)}},
            )

    # Upload sessions in progress count against the quota; one file is at most 2 GB.
    for _ in range(10):
        assert start(2 * 10**9).status_code == 200
    assert start(20 * GIB - 20 * 10**9).status_code == 200  # the project is now full
    full = start(1)
    assert full.status_code == 429
    assert full.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


# -- output files -----------------------------------------------------------------------------


@pytest.mark.parametrize("emulator_config", [FAST])
def test_output_files_answer_400_to_get_and_delete_but_download(
    emulator: RunningEmulator,
) -> None:
    """files/batch-... has an id over 40 characters: get and delete answer 400 with the
    service's text (go-genai#436, python-genai#1613, python-genai#1759); the download
    works; once the batch is deleted the download answers 404."""
    client = sync_client(emulator)
    job = client.batches.create(model=MODEL, src=_upload(client, jsonl_lines(2)))
    assert job.name is not None
    done = wait_state(client, emulator, job.name, "JOB_STATE_SUCCEEDED")
    output = done.dest.file_name
    assert output == f"files/batch-{job.name.removeprefix('batches/')}"
    assert len(output.removeprefix("files/")) == 42

    with pytest.raises(errors.ClientError) as got:
        client.files.get(name=output)
    assert got.value.code == 400
    assert _error(got) == {
        "code": 400,
        "message": "* GetFileRequest.name: File ID (name excluding 'files/') cannot be more "
        "than 40 characters.\n",
        "status": "INVALID_ARGUMENT",
    }
    with pytest.raises(errors.ClientError) as deleted:
        client.files.delete(name=output)
    assert deleted.value.code == 400
    assert _error(deleted)["message"].startswith("* DeleteFileRequest.name: File ID")
    assert output in {f["name"] for f in emulator.state()["files"]}

    rows = [json.loads(line) for line in client.files.download(file=output).splitlines()]
    assert sorted(row["key"] for row in rows) == ["req-0", "req-1"]

    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as gone:
        client.files.download(file=output)
    assert gone.value.code == 404
    assert output not in {f["name"] for f in emulator.state()["files"]}


# -- input files the service refuses ----------------------------------------------------------


def _line(key: str, **request: Any) -> bytes:
    body = {"contents": [{"parts": [{"text": key}]}], **request}
    return json.dumps({"key": key, "request": body}).encode() + b"\n"


def test_a_line_the_service_cannot_parse_refuses_the_whole_create(
    emulator: RunningEmulator,
) -> None:
    """One bad line: the create answers 400 naming each bad line, as captured in
    inspect_ai#3257 and #5100; no batch exists afterwards, the upload stays."""
    client = sync_client(emulator)
    data = (
        _line("ok")
        + _line("typo", thinking_config={"thinking_budget": 0})
        + b"\n"
        + _line("array", systemInstruction=["terse"])
        + b"not json\n"
    )
    source = _upload(client, data)
    with pytest.raises(errors.ClientError) as refused:
        client.batches.create(model=MODEL, src=source)
    assert refused.value.code == 400
    error = _error(refused)
    assert error["status"] == "INVALID_ARGUMENT"
    column = data.splitlines()[1].index(b'"thinking_config"') + 1
    assert error["message"].splitlines() == [
        f"Error on line 2: invalid JSON, near column {column}: no such field: 'thinking_config'",
        "Error on line 4: invalid JSON, near column "
        f"{data.splitlines()[3].index(b'systemInstruction')}: "
        "unexpected character: '['; expected '{'",
        "Error on line 5: invalid JSON, near column 1: expecting value",
    ]
    state = emulator.state()
    assert state["batches"] == []
    assert [f["name"] for f in state["files"]] == [source]


@pytest.mark.parametrize(
    "emulator_config", [EmulatorConfig(port=0, refused_fields=("response_schema",))]
)
def test_refused_field_refuses_the_create_as_the_service_refused_response_schema(
    emulator: RunningEmulator,
) -> None:
    """--refuse-field: a field the schema has, refused as python-genai#1150 reports."""
    client = sync_client(emulator)
    schema = {"responseMimeType": "application/json", "responseSchema": {"type": "STRING"}}
    with pytest.raises(errors.ClientError) as refused:
        client.batches.create(
            model=MODEL, src=_upload(client, _line("a") + _line("b", generationConfig=schema))
        )
    assert _error(refused) == {
        "code": 400,
        "message": "Request contains an invalid argument.",
        "status": "INVALID_ARGUMENT",
    }
    ok = client.batches.create(model=MODEL, src=_upload(client, _line("a")))
    assert ok.name is not None
    assert [b["name"] for b in emulator.state()["batches"]] == [ok.name]


# -- expiry -----------------------------------------------------------------------------------


def test_uploads_are_deleted_48_hours_after_creation(emulator: RunningEmulator) -> None:
    """An upload past its expirationTime is gone: get answers the service's 403 for a
    missing file, list leaves it out, and its bytes no longer count against storage."""
    client = sync_client(emulator)
    name, other = _upload(client, jsonl_lines(1)), _upload(client, jsonl_lines(1))
    emulator.expire_file(name, 0)
    with pytest.raises(errors.ClientError) as gone:
        client.files.get(name=name)
    assert gone.value.code == 403
    assert [f.name for f in client.files.list()] == [other]
    assert [f["name"] for f in emulator.state()["files"]] == [other]


def test_unfinished_jobs_expire_at_48_hours_by_default() -> None:
    """The service expires a job pending or running for more than 48 h."""
    assert EmulatorConfig().expire_after_seconds == 48 * 3600


def test_the_kinder_answers_are_emulator_options(tmp_path: Path) -> None:
    """`gembatch-async emulator --answer-invalid-lines --refuse-field NAME` reaches the
    server: a bad line is answered in the output, a refused field refuses the create."""
    server = cli_popen(
        ["emulator", "--port", "0",
         "--processing-seconds", "0.5", "--answer-invalid-lines",
         "--refuse-field", "response_schema"],
        cwd=tmp_path, env=cli_env(None), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        emu = RunningEmulator("127.0.0.1", int(url.rsplit(":", 1)[1]), url)
        client = sync_client(emu)
        job = client.batches.create(
            model=MODEL, src=_upload(client, _line("ok") + _line("bad", temprature=1))
        )
        assert job.name is not None
        done = wait_state(client, emu, job.name, "JOB_STATE_SUCCEEDED")
        rows = [json.loads(x) for x in client.files.download(file=done.dest.file_name).splitlines()]
        assert {row["key"]: "error" in row for row in rows} == {"ok": False, "bad": True}
        schema = {"responseSchema": {"type": "STRING"}}
        with pytest.raises(errors.ClientError) as refused:
            client.batches.create(
                model=MODEL, src=_upload(client, _line("s", generationConfig=schema))
            )
        assert _error(refused)["message"] == "Request contains an invalid argument."
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
