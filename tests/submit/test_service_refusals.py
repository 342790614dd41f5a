"""The tool against the Gemini API's refusals (docs/fidelity.md): a create refused for
its input file's content, and output files the service will not delete."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import types

from gembatch_async import PermanentApiError, cleanup_files, open_jobs
from gembatch_async._backends._genai import GeminiApi
from gembatch_async.emulator import EmulatorConfig, RunningEmulator
from tests.helpers import (
    FAST_RETRY,
    TEST_API_KEY,
    cli_env,
    finish_jobs,
    read_journal,
    run_cli,
)

#: The service refuses a field its schema has (python-genai#1150: responseSchema in an
#: input file, 400 "Request contains an invalid argument."); pre-flight cannot know.
REFUSING = EmulatorConfig(port=0, processing_seconds=1.0, refused_fields=("responseSchema",))
OK = {"contents": [{"parts": [{"text": "hi"}]}]}
SCHEMA = {"responseMimeType": "application/json", "responseSchema": {"type": "STRING"}}


def _write(path: Path, *requests: dict[str, Any]) -> Path:
    lines = (json.dumps({"key": f"k{i}", "request": r}) for i, r in enumerate(requests))
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _client(emulator: RunningEmulator) -> genai.Client:
    options = types.HttpOptions(
        base_url=emulator.base_url, retry_options=types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=TEST_API_KEY, http_options=options)


#: (emulator, extra options, the bad request, the end of the report). The service
#: refuses a field its schema has (python-genai#1150); or, pre-flight's schema check
#: off, a line it cannot parse refuses the whole create (inspect_ai#3257).
CASES = {
    "refused-field": (
        REFUSING,
        [],
        {**OK, "generationConfig": SCHEMA},
        "400 INVALID_ARGUMENT: Request contains an invalid argument.",
    ),
    "unparsable-line": (
        EmulatorConfig(port=0, processing_seconds=1.0),
        ["--no-schema-check"],
        {**OK, "generationConfig": {"temprature": 1}},
        "no such field: 'temprature'",
    ),
}


@pytest.mark.parametrize(
    ("emulator_config", "options", "bad", "reason"),
    [pytest.param(*case, id=name) for name, case in CASES.items()],
)
@pytest.mark.promise("failed-create-deletes-upload")
@pytest.mark.parametrize("command", ["submit", "run"])
def test_a_create_refused_for_its_content_fails_that_file_and_leaves_nothing(
    emulator: RunningEmulator,
    tmp_path: Path,
    command: str,
    options: list[str],
    bad: dict[str, Any],
    reason: str,
) -> None:
    """Pre-flight passes the file, the service refuses its create with 400: that file
    is reported failed on one line with the service's reason, its upload is deleted, no
    job is recorded; the other file goes through."""
    _write(tmp_path / "good.jsonl", OK)
    _write(tmp_path / "bad.jsonl", OK, bad)
    poll = ["--interval", "0.2"] if command == "run" else []
    args = [command, *poll, *options, "good.jsonl", "bad.jsonl"]
    result = run_cli(args, cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if "bad.jsonl" in x]
    assert "] error bad.jsonl: 400 INVALID_ARGUMENT: " in line
    assert line.endswith(reason)
    assert "Traceback" not in result.stderr
    state = emulator.state()
    uploads = [f for f in state["files"] if f["source"] == "UPLOADED"]
    journal = read_journal(tmp_path / "job-info.jsonl")
    assert [line["input_file"] for line in journal] == ["good.jsonl"]
    assert [b["name"] for b in state["batches"]] == [journal[0]["batch"]["name"]]
    # Only good.jsonl's upload can be left (run deletes it once its results are in).
    assert {f["name"] for f in uploads} <= {journal[0]["uploaded_file_name"]}


@pytest.mark.asyncio
async def test_a_create_refusal_naming_lines_is_one_line(emulator: RunningEmulator) -> None:
    """The service names each bad line of an input file on a line of its own
    (inspect_ai#3257); the tool's error is one line that keeps every one of them."""
    client = _client(emulator)
    bad = {**OK, "generationConfig": {"temprature": 1}}
    data = "".join(json.dumps({"key": k, "request": bad}) + "\n" for k in "ab").encode()
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})
    assert uploaded.name is not None
    with pytest.raises(PermanentApiError) as refused:
        await GeminiApi(client).create_batch(
            model="gemini-2.5-flash", src=uploaded.name, display_name="x"
        )
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("400 INVALID_ARGUMENT: Error on line 1: invalid JSON")
    assert "; Error on line 2: invalid JSON" in message


@pytest.mark.promise("output-files-kept-reported")
@pytest.mark.asyncio
@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, processing_seconds=1.0)])
async def test_cleanup_reports_output_files_kept_by_the_service(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Library view of cleanup --outputs: the uploads are deleted, each output file the
    service refuses to delete comes back kept (not an error), and a second cleanup says
    the same without touching anything else."""
    _write(tmp_path / "a.jsonl", OK)
    result = run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    finish_jobs(emulator, 1.0)
    journal = tmp_path / "job-info.jsonl"
    for _ in range(2):
        async with open_jobs(journal, client=_client(emulator), retry=FAST_RETRY) as jobs:
            cleaned = await cleanup_files(jobs, outputs=True)
        kept = [c for c in cleaned if getattr(c, "kept", False)]
        assert len(kept) == 1
        assert kept[0].file_name.startswith("files/batch-")
        assert (kept[0].deleted, kept[0].error) == (False, None)
        others = [c for c in cleaned if not getattr(c, "kept", False)]
        assert all(c.error in (None, "already gone") for c in others)
    assert [f["source"] for f in emulator.state()["files"]] == ["GENERATED"]
