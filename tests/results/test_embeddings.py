"""Embedding inputs submit, report and download like any other (CLI against the emulator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google import genai
from google.genai import types

from gembatch_async.emulator import EmulatorConfig, RunningEmulator
from tests.emulator.test_emulator_support import raw_get

from ..helpers import (
    TEST_API_KEY,
    cli_env,
    read_journal,
    request_total,
    run_cli,
    write_jsonl,
)

EMBED_MODEL = "gemini-embedding-001"
FAST = pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=1.0), id="fast")]
)


def write_embed_jsonl(path: Path, lines: int, dimensions: int = 8) -> Path:
    with path.open("w") as handle:
        for i in range(lines):
            request = {
                "content": {"parts": [{"text": f"document {i}"}]},
                "taskType": "RETRIEVAL_DOCUMENT",
                "output_dimensionality": dimensions,
            }
            handle.write(json.dumps({"key": f"doc-{i}", "request": request}) + "\n")
    return path


@FAST
def test_embeddings_submit_status_download(emulator: RunningEmulator, tmp_path: Path) -> None:
    """An embed file goes through submit, status and download: an asyncBatchEmbedContent
    job, recorded, and every key answered with an embedding."""
    write_embed_jsonl(tmp_path / "docs.jsonl", 5)
    result = run_cli(
        ["submit", "-m", EMBED_MODEL, "docs.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 0, result.stderr
    assert "[1/1] submitted docs.jsonl -> batches/" in result.stdout
    (record,) = read_journal(tmp_path / "job-info.jsonl")
    assert record["model"] == f"models/{EMBED_MODEL}"
    assert record["count"] == 5
    assert emulator.state()["requests"]["create"]["count"] == 1
    client = genai.Client(
        api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url)
    )
    # The job is an embedding batch on the server (the @type of its metadata says so).
    operation = raw_get(
        emulator, f"/v1beta/{record['batch']['name']}", **{"x-goog-api-key": TEST_API_KEY}
    ).json()
    assert operation["metadata"]["@type"].endswith(".EmbedContentBatch")
    emulator.advance_clock(1.0)  # the job's processing time, without waiting for it
    got = client.batches.get(name=record["batch"]["name"])
    assert got.state == types.JobState.JOB_STATE_SUCCEEDED
    status = run_cli(["status"], cwd=tmp_path, env=cli_env(emulator))
    assert status.returncode == 0, status.stderr
    assert "SUCCEEDED" in status.stdout
    download = run_cli(["download"], cwd=tmp_path, env=cli_env(emulator))
    assert download.returncode == 0, download.stderr
    assert "downloaded docs.jsonl -> results/docs.jsonl: 5 requests, 5 answered" in (
        download.stdout
    )
    rows = [
        json.loads(text) for text in (tmp_path / "results" / "docs.jsonl").read_text().splitlines()
    ]
    assert [row["key"] for row in rows] == [f"doc-{i}" for i in range(5)]
    assert all(len(row["response"]["embedding"]["values"]) == 8 for row in rows)


def test_model_without_embeddings_stops_preflight(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Embed requests with a generation model: exit 2 naming the file and the method,
    after one models.get and nothing else."""
    write_embed_jsonl(tmp_path / "docs.jsonl", 2)
    write_jsonl(tmp_path / "prompts.jsonl", 2)
    result = run_cli(
        ["submit", "-m", "gemini-2.5-flash", "docs.jsonl", "prompts.jsonl"],
        cwd=tmp_path,
        env=cli_env(emulator),
    )
    assert result.returncode == 2
    assert (
        "models/gemini-2.5-flash: model does not support asyncBatchEmbedContent, "
        "which the embed requests of docs.jsonl need"
    ) in result.stderr
    assert "prompts.jsonl" not in result.stderr
    state = emulator.state()
    assert request_total(state) == 1  # the models.get
    assert state["files"] == []


def test_embedding_model_refuses_generate_requests(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Generate requests with an embedding model: exit 2, nothing uploaded."""
    write_jsonl(tmp_path / "prompts.jsonl", 2)
    result = run_cli(
        ["submit", "-m", EMBED_MODEL, "prompts.jsonl"], cwd=tmp_path, env=cli_env(emulator)
    )
    assert result.returncode == 2
    assert (
        "does not support batchGenerateContent, which the generate requests of prompts.jsonl"
        in (result.stderr)
    )
    assert emulator.state()["files"] == []


def test_dry_run_accepts_an_embed_file(emulator: RunningEmulator, tmp_path: Path) -> None:
    """--dry-run with an embedding model and embed requests: all checks pass, nothing sent."""
    write_embed_jsonl(tmp_path / "docs.jsonl", 3)
    result = run_cli(
        ["submit", "--dry-run", "-m", EMBED_MODEL, "docs.jsonl"],
        cwd=tmp_path,
        env=cli_env(emulator),
    )
    assert result.returncode == 0, result.stderr
    assert "docs.jsonl" in result.stdout
    assert emulator.state()["files"] == []
