"""The submit pipeline as a library, against the emulator over real HTTP."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import anyio
import pytest

from gembatch_async import (
    CleanupFailed,
    Event,
    FileFailed,
    FileSkipped,
    FileSubmitted,
    PreflightError,
    SubmitSettings,
    UsageError,
    submit,
)
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import FAST_RETRY, TEST_API_KEY, make_inputs, read_journal
from ..services import Service

pytestmark = pytest.mark.asyncio


def settings(**changes: object) -> SubmitSettings:
    return dataclasses.replace(SubmitSettings(retry=FAST_RETRY, cleanup_seconds=5), **changes)  # type: ignore[arg-type]


async def run_submit(
    emulator: RunningEmulator | Service, paths: list[Path], journal: Path, **changes: object
) -> tuple[list[Event], object]:
    events: list[Event] = []
    service = emulator if isinstance(emulator, Service) else Service("gemini", emulator)
    summary = await submit(
        [str(p) for p in paths],
        settings=settings(**changes),
        job_info=journal,
        on_event=events.append,
        **service.submit_kwargs(),
    )
    return events, summary


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, latency_ms=20), id="latency")]
)
async def test_many_files_all_submitted_once(service: Service, tmp_path: Path) -> None:
    """52 files at concurrency 8: one batch each, journal = server, n counts 1..N once."""
    paths = make_inputs(tmp_path / "in", 52)
    journal = tmp_path / "job-info.jsonl"
    events, _summary = await run_submit(service, paths, journal, concurrency=8)
    done = [e for e in events if isinstance(e, FileSubmitted)]
    assert len(done) == 52
    assert sorted(e.n for e in done) == list(range(1, 53))
    assert {e.total for e in done} == {52}
    service.assert_converged(read_journal(journal), [str(p) for p in paths])
    # (Uploads to the Cloud Storage emulator are served one at a time: creates only.)
    requests = service.emulator.state()["requests"]
    for kind in ("upload", "create") if service.storage is None else ("create",):
        in_flight = requests[kind]["maxInFlight"]
        assert 1 < in_flight <= 8, f"{kind}: {in_flight} in flight"


@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, latency_ms=30), id="latency")]
)
async def test_concurrency_limit_holds(emulator: RunningEmulator, tmp_path: Path) -> None:
    """At concurrency 3 with real latency, never more than 3 uploads or creates are open."""
    paths = make_inputs(tmp_path / "in", 12)
    await run_submit(emulator, paths, tmp_path / "j.jsonl", concurrency=3)
    requests = emulator.state()["requests"]
    assert requests["upload"]["maxInFlight"] == 3
    assert 1 < requests["create"]["maxInFlight"] <= 3


@pytest.mark.promise("recorded-skipped")
async def test_rerun_skips_reports_changes_and_force(service: Service, tmp_path: Path) -> None:
    """A rerun skips everything; changed content is flagged; --force submits again."""
    emulator = service.emulator
    paths = make_inputs(tmp_path / "in", 4)
    journal = tmp_path / "job-info.jsonl"
    await run_submit(service, paths, journal)
    creates = emulator.state()["requests"]["create"]["count"]
    extra = {"key": "extra", "request": {"contents": [{"parts": [{"text": "more"}]}]}}
    paths[0].write_text(paths[0].read_text() + json.dumps(extra) + "\n")
    events, _ = await run_submit(service, paths, journal)
    skipped = [e for e in events if isinstance(e, FileSkipped)]
    assert len(skipped) == 4
    assert [e.path for e in skipped if e.changed] == [str(paths[0])]
    assert emulator.state()["requests"]["create"]["count"] == creates
    events, _ = await run_submit(service, [paths[0]], journal, force=True)
    assert [type(e) for e in events] == [FileSubmitted]
    assert len(read_journal(journal)) == 5
    assert service.creates() == creates + 1


@pytest.mark.promise("one-file-one-input")
async def test_same_path_twice_submitted_once(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The same file named twice (and via ./) is one submission."""
    (path,) = make_inputs(tmp_path / "in", 1)
    twin = path.parent / "." / path.name
    events, _ = await run_submit(emulator, [path, twin, path], tmp_path / "j.jsonl")
    assert len([e for e in events if isinstance(e, FileSubmitted)]) == 1
    assert len(emulator.state()["batches"]) == 1


async def test_transient_faults_still_submit_everything(service: Service, tmp_path: Path) -> None:
    """429 and 503 on upload and create are retried until everything is in."""
    service.set_faults("upload:0.1:429,upload:0.1:503,create:0.2:429,create:0.1:503", seed=7)
    paths = make_inputs(tmp_path / "in", 20)
    journal = tmp_path / "j.jsonl"
    events, summary = await run_submit(service, paths, journal)
    assert summary.failed == 0  # type: ignore[attr-defined]
    assert any(e.kind == "retrying" for e in events)
    service.set_faults("")
    service.assert_converged(read_journal(journal), [str(p) for p in paths])


