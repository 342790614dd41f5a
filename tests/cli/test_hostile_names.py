"""Issue 17, second hostile pass: names, paths, keys and bounds a user may give us.

Each name is checked by one rule of its kind, at parse time and in the library;
a path is shown by one rendering; errors of several jobs come out as one clear line.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import types

import gembatch_async
from gembatch_async import GembatchError, SubmitSettings, UsageError, VertexTarget
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import (
    FAST_RETRY,
    TEST_API_KEY,
    cli_env,
    finish_jobs,
    run_cli,
    write_jsonl,
)

BAD_NAMES = [
    pytest.param(["-m", "models/../../x"], id="model-dotdot"),
    pytest.param(["-m", "gemini?x=1"], id="model-query"),
    pytest.param(["-m", ""], id="model-empty"),
    pytest.param(["--location", "us-central1/../x"], id="location-dotdot"),
    pytest.param(["--project", "p/../q"], id="project-slash"),
    pytest.param(["--bucket", "gs://bucket-x/../../etc"], id="bucket-dotdot"),
    pytest.param(["--bucket", "gs://Bad_Bucket"], id="bucket-uppercase"),
    pytest.param(["--mime-type", "application/jsönl"], id="mime-non-ascii"),
]


def _placed(args: list[str]) -> list[str]:
    """The backend flags go before the command, the others after it."""
    if args[0] in ("--location", "--project", "--bucket"):
        return ["--backend", "vertex", *args, "submit", "a.jsonl"]
    return ["submit", *args, "a.jsonl"]


@pytest.mark.promise("one-line-no-traceback")
@pytest.mark.parametrize("args", BAD_NAMES)
def test_a_bad_name_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    """A model, project, location, bucket or MIME type that is not a name of its kind:
    exit 2 and one clear line at parse time, nothing sent, no "unexpected"."""
    write_jsonl(tmp_path / "a.jsonl", 1)
    result = run_cli(["--emulator", *_placed(args)], cwd=tmp_path, env=cli_env(None), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unexpected" not in result.stderr
    assert "error:" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "job-info.jsonl").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("GEMBATCH_MODEL", "models/../../x", id="model"),
        pytest.param("GOOGLE_CLOUD_LOCATION", "us-central1/../x", id="location"),
        pytest.param("GOOGLE_CLOUD_PROJECT", "p?q", id="project"),
        pytest.param("GEMBATCH_BUCKET", "gs://bucket-x/a/../../b", id="bucket"),
    ],
)
def test_a_bad_name_from_the_environment_is_a_usage_error(
    tmp_path: Path, name: str, value: str
) -> None:
    """The environment's defaults pass the same rule as the flags."""
    write_jsonl(tmp_path / "a.jsonl", 1)
    env = cli_env(
        None,
        GEMINI_API_KEY="k",
        GOOGLE_CLOUD_PROJECT="my-project",
        GOOGLE_CLOUD_LOCATION="us-central1",
        GEMBATCH_BUCKET="gs://bucket-x",
        GOOGLE_VERTEX_BASE_URL="http://127.0.0.1:9",
        STORAGE_EMULATOR_HOST="http://127.0.0.1:9",
    )
    env[name] = value
    backend = [] if name == "GEMBATCH_MODEL" else ["--backend", "vertex"]
    result = run_cli([*backend, "submit", "a.jsonl"], cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unexpected" not in result.stderr
    assert name in result.stderr


@pytest.mark.parametrize(
    "model", ["gemini-2.5-flash", "models/gemini-2.5-flash", "publishers/google/models/x-1.0"]
)
def test_the_forms_the_sdk_accepts_stay_accepted(model: str) -> None:
    """A model id, models/ID and Vertex's publishers/google/models/ID are models/ID."""
    assert SubmitSettings(model=model).model_resource.startswith("models/")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: SubmitSettings(model="models/../../x"), id="model"),
        pytest.param(lambda: SubmitSettings(model=""), id="model-empty"),
        pytest.param(lambda: SubmitSettings(mime_type="text/plaïn"), id="mime"),
        pytest.param(lambda: VertexTarget(location="us-central1/../x").resolved({}), id="location"),
        pytest.param(lambda: VertexTarget(project="a b").resolved({}), id="project"),
        pytest.param(lambda: VertexTarget(bucket="gs://b-x/./y").resolved({}), id="bucket"),
    ],
)
def test_the_library_refuses_the_same_names(make: object) -> None:
    """The library's settings and Vertex target apply the same rules: a UsageError."""
    with pytest.raises(UsageError):
        make()  # type: ignore[operator]


