"""The backend seam from outside: one journal holding both kinds of job, the job
commands opening the backend each line records, and Vertex output lines converted."""

from __future__ import annotations

import json
from pathlib import Path

import google.auth.credentials
import pytest
from google.cloud import storage

from gembatch_async import SubmitSettings, submit
from gembatch_async._storage import converted_line
from gembatch_async.emulator import EmulatorConfig

from .conftest import TEST_BUCKET
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


def _bucket_objects(service: Service) -> list[str]:
    assert service.storage is not None
    client = storage.Client(
        project="p",
        credentials=google.auth.credentials.AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": service.storage.url},
    )
    return [f"gs://{TEST_BUCKET}/{b.name}" for b in client.list_blobs(TEST_BUCKET)]


def _put_object(service: Service, uri: str) -> None:
    assert service.storage is not None
    client = storage.Client(
        project="p",
        credentials=google.auth.credentials.AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": service.storage.url},
    )
    client.bucket(TEST_BUCKET).blob(uri.removeprefix(f"gs://{TEST_BUCKET}/")).upload_from_string(
        "{}\n"
    )


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(port=0, processing_seconds=0.5)])
@pytest.mark.parametrize("service", ["vertex"], indirect=True)
def test_cleanup_outputs_deletes_the_vertex_output_folder_and_nothing_beside_it(
    service: Service, tmp_path: Path
) -> None:
    """Issue 17 item 4: ``cleanup --outputs`` deletes every object in the job's output
    folder (it is a prefix, not an object) and reports it deleted; objects beside it,
    even a folder whose name starts the same, stay."""
    (name,) = (p.name for p in make_inputs(tmp_path, 1, lines=3))
    env = service.env()
    assert run_cli(["submit", name], cwd=tmp_path, env=env).returncode == 0
    watched = run_cli(["status", "--watch", "--interval", "0.2"], cwd=tmp_path, env=env)
    assert watched.returncode == 0, watched.stderr
    (job,) = service.jobs()
    folder = job["outputDirectory"] + "/"
    inside = [o for o in _bucket_objects(service) if o.startswith(folder)]
    assert inside, "the job wrote its predictions"
    beside = [folder.rstrip("/") + "-copy/predictions.jsonl", f"gs://{TEST_BUCKET}/keep.jsonl"]
    for uri in beside:
        _put_object(service, uri)
    cleanup = run_cli(["cleanup", "--outputs"], cwd=tmp_path, env=env)
    assert cleanup.returncode == 0, cleanup.stderr
    assert f"deleted {folder} ({name})" in cleanup.stdout, cleanup.stdout
    assert "already gone" not in cleanup.stdout
    left = _bucket_objects(service)
    assert [o for o in left if o.startswith(folder)] == []
    assert all(uri in left for uri in beside)
    assert service.uploads() == []