@pytest.mark.promise("failed-create-deletes-upload")
async def test_permanent_create_error_deletes_upload(service: Service, tmp_path: Path) -> None:
    """A 400 on create fails the file, is not retried, and its upload is deleted."""
    service.set_faults("create:1.0:400")
    paths = make_inputs(tmp_path / "in", 3)
    journal = tmp_path / "j.jsonl"
    events, _summary = await run_submit(service, paths, journal)
    failed = [e for e in events if isinstance(e, FileFailed)]
    assert len(failed) == 3
    assert all("400" in e.reason and e.left_behind is None for e in failed)
    assert service.uploads() == []
    assert service.jobs() == []
    assert service.creates() == 3
    assert read_journal(journal) == []


@pytest.mark.promise("cleanup-shielded")
async def test_cancelling_the_call_leaves_no_orphan(service: Service, tmp_path: Path) -> None:
    """Cancelling mid-run: every upload left on the server belongs to a recorded batch."""
    paths = make_inputs(tmp_path / "in", 30)
    journal = tmp_path / "j.jsonl"
    seen: list[Event] = []
    with anyio.CancelScope() as scope:

        def on_event(event: Event) -> None:
            seen.append(event)
            if isinstance(event, FileSubmitted) and event.n >= 5:
                scope.cancel()

        await submit(
            [str(p) for p in paths],
            settings=settings(concurrency=6),
            job_info=journal,
            on_event=on_event,
            **service.submit_kwargs(),
        )
    assert scope.cancelled_caught
    jobs = service.jobs()
    recorded = {line["batch"]["name"] for line in read_journal(journal)}
    assert recorded == {j["name"] for j in jobs}
    assert set(service.uploads()) == {j["input"] for j in jobs}
    assert 5 <= len(recorded) < 30


async def test_unknown_model_fails_before_upload(emulator: RunningEmulator, tmp_path: Path) -> None:
    """A retired model is refused by one models.get, before any upload."""
    paths = make_inputs(tmp_path / "in", 3)
    with pytest.raises(PreflightError, match=r"gemini-2\.5-flash-lite-preview-06-17"):
        await run_submit(
            emulator, paths, tmp_path / "j.jsonl", model="gemini-2.5-flash-lite-preview-06-17"
        )
    requests = emulator.state()["requests"]
    assert requests["upload"]["count"] == 0
    assert requests["create"]["count"] == 0


async def test_models_prefix_accepted(emulator: RunningEmulator, tmp_path: Path) -> None:
    """``models/NAME`` and ``NAME`` name the same model."""
    paths = make_inputs(tmp_path / "in", 1)
    await run_submit(emulator, paths, tmp_path / "j.jsonl", model="models/gemini-3.5-flash")
    assert emulator.state()["batches"][0]["model"] == "models/gemini-3.5-flash"


@pytest.mark.promise("cleanup-shielded")
async def test_cleanup_that_fails_names_what_is_left(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Create refused and every delete failing: the file fails naming the upload left behind."""
    emulator.set_faults("create:1:400,delete:1:503")
    paths = make_inputs(tmp_path / "in", 1)
    events, _ = await run_submit(emulator, paths, tmp_path / "j.jsonl")
    (failed,) = [e for e in events if isinstance(e, FileFailed)]
    (cleanup,) = [e for e in events if isinstance(e, CleanupFailed)]
    assert failed.left_behind == cleanup.file_name
    assert cleanup.reason.startswith("503 UNAVAILABLE")
    assert [f["name"] for f in emulator.state()["files"]] == [failed.left_behind]


async def test_two_calls_in_one_process_share_claims(service: Service, tmp_path: Path) -> None:
    """Two submit() calls at once in one process, same files: one batch per file."""
    paths = make_inputs(tmp_path / "in", 12)
    journal = tmp_path / "j.jsonl"
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(run_submit, service, paths, journal)
    service.assert_converged(read_journal(journal), [str(p) for p in paths])
    assert len(read_journal(journal)) == 12


async def test_failing_event_handler_does_not_hang_or_lose_records(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """An on_event that raises: the error comes out, every created batch is still recorded."""
    paths = make_inputs(tmp_path / "in", 10)
    journal = tmp_path / "j.jsonl"

    def explode(event: Event) -> None:
        raise RuntimeError("handler bug")

    with anyio.fail_after(30), pytest.raises(Exception, match="handler bug"):
        await submit(
            [str(p) for p in paths],
            settings=settings(),
            job_info=journal,
            api_key=TEST_API_KEY,
            base_url=emulator.base_url,
            on_event=explode,
        )
    recorded = {line["batch"]["name"] for line in read_journal(journal)}
    assert recorded == {b["name"] for b in emulator.state()["batches"]}


@pytest.mark.promise("no-hidden-resends")
async def test_caller_client_with_sdk_retries_is_refused(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A genai.Client whose own retries are on could double a batch: refused up front."""
    from google import genai
    from google.genai import types

    paths = make_inputs(tmp_path / "in", 1)
    loose = genai.Client(
        api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url)
    )
    with pytest.raises(UsageError, match="attempts=1"):
        await submit([str(paths[0])], job_info=tmp_path / "j.jsonl", client=loose)
    strict = genai.Client(
        api_key=TEST_API_KEY,
        http_options=types.HttpOptions(
            base_url=emulator.base_url, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    summary = await submit([str(paths[0])], job_info=tmp_path / "j.jsonl", client=strict)
    assert summary.submitted == 1
    assert emulator.state()["requests"]["upload"]["count"] >= 1
