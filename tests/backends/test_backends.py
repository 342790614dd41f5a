"""The backend seam from outside: one journal holding both kinds of job, the job
commands opening the backend each line records, and Vertex output lines converted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import google.auth.credentials
import pytest
from google.cloud import storage

from gembatch_async import SubmitSettings, submit
from gembatch_async._backends._gcs import converted_line, is_output_shard
from gembatch_async._backends.vertex import vertex_session
from gembatch_async._errors import PermanentApiError, UsageError
from gembatch_async._inputs import JobLimits
from gembatch_async.emulator import EmulatorConfig

from ..conftest import TEST_BUCKET
from ..helpers import FAST_RETRY, cli_env, make_inputs, read_journal, run_cli
from ..services import BUCKET_URI, Service


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


def _request(key: str, **request: Any) -> str:
    body = {"contents": [{"role": "user", "parts": [{"text": "q"}]}], **request}
    return json.dumps({"key": key, "request": body})


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels - 1):
        value = {"inner": value}
    return value


#: Lines Vertex's table import fails the whole job on, after one fine line 1.
IMPORT_REFUSED = [
    _request("ok", generationConfig={"responseJsonSchema": {"type": "string"}}),
    _request("search", tools=[{"googleSearch": {}}]),
    _request("types", generationConfig={"responseJsonSchema": {"type": ["string", "null"]}}),
    _request("defs", generationConfig={"responseJsonSchema": {"$defs": {"a": {"type": "string"}}}}),
    _request("deep", generationConfig={"responseJsonSchema": _deep(13)}),
]


@pytest.mark.parametrize("service", ["gemini", "vertex"], indirect=True)
def test_vertex_preflight_refuses_what_its_table_import_fails_on(
    service: Service, tmp_path: Path
) -> None:
    """Issue 16: on Vertex, a line its import would fail the whole job on is refused
    before anything is uploaded, FILE:LINE: field path: reason, exit 2. The Gemini API
    reads lines as requests, so the same file goes there."""
    (tmp_path / "in.jsonl").write_text("".join(line + "\n" for line in IMPORT_REFUSED))
    result = run_cli(["submit", "in.jsonl"], cwd=tmp_path, env=service.env())
    if service.kind == "gemini":
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stdout + result.stderr
    for expected in (
        "in.jsonl:2: request.tools[0].googleSearch: an empty object",
        "in.jsonl:3: request.generationConfig.responseJsonSchema.type: a list here but a "
        "string on line 1",
        'in.jsonl:4: request.generationConfig.responseJsonSchema.$defs: "$defs" is not',
        "in.jsonl:5: request.generationConfig.responseJsonSchema.inner.inner.inner.inner"
        ".inner.inner.inner.inner.inner.inner.inner.inner.leaf: nested deeper than 15 levels",
    ):
        assert expected in result.stderr, result.stderr
    assert "in.jsonl:1:" not in result.stderr
    assert service.uploads() == []
    assert service.creates() == 0


def test_split_limits_follow_the_backend() -> None:
    """Unasked, a job takes what its backend allows: 2 GB on Gemini; 1 GB and 200,000
    requests on Vertex. More than Vertex allows is a usage error, not a failed job."""
    assert JobLimits.of(None, None, vertex=False) == JobLimits(2 * 10**9, None)
    assert JobLimits.of(None, None, vertex=True) == JobLimits(10**9, 200_000)
    assert JobLimits.of(5000, 7, vertex=True) == JobLimits(5000, 7)
    with pytest.raises(UsageError, match="1GB"):
        JobLimits.of(10**9 + 1, None, vertex=True)
    with pytest.raises(UsageError, match="200,000"):
        JobLimits.of(None, 200_001, vertex=True)


@pytest.mark.parametrize("service", ["vertex"], indirect=True)
def test_vertex_splits_past_200000_requests_by_default(service: Service, tmp_path: Path) -> None:
    """A 200,001-request input on Vertex is two jobs without any --max-* option (the
    dry run shows the parts; nothing is uploaded); asking for 2GB a job is refused."""
    request = _request("KEY")  # one line's text, its key filled in per line (cheap)
    lines = (request.replace('"KEY"', f'"k{i}"') for i in range(200_001))
    (tmp_path / "big.jsonl").write_text("".join(line + "\n" for line in lines))
    env = service.env()
    dry = run_cli(["submit", "--dry-run", "--no-schema-check", "big.jsonl"], cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "big.jsonl (part 1/2) (200000 requests" in dry.stdout, dry.stdout
    assert "big.jsonl (part 2/2) (1 request" in dry.stdout, dry.stdout
    refused = run_cli(["submit", "--max-bytes-per-job", "2GB", "big.jsonl"], cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert "at most 1000000000 bytes (1GB) on the Vertex backend" in refused.stderr
    assert service.uploads() == []
    assert service.creates() == 0


@pytest.mark.parametrize(
    "emulator_config", [EmulatorConfig(port=0, processing_seconds=0.5, vertex_output_shards=3)]
)
@pytest.mark.parametrize("service", ["vertex"], indirect=True)
def test_results_are_read_from_every_output_shard(service: Service, tmp_path: Path) -> None:
    """Issue 16: output written in shards (predictions.jsonl-0000N-of-00003) is read in
    full: every request's answer reaches the results file."""
    (name,) = (p.name for p in make_inputs(tmp_path, 1, lines=7))
    result = run_cli(["run", "--interval", "0.2", name], cwd=tmp_path, env=service.env())
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(x) for x in (tmp_path / "results" / name).read_text().splitlines()]
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(7)]
    assert all("response" in r for r in rows)


