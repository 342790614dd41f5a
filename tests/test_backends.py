"""The backend seam from outside: one journal holding both kinds of job, the job
commands opening the backend each line records, and Vertex output lines converted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gembatch_async import SubmitSettings, submit
from gembatch_async._storage import converted_line
from gembatch_async.emulator import EmulatorConfig

from .helpers import FAST_RETRY, cli_env, make_inputs, read_journal, run_cli
from .services import Service


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, processing_seconds=0.5)])
@pytest.mark.parametrize("service", ["vertex"], indirect=True)
def test_one_journal_holds_both_backends_and_job_commands_need_no_flags(
    service: Service, tmp_path: Path
) -> None:
    """A file submitted to Gemini and one to Vertex share a journal; status, download and
    cleanup then work on both with no --backend, --project or --bucket."""
    gemini_in, vertex_in = (p.name for p in make_inputs(tmp_path, 2, lines=3))
    gemini_env = cli_env(service.emulator)
    first = run_cli(["submit", gemini_in], cwd=tmp_path, env=gemini_env)
    assert first.returncode == 0, first.stderr
    second = run_cli(["submit", vertex_in], cwd=tmp_path, env=service.env())
    assert second.returncode == 0, second.stderr
    lines = read_journal(tmp_path / "job-info.jsonl")
    assert [line.get("backend") for line in lines] == [None, "vertex"]
    assert lines[1]["project"]
    assert lines[1]["bucket"].startswith("gs://")
    # Only the endpoints (emulators) and the Gemini key: no backend selection at all.
    env = {**gemini_env, "GOOGLE_VERTEX_BASE_URL": service.emulator.base_url}
    env["STORAGE_EMULATOR_HOST"] = service.storage.url if service.storage else ""
    status = run_cli(["status", "--watch", "--interval", "0.2"], cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("SUCCEEDED") >= 2, status.stdout
    download = run_cli(["download"], cwd=tmp_path, env=env)
    assert download.returncode == 0, download.stderr
    for name in (gemini_in, vertex_in):
        results = [json.loads(x) for x in (tmp_path / "results" / name).read_text().splitlines()]
        assert [r["key"] for r in results] == ["k0", "k1", "k2"]
        assert all("response" in r for r in results)
    cleanup = run_cli(["cleanup"], cwd=tmp_path, env=env)
    assert cleanup.returncode == 0, cleanup.stderr
    assert service.uploads() == []
    assert [f for f in service.emulator.state()["files"] if f["source"] == "UPLOADED"] == []


@pytest.mark.asyncio
async def test_the_files_api_storage_quota_does_not_hold_back_vertex(
    service: Service, tmp_path: Path
) -> None:
    """Past the (here tiny) 20 GB Files API quota Gemini defers files; a bucket has none."""
    paths = make_inputs(tmp_path / "in", 3)
    settings = SubmitSettings(retry=FAST_RETRY, storage_quota_bytes=100)
    summary = await submit(
        [str(p) for p in paths],
        settings=settings,
        job_info=tmp_path / "j.jsonl",
        **service.submit_kwargs(),
    )
    expected = (3, 0) if service.kind == "vertex" else (1, 2)
    assert (summary.submitted, summary.deferred) == expected


def test_vertex_output_lines_become_batch_api_lines() -> None:
    """A response keeps its key; a refused request's status text becomes its error."""
    good = {"key": "a", "status": "", "request": {}, "response": {"candidates": []}}
    refused = {
        "key": "b",
        "status": 'Bad Request: {"error": {"code": 400, "message": "no", "status": '
        '"INVALID_ARGUMENT"}}',
        "request": {},
    }
    assert json.loads(converted_line(json.dumps(good).encode())) == {
        "key": "a",
        "response": {"candidates": []},
    }
    assert json.loads(converted_line(json.dumps(refused).encode())) == {
        "key": "b",
        "error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "no"},
    }
    assert converted_line(b"not json\n") == b"not json\n"


def test_hostile_vertex_output_lines_pass_unchanged_for_results_to_report() -> None:
    """NaN and a line nested 100,000 deep: passed on as they are (for _results to name by
    line), never a RecursionError that stops every file (issue 17, item 8)."""
    nan = b'{"key": "a", "status": "", "response": NaN}\n'
    deep = b'{"key": "b", "status": "", "response": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    assert converted_line(nan) == nan
    assert converted_line(deep) == deep
