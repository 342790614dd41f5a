"""What ``--emulator`` starts for a job command: a Cloud Storage emulator too when the
journal holds jobs of a backend that keeps its files there (Vertex), read from the
journal's lines, not from how their bytes happen to be spaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..helpers import cli_env, run_cli

VERTEX_FIELDS = {
    "backend": "vertex",
    "project": "emulated-project",
    "location": "us-central1",
    "bucket": "gs://emulated-bucket",
}


@pytest.mark.parametrize(("fields", "storage"), [(VERTEX_FIELDS, True), ({}, False)])
def test_a_job_command_starts_storage_only_for_a_journal_with_vertex_jobs(
    tmp_path: Path, fields: dict[str, str], storage: bool
) -> None:
    """A compact line (``"backend":"vertex"``, no spaces: a journal another tool wrote)
    still counts as a Vertex job; a Gemini journal starts no storage emulator."""
    line = {
        "input_file": "a.jsonl",
        "batch": {"name": "batches/gone", "state": "JOB_STATE_RUNNING"},
        **fields,
    }
    (tmp_path / "job-info.jsonl").write_text(json.dumps(line, separators=(",", ":")) + "\n")
    result = run_cli(["--emulator", "status"], cwd=tmp_path, env=cli_env(None))
    assert "Gemini API emulator" in result.stderr, result.stderr
    assert ("Vertex AI and Gemini API emulator" in result.stderr) is storage, result.stderr