def test_output_shard_names() -> None:
    """Every naming of prediction files the evidence shows; nothing else in the folder."""
    for name in (
        "predictions.jsonl",
        "predictions_0001.jsonl",
        "predictions.jsonl-00000-of-00002",
        "prediction.results-00001-of-00002",
    ):
        assert is_output_shard(name), name
    for name in (
        "incremental_predictions.jsonl",
        "predictions.jsonl.metadata",
        "prediction.errors_stats-00000-of-00001",
        "errors_0001.jsonl",
        "sub/predictions.jsonl",
    ):
        assert not is_output_shard(name), name


@pytest.mark.asyncio
@pytest.mark.parametrize("service", ["vertex"], indirect=True)
async def test_only_a_jobs_output_folder_is_ever_deleted_whole(service: Service) -> None:
    """A folder delete is refused unless it is one job's folder under our out/<token>/:
    not the bucket, not the prefix, not out/ (whatever name reaches the backend)."""
    assert service.vertex is not None
    inside = f"{BUCKET_URI}/out/gba-1/prediction-model-T/predictions.jsonl"
    keep = [f"{BUCKET_URI}/gba-x.jsonl", f"{BUCKET_URI}/out/gba-1/other.jsonl", inside]
    for uri in keep:
        _put_object(service, uri)
    async with vertex_session(service.vertex) as api:
        for folder in (
            f"gs://{TEST_BUCKET}/",
            f"{BUCKET_URI}/",
            f"{BUCKET_URI}/out/",
            f"{BUCKET_URI}/out/gba-1/",
            f"{BUCKET_URI}/out/gba-1/../../",
            f"gs://{TEST_BUCKET}/elsewhere/out/gba-1/prediction-model-T/",
        ):
            with pytest.raises(PermanentApiError, match="not a job's output folder"):
                await api.delete_file(folder)
        assert sorted(keep) == sorted(_bucket_objects(service))
        assert await api.delete_file(f"{BUCKET_URI}/out/gba-1/prediction-model-T/")
        assert not await api.delete_file(f"{BUCKET_URI}/out/gba-1/prediction-model-T/")
    assert sorted(_bucket_objects(service)) == sorted(keep[:2])


def test_hostile_vertex_output_lines_pass_unchanged_for_results_to_report() -> None:
    """NaN and a line nested 100,000 deep: passed on as they are (for _results to name by
    line), never a RecursionError that stops every file (issue 17, item 8)."""
    nan = b'{"key": "a", "status": "", "response": NaN}\n'
    deep = b'{"key": "b", "status": "", "response": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    assert converted_line(nan) == nan
    assert converted_line(deep) == deep