@pytest.mark.promise("key-never-shown")
@pytest.mark.parametrize("key", ["secret\nkey", "sécret-key"], ids=["newline", "latin1"])
def test_an_unsendable_key_with_many_jobs_is_one_clear_line(
    emulator: RunningEmulator, tmp_path: Path, key: str
) -> None:
    """Two recorded jobs and a key no header can carry: every job command says so
    once, exit 2, never "unexpected ExceptionGroup", never the key."""
    for name in ("a", "b"):
        write_jsonl(tmp_path / f"{name}.jsonl", 1, tag=name)
    assert (
        run_cli(["submit", "a.jsonl", "b.jsonl"], cwd=tmp_path, env=cli_env(emulator)).returncode
        == 0
    )
    env = cli_env(emulator, GEMINI_API_KEY=key)
    for command in (["status"], ["download"], ["cancel"], ["cleanup"]):
        result = run_cli(command, cwd=tmp_path, env=env, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert "unexpected" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "secret" not in result.stderr + result.stdout


@pytest.mark.promise("one-line-no-traceback")
def test_errors_of_several_jobs_are_each_one_clear_line(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """No key at all with two unfinished jobs: status fails in each job's task; the CLI
    shows the error once with its exit code, not "unexpected ExceptionGroup"."""
    for name in ("a", "b"):
        write_jsonl(tmp_path / f"{name}.jsonl", 1, tag=name)
    emulator.set_faults("")
    assert (
        run_cli(["submit", "a.jsonl", "b.jsonl"], cwd=tmp_path, env=cli_env(emulator)).returncode
        == 0
    )
    env = cli_env(None, GOOGLE_GEMINI_BASE_URL=emulator.base_url)
    result = run_cli(["status"], cwd=tmp_path, env=env, timeout=60)
    assert "unexpected" not in result.stderr, result.stderr
    assert result.stderr.count("no API key") == 1, result.stderr
    assert result.returncode == 2


#: Values no file name can have, for each kind of path argument.
NUL_ARGUMENTS = {"paths": ["a\0.jsonl"], "job_info": "j\0.jsonl", "out_dir": "o\0"}


async def _call(function: Any, arguments: dict[str, Any]) -> None:
    """Call an entry point: a coroutine function, or an async context manager."""
    result = function(**arguments)
    if inspect.isawaitable(result):
        await result
        return
    async with result:
        pass


@pytest.mark.asyncio
async def test_no_entry_point_leaks_a_bare_error_for_a_bad_path(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Every public function with a path argument answers a NUL in it with a
    GembatchError (a usage or pre-flight error), never a bare ValueError."""
    journal = tmp_path / "job-info.jsonl"
    good = write_jsonl(tmp_path / "a.jsonl", 1)
    await gembatch_async.submit(
        [good], job_info=journal, api_key=TEST_API_KEY, base_url=emulator.base_url
    )
    connection: dict[str, Any] = {"api_key": TEST_API_KEY, "base_url": emulator.base_url}
    checked: list[str] = []
    async with gembatch_async.open_jobs(journal, **connection) as jobs:
        valid = {
            "jobs": jobs,
            "paths": [str(good)],
            "job_info": journal,
            "out_dir": tmp_path / "out",
            "on_change": lambda status: None,
            "settings": SubmitSettings(retry=FAST_RETRY),
            **connection,
        }
        for name in gembatch_async.__all__:
            function = getattr(gembatch_async, name)
            if not inspect.isfunction(function):
                continue
            parameters = inspect.signature(function).parameters
            given = {p: valid[p] for p in parameters if p in valid}
            for bad in [p for p in parameters if p in NUL_ARGUMENTS]:
                with pytest.raises(GembatchError):
                    await _call(function, {**given, bad: NUL_ARGUMENTS[bad]})
                checked.append(f"{name}({bad})")
    assert len(checked) >= 10, checked


# -- names that are not UTF-8, or hold a newline --------------------------------------
RUN = ["run", "--interval", "0.2", "--retry-max-delay", "0.05"]
NOT_UTF8 = os.fsdecode(b"caf\xe9.jsonl")
NEWLINE = "new\nline.jsonl"


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=0.5), id="fast")]
)
@pytest.mark.promise("names-never-forge-lines")
def test_names_not_utf8_or_with_a_newline_go_all_the_way(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A name that is not UTF-8 and one with a newline: run submits, downloads and
    cleans up all three files (no "unexpected", none cancelled); every output line is
    one line with such names quoted; the journal is valid UTF-8 JSON holding the exact
    names; --json stays JSON."""
    names = [NOT_UTF8, NEWLINE, "plain.jsonl"]
    for name in names:
        write_jsonl(tmp_path / name, 2, tag=name)
    env = cli_env(emulator)
    result = run_cli([*RUN, *names], cwd=tmp_path, env=env, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "unexpected" not in output
    assert "'caf\\xe9.jsonl'" in result.stdout
    assert "'new\\nline.jsonl'" in result.stdout
    for line in result.stdout.splitlines():  # no line is a fragment of a name
        assert line.startswith(("[", "job ", "results ", "tokens: ")), line
    assert {os.fsencode(n) for n in os.listdir(os.fsencode(tmp_path / "results"))} >= {
        os.fsencode(n) for n in names
    }
    raw = (tmp_path / "job-info.jsonl").read_bytes()
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]  # strict UTF-8
    assert {line["input_file"] for line in lines} == set(names)
    status = run_cli(["status", "--json"], cwd=tmp_path, env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    shown = [json.loads(line)["path"] for line in status.stdout.splitlines()]
    assert sorted(shown) == sorted(names)
    assert [b["displayName"] for b in emulator.state()["batches"] if "caf" in b["displayName"]]


@pytest.mark.promise("names-never-forge-lines")
def test_a_name_with_a_newline_cannot_forge_an_output_line(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A file named to look like a second output line prints as one quoted line."""
    forged = "a.jsonl\nsubmitted 2, skipped 0, failed 0 in 0.01s"
    write_jsonl(tmp_path / forged, 1)
    result = run_cli(["submit", forged], cwd=tmp_path, env=cli_env(emulator))
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("submitted ")] == [
        result.stdout.splitlines()[-1]
    ], result.stdout
    assert len(result.stdout.strip().splitlines()) == 2  # the file's line and the summary


# -- run's summary and cleanup's memory ------------------------------------------------
@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=0.6), id="fast")]
)
def test_run_counts_a_resubmission_as_submitted(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The recorded batch is gone; run --retry-failed submits the file again, and its
    summary says so ("submitted 1"), not "submitted 0"."""
    write_jsonl(tmp_path / "a.jsonl", 2)
    env = cli_env(emulator)
    assert run_cli(["submit", "a.jsonl"], cwd=tmp_path, env=env).returncode == 0
    (batch,) = emulator.state()["batches"]
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emulator.base_url))
    client.batches.delete(name=batch["name"])
    again = run_cli([*RUN, "--retry-failed", "a.jsonl"], cwd=tmp_path, env=env, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(submitted 1, already recorded 1)" in again.stdout.splitlines()[-1], again.stdout


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=0.5), id="fast")]
)
@pytest.mark.promise("run-deletes-upload")
def test_cleanup_skips_uploads_the_journal_records_as_deleted(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """run deleted its upload: cleanup --dry-run lists nothing and cleanup asks nothing.
    An upload gone behind our back is reported "already gone" once, then never again."""
    write_jsonl(tmp_path / "a.jsonl", 2, tag="a")
    write_jsonl(tmp_path / "b.jsonl", 2, tag="b")
    env = cli_env(emulator)
    assert run_cli([*RUN, "a.jsonl"], cwd=tmp_path, env=env, timeout=60).returncode == 0
    dry = run_cli(["cleanup", "--dry-run"], cwd=tmp_path, env=env)
    assert "would delete" not in dry.stdout, dry.stdout
    assert run_cli(["submit", "b.jsonl"], cwd=tmp_path, env=env).returncode == 0
    (upload,) = [f["name"] for f in emulator.state()["files"] if f["source"] == "UPLOADED"]
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emulator.base_url))
    client.files.delete(name=upload)
    finish_jobs(emulator, 0.5)
    first = run_cli(["cleanup"], cwd=tmp_path, env=env)
    assert first.stdout.count("already gone") == 1, first.stdout
    deletes = emulator.state()["requests"]["delete"]["count"]
    second = run_cli(["cleanup"], cwd=tmp_path, env=env)
    assert "already gone" not in second.stdout, second.stdout
    assert emulator.state()["requests"]["delete"]["count"] == deletes, "nothing asked again"


@pytest.mark.parametrize(
    "cause", [None, ConnectionError("refused")], ids=["no-cause", "connection-error"]
)
def test_storage_clients_own_retry_giving_up_is_one_of_our_errors(
    cause: BaseException | None,
) -> None:
    """google-cloud-storage's RetryError (its 120 s deadline passed) is an ApiError that
    says what happened, not "unexpected RetryError"."""
    exceptions = pytest.importorskip("google.api_core.exceptions")
    from gembatch_async._backends._gcs import _storage_error

    mapped = _storage_error(exceptions.RetryError("Timeout of 120.0s exceeded", cause))
    assert isinstance(mapped, gembatch_async.ApiError)
    assert "Cloud Storage" in str(mapped)


@pytest.mark.asyncio
async def test_a_single_path_instead_of_a_list_is_refused(tmp_path: Path) -> None:
    """submit("a.jsonl") would take each letter for a file: a UsageError, nothing read."""
    with pytest.raises(UsageError, match="list of paths"):
        await gembatch_async.submit(str(tmp_path / "a.jsonl"), job_info=tmp_path / "j.jsonl")
    assert not (tmp_path / "j.jsonl").exists()
