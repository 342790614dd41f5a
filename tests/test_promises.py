"""README promises, each with a test that fails when the promise is broken (library, in-process).

Each test names the README sentence it guards. They run in-process on purpose:
``nox -s mutants`` maps tests to the functions they reach in this process, so a
promise guarded here also kills the mutants that would break it. The CLI's side
of the same promises is in test_promises_cli.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from google import genai
from google.genai import types

from gembatch_async import (
    CleanupFailed,
    Event,
    FileFailed,
    FileSkipped,
    FileSubmitted,
    PreflightError,
    Retrying,
    RetrySettings,
    SubmitSettings,
    SubmitSummary,
    WouldSubmit,
    cleanup_files,
    open_jobs,
    refresh_status,
    submit,
)
from gembatch_async._retry import backoff_delay
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from .helpers import (
    FAST_RETRY,
    TEST_API_KEY,
    assert_converged,
    creates_reached,
    finish_jobs,
    make_inputs,
    read_journal,
    request_total,
    wait_until,
    write_jsonl,
)

INT64_MAX = 2**63 - 1


def fast_settings(**changes: object) -> SubmitSettings:
    return dataclasses.replace(SubmitSettings(retry=FAST_RETRY, cleanup_seconds=5), **changes)  # type: ignore[arg-type]


async def run_submit(
    emulator: RunningEmulator,
    paths: list[Path],
    journal: Path,
    *,
    stop: anyio.Event | None = None,
    also: Callable[[Event], None] = lambda event: None,
    **changes: object,
) -> tuple[list[Event], SubmitSummary]:
    """submit() with fast retries; returns every event it emitted, and the summary."""
    events: list[Event] = []

    def on_event(event: Event) -> None:
        events.append(event)
        also(event)

    summary = await submit(
        [str(p) for p in paths],
        settings=fast_settings(**changes),
        job_info=journal,
        api_key=TEST_API_KEY,
        base_url=emulator.base_url,
        on_event=on_event,
        stop=stop,
    )
    return events, summary


def sdk(emulator: RunningEmulator) -> genai.Client:
    return genai.Client(
        api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url)
    )


def wire_sha256(data: bytes) -> str:
    """sha256Hash as the emulator (and the service) sends it."""
    import base64

    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


def server_file(emulator: RunningEmulator, name: str) -> dict[str, object]:
    return next(f for f in emulator.state()["files"] if f["name"] == name)


# -- "every created job is appended to job-info.jsonl (fsynced) the moment it exists" ------


@contextmanager
def traced_syscalls(
    output: Path, calls: str = "trace=write,pwrite64,fsync,fdatasync"
) -> Iterator[None]:
    """strace attached to this very process (every thread) for the ``with`` block.

    Attaching to ourselves rather than tracing a child keeps the code under test
    in this process (where the mutation check can see which test reaches it),
    while the observation stays at the kernel boundary: what the tool asked the
    kernel to do, not what a patched Python function says it did.
    """
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    tracer = subprocess.Popen(
        [
            "strace",
            *("-f", "-qq", "-y", "-s", "4096", "-o", str(output)),
            *("-e", calls, "-e", "signal=none"),
            *("-p", str(os.getpid())),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not _all_threads_traced():
            if tracer.poll() is not None:
                pytest.skip(
                    f"strace cannot attach here: {tracer.stderr.read() if tracer.stderr else ''}"
                )
            assert time.monotonic() < deadline, "strace did not attach within 10 s"
            time.sleep(0.01)
        yield
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
        if tracer.stderr is not None:
            tracer.stderr.close()


def _all_threads_traced() -> bool:
    for task in Path("/proc/self/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        if re.search(r"^TracerPid:\s+0$", status, flags=re.M):
            return False
    return True


def _syscalls_on(trace: str, path: Path) -> list[tuple[int, str, str]]:
    """(line index, syscall, text) of each call on ``path``, in the order the kernel saw them.

    Matches the start of a call, whole or ``<unfinished ...>``: a call starts
    after everything earlier in the same thread has returned.
    """
    pattern = re.compile(
        rf"^\d+\s+(write|pwrite64|fsync|fdatasync)\(\d+<{re.escape(str(path))}>(.*)$"
    )
    found = []
    for index, line in enumerate(trace.splitlines()):
        match = pattern.match(line)
        if match:
            found.append((index, match.group(1), match.group(2)))
    return found


@pytest.mark.promise("journal-synced")
@pytest.mark.asyncio
async def test_journal_line_is_synced_before_its_event(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Each job line reaches the disk (fdatasync) before the file is reported submitted.

    How: fsync leaves no trace a test can read back without a power cut, so the
    test watches the system calls themselves with strace, attached to this
    process (see traced_syscalls). Every ``FileSubmitted`` handler writes a
    marker to /dev/null; the trace must show, before each marker, the journal
    write carrying that file and then an fdatasync (or fsync) of the journal.
    Dropping the sync after the append, or reporting before it, fails this.
    """
    paths = make_inputs(tmp_path / "in", 3)
    journal = tmp_path / "job-info.jsonl"
    trace_file = tmp_path / "strace.txt"
    marker = tmp_path / "marker"
    marker.touch()
    events: list[Event] = []
    fd = os.open(marker, os.O_WRONLY)

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, FileSubmitted):
            os.write(fd, f"submitted {event.path}".encode())

    try:
        with traced_syscalls(trace_file):
            await submit(
                [str(p) for p in paths],
                settings=fast_settings(concurrency=3),
                job_info=journal,
                api_key=TEST_API_KEY,
                base_url=emulator.base_url,
                on_event=on_event,
            )
    finally:
        os.close(fd)
    trace = trace_file.read_text()
    journal_calls = _syscalls_on(trace, journal.resolve())
    markers = _syscalls_on(trace, marker.resolve())
    assert len(markers) == 3, trace[-2000:]
    for index, _call, text in markers:
        path = re.search(r'"submitted (.*?)"', text)
        assert path is not None
        written = [
            i
            for i, call, args in journal_calls
            if call in ("write", "pwrite64") and path.group(1) in args and i < index
        ]
        assert written, f"no journal write for {path.group(1)} before it was reported"
        synced = [
            i
            for i, call, _ in journal_calls
            if call in ("fsync", "fdatasync") and written[-1] < i < index
        ]
        assert synced, f"{path.group(1)} was reported before its journal line was synced"


# -- "retries ... that honour Retry-After, capped" ----------------------------------------


@pytest.mark.promise("retry-after-capped")
def test_retry_after_from_the_server_is_capped() -> None:
    """The storage-quota 429 asks for int64-max seconds: the wait is the cap, not that."""
    quota = _ServerDelay(float(INT64_MAX))
    assert backoff_delay(RetrySettings(), 1, quota) == RetrySettings().retry_after_cap
    assert backoff_delay(RetrySettings(retry_after_cap=2.5), 3, quota) == 2.5
    assert backoff_delay(RetrySettings(), 1, _ServerDelay(0.25)) == 0.25


class _ServerDelay(Exception):
    """An error carrying the server's requested delay, as ApiError does."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("429 RESOURCE_EXHAUSTED")
        self.retry_after = retry_after


@pytest.mark.promise("retry-after-capped")
@pytest.mark.asyncio
async def test_retrying_waits_at_most_the_cap(emulator: RunningEmulator, tmp_path: Path) -> None:
    """The emulator's 429s carry Retry-After: 1; with a 0.05 s cap every wait is 0.05 s."""
    emulator.set_faults("upload:0.3:429,create:0.3:429", seed=11)
    paths = make_inputs(tmp_path / "in", 6)
    events, _ = await run_submit(emulator, paths, tmp_path / "j.jsonl")
    delays = [e.delay for e in events if isinstance(e, Retrying)]
    assert delays, "the faults caused no retry"
    assert max(delays) <= FAST_RETRY.retry_after_cap


# -- "n counts completions in the order they happen" --------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, latency_ms=50), id="latency")]
)
@pytest.mark.promise("numbered-in-completion-order")
async def test_n_counts_completions_in_order(emulator: RunningEmulator, tmp_path: Path) -> None:
    """Files that finish out of input order are still numbered 1..N as they finish.

    A recorded file listed last completes first (a skip needs no request); the
    files before it each wait for three 50 ms requests.
    """
    paths = make_inputs(tmp_path / "in", 4)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, [paths[-1]], journal)
    events, _ = await run_submit(emulator, paths, journal, concurrency=4)
    done = [e for e in events if isinstance(e, (FileSubmitted, FileSkipped))]
    assert [e.n for e in done] == [1, 2, 3, 4]
    assert done[0].path == str(paths[-1])
    assert [e.path for e in done] != [str(p) for p in paths]


# -- "--dry-run: run every pre-flight check (including the model check)" ------------------


@pytest.mark.promise("dry-run-writes-nothing")
@pytest.mark.asyncio
async def test_dry_run_checks_the_model_and_sends_nothing_else(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A dry run sends exactly one models.get; with a retired model it is refused."""
    paths = make_inputs(tmp_path / "in", 2)
    events, summary = await run_submit(emulator, paths, tmp_path / "j.jsonl", dry_run=True)
    would = [e for e in events if isinstance(e, WouldSubmit)]
    assert len(would) == len(events)
    assert [(e.path, e.count, e.size_bytes) for e in would] == [
        (str(p), 3, p.stat().st_size) for p in paths
    ]
    assert all(e.input_tokens for e in would)  # each file's tokens estimated
    assert (summary.submitted, summary.skipped, summary.failed) == (0, 0, 0)
    assert summary.elapsed >= 0
    requests = emulator.state()["requests"]
    assert requests["get"]["count"] == 1  # models.get
    assert request_total(emulator.state()) == 1
    with pytest.raises(PreflightError, match="model not found"):
        await run_submit(
            emulator, paths, tmp_path / "j.jsonl", dry_run=True, model="gemini-1.0-retired"
        )


# -- "a run whose files are all recorded sends nothing" -----------------------------------


@pytest.mark.promise("recorded-skipped")
@pytest.mark.asyncio
async def test_run_with_everything_recorded_sends_nothing(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Not even the model check: the emulator's request counters do not move."""
    paths = make_inputs(tmp_path / "in", 3)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths, journal)
    before = emulator.state()["requests"]
    events, summary = await run_submit(emulator, paths, journal)
    assert summary.skipped == 3
    assert [type(e) for e in events] == [FileSkipped] * 3
    assert emulator.state()["requests"] == before


# -- "--retry-failed: submit again the files whose batch ended FAILED, CANCELLED or EXPIRED"


@pytest.mark.asyncio
@pytest.mark.parametrize("state", ["BATCH_STATE_FAILED", "BATCH_STATE_EXPIRED"])
async def test_retry_failed_resubmits_failed_and_expired(
    emulator: RunningEmulator, tmp_path: Path, state: str
) -> None:
    """A job the service ended FAILED (or EXPIRED) gets a new batch; a live one does not."""
    paths = make_inputs(tmp_path / "in", 2)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths, journal)
    ended, live = read_journal(journal)
    emulator.end_batch(ended["batch"]["name"], state)
    events, summary = await run_submit(emulator, paths, journal, retry_failed=True)
    assert (summary.submitted, summary.skipped) == (1, 1)
    lines = read_journal(journal)
    assert len(lines) == 3
    assert lines[-1]["input_file"] == ended["input_file"]
    assert lines[-1]["batch"]["name"] != ended["batch"]["name"]
    skipped = [e for e in events if isinstance(e, FileSkipped)]
    assert [e.path for e in skipped] == [live["input_file"]]


@pytest.mark.asyncio
async def test_retry_failed_trusts_a_recorded_end_state(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Once `status` has recorded FAILED, --retry-failed resubmits without asking again
    (here it could not: the ended batch has since been deleted on the server)."""
    paths = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths, journal)
    (ended,) = read_journal(journal)
    emulator.end_batch(ended["batch"]["name"], "BATCH_STATE_FAILED")
    async with open_jobs(journal, api_key=TEST_API_KEY, base_url=emulator.base_url) as jobs:
        await refresh_status(jobs)
    assert read_journal(journal)[0]["batch"]["state"] == "JOB_STATE_FAILED"
    client = sdk(emulator)
    client.batches.delete(name=ended["batch"]["name"])
    _, summary = await run_submit(emulator, paths, journal, retry_failed=True)
    assert (summary.submitted, summary.failed) == (1, 0)
    assert read_journal(journal)[-1]["batch"]["name"] != ended["batch"]["name"]


@pytest.mark.asyncio
async def test_retry_failed_does_not_ask_again_about_a_recorded_end_state(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """An end state is final, so a recorded one is not looked up again: here the service
    would still say PENDING, and the file is submitted again all the same. (The test above
    cannot tell: a deleted batch is submitted again after asking, too.)"""
    paths = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths, journal)
    (recorded,) = read_journal(journal)
    recorded["batch"]["state"] = "JOB_STATE_FAILED"  # as `status` writes it back
    journal.write_text(json.dumps(recorded) + "\n")
    _, summary = await run_submit(emulator, paths, journal, retry_failed=True)
    assert (summary.submitted, summary.failed) == (1, 0)
    assert read_journal(journal)[-1]["batch"]["name"] != recorded["batch"]["name"]


# -- "the existing upload is reused when its sha256 matches and it is not about to expire" -


async def _earlier_upload(emulator: RunningEmulator, path: Path, journal: Path) -> str:
    """Submit ``path``, then forget it locally: the server keeps the upload (and batch)."""
    await run_submit(emulator, [path], journal)
    (line,) = read_journal(journal)
    await anyio.Path(journal).unlink()
    return str(line["uploaded_file_name"])


@pytest.mark.promise("upload-reused-when-intact")
@pytest.mark.asyncio
async def test_earlier_upload_with_other_bytes_is_replaced(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Our upload name holding other bytes (and no batch): deleted and uploaded again."""
    (path,) = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    name = await _earlier_upload(emulator, path, journal)
    client = sdk(emulator)
    for batch in emulator.state()["batches"]:
        client.batches.delete(name=batch["name"])
    client.files.delete(name=name)
    client.files.upload(
        file=io.BytesIO(b'{"other": 1}\n'), config={"name": name, "mime_type": "jsonl"}
    )
    deletes = emulator.state()["requests"]["delete"]["count"]
    _, summary = await run_submit(emulator, [path], journal)
    assert summary.submitted == 1
    assert server_file(emulator, name)["sha256Hash"] == wire_sha256(path.read_bytes())
    (line,) = read_journal(journal)
    assert line["adopted"] is False
    assert emulator.state()["requests"]["delete"]["count"] == deletes + 1
    assert_converged(emulator.state(), read_journal(journal), [str(path)])


@pytest.mark.promise("upload-reused-when-intact")
@pytest.mark.asyncio
async def test_earlier_upload_about_to_expire_is_replaced(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Our upload with the right bytes but 10 minutes left (and no batch): replaced."""
    (path,) = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    name = await _earlier_upload(emulator, path, journal)
    client = sdk(emulator)
    for batch in emulator.state()["batches"]:
        client.batches.delete(name=batch["name"])
    emulator.expire_file(name, 600)
    aged = server_file(emulator, name)["createTime"]
    deletes = emulator.state()["requests"]["delete"]["count"]
    _, summary = await run_submit(emulator, [path], journal)
    assert summary.submitted == 1
    assert server_file(emulator, name)["createTime"] != aged, "the expiring upload was reused"
    assert emulator.state()["requests"]["delete"]["count"] == deletes + 1
    assert_converged(emulator.state(), read_journal(journal), [str(path)])


@pytest.mark.asyncio
async def test_expiring_upload_is_kept_while_its_batch_exists(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """About to expire, but a batch of this submission reads it: adopted, not deleted."""
    (path,) = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    name = await _earlier_upload(emulator, path, journal)
    emulator.expire_file(name, 600)
    events, _ = await run_submit(emulator, [path], journal)
    (done,) = [e for e in events if isinstance(e, FileSubmitted)]
    assert done.adopted
    state = emulator.state()
    assert len(state["batches"]) == 1
    assert state["requests"]["delete"]["count"] == 0
    assert_converged(state, read_journal(journal), [str(path)])


# -- "Setting the stop event starts no new file" ------------------------------------------


@pytest.mark.promise("stop-event")
@pytest.mark.asyncio
async def test_stop_event_starts_no_new_file(emulator: RunningEmulator, tmp_path: Path) -> None:
    """stop set at the first completion, at concurrency 1: only the file then in flight
    may still finish; no other file is uploaded, and the summary counts them not started."""
    paths = make_inputs(tmp_path / "in", 10)
    journal = tmp_path / "j.jsonl"
    stop = anyio.Event()
    created_at_stop: list[int] = []

    def stop_at_first(event: Event) -> None:
        if isinstance(event, FileSubmitted) and not stop.is_set():
            # The journal's sync may let the next file start before this event: count it.
            created_at_stop.append(emulator.state()["requests"]["create"]["count"])
            stop.set()

    _, summary = await run_submit(
        emulator, paths, journal, stop=stop, also=stop_at_first, concurrency=1
    )
    assert summary.interrupted
    assert 1 <= summary.submitted <= created_at_stop[0] + 1  # + the one in flight
    assert summary.submitted < 10
    assert summary.not_started == 10 - summary.submitted
    state = emulator.state()
    assert len(state["files"]) == summary.submitted
    assert state["requests"]["create"]["count"] == summary.submitted
    assert_converged(
        state, read_journal(journal), [line["input_file"] for line in read_journal(journal)]
    )


# -- "--mime-type: default application/jsonl" ---------------------------------------------


@pytest.mark.asyncio
async def test_uploads_carry_the_default_mime_type(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The service stores what we send; the emulator records it: application/jsonl."""
    paths = make_inputs(tmp_path / "in", 2)
    await run_submit(emulator, paths, tmp_path / "j.jsonl")
    assert [f["mimeType"] for f in emulator.state()["files"]] == ["application/jsonl"] * 2


# -- "cleanup: a file the service will not delete is reported and the rest carries on" ----


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=0.5), id="fast")]
)
@pytest.mark.promise("cleanup-only-recorded")
async def test_cleanup_carries_on_past_a_refused_delete(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """One upload the service refuses to delete: reported with its reason, the others go."""
    paths = make_inputs(tmp_path / "in", 4)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths, journal)
    finish_jobs(emulator, 0.5)
    refused = read_journal(journal)[1]["uploaded_file_name"]
    emulator.refuse_delete(refused)
    async with open_jobs(journal, api_key=TEST_API_KEY, base_url=emulator.base_url) as jobs:
        cleaned = await cleanup_files(jobs)
    assert len(cleaned) == 4
    failed = [c for c in cleaned if c.error]
    assert [(c.file_name, c.deleted) for c in failed] == [(refused, False)]
    assert "400" in (failed[0].error or "")
    assert sum(c.deleted for c in cleaned) == 3
    uploads = [f["name"] for f in emulator.state()["files"] if f["source"] == "UPLOADED"]
    assert uploads == [refused]


# -- the journal line and the events, as documented ---------------------------------------

JOURNAL_KEYS = {
    "input_file", "input_identity", "journal_id", "count", "uploaded_file_name", "sha256",
    "size_bytes", "model", "submitted_at", "display_name", "adopted", "batch",
}  # fmt: skip


@pytest.mark.asyncio
async def test_journal_line_has_the_documented_fields(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Each job line carries the README's fields, and the event names the same upload."""
    (path,) = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    events, summary = await run_submit(emulator, [path], journal)
    assert (summary.submitted, summary.interrupted, summary.not_started) == (1, False, 0)
    assert 0 < summary.elapsed < 60
    (line,) = read_journal(journal)
    assert set(line) == JOURNAL_KEYS
    assert line["size_bytes"] == path.stat().st_size
    assert line["display_name"].startswith(f"{path} [gba-")
    assert line["display_name"] == emulator.state()["batches"][0]["displayName"]
    assert line["submitted_at"].endswith("+00:00")
    (done,) = events
    assert isinstance(done, FileSubmitted)
    assert done.uploaded_file_name == line["uploaded_file_name"]
    assert done.batch_name == line["batch"]["name"]


@pytest.mark.promise("recorded-skipped")
@pytest.mark.asyncio
async def test_skip_among_new_files_names_the_batch_and_flags_changes(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A run that also has new files skips recorded ones with their batch name, noting
    which changed since (the run that sends nothing is covered above)."""
    paths = make_inputs(tmp_path / "in", 3)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths[:2], journal)
    recorded = {line["input_file"]: line["batch"]["name"] for line in read_journal(journal)}
    with paths[0].open("a") as handle:
        handle.write('{"key": "late", "request": {}}\n')
    events, summary = await run_submit(emulator, paths, journal)
    assert (summary.submitted, summary.skipped) == (1, 2)
    skipped = sorted((e for e in events if isinstance(e, FileSkipped)), key=lambda e: e.path)
    assert [(e.path, e.batch_name, e.changed) for e in skipped] == [
        (str(paths[0]), recorded[str(paths[0])], True),
        (str(paths[1]), recorded[str(paths[1])], False),
    ]


@pytest.mark.promise("upload-reused-when-intact")
@pytest.mark.asyncio
async def test_intact_earlier_upload_is_reused_for_a_new_batch(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Our upload is there, intact and fresh, but no batch (journal and batch lost): it is
    reused (no second upload, nothing deleted) and a new batch is created from it."""
    (path,) = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    name = await _earlier_upload(emulator, path, journal)
    client = sdk(emulator)
    for batch in emulator.state()["batches"]:
        client.batches.delete(name=batch["name"])
    created = server_file(emulator, name)["createTime"]
    before = emulator.state()["requests"]
    _, summary = await run_submit(emulator, [path], journal)
    after = emulator.state()["requests"]
    assert summary.submitted == 1
    assert server_file(emulator, name)["createTime"] == created
    assert after["upload"]["count"] == before["upload"]["count"] + 1  # the start that got 409
    assert after["delete"]["count"] == before["delete"]["count"]
    assert [b["inputFile"] for b in emulator.state()["batches"]] == [name]


# -- "cancelling the caller's scope cleans up like Ctrl-C" --------------------------------


@pytest.mark.promise("cleanup-shielded")
@pytest.mark.asyncio
async def test_cancelled_run_still_records_a_batch_whose_create_was_lost(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The create's answer is lost and the run is cancelled while waiting to retry: the
    shielded cleanup looks the batch up and records it (nothing unrecorded is left)."""
    emulator.set_faults("create:1:lost")
    (path,) = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    slow = RetrySettings(attempts=5, initial_delay=30, max_delay=30, jitter=0)
    with anyio.CancelScope() as scope:

        def cancel_on_retry(event: Event) -> None:
            if isinstance(event, Retrying):
                emulator.set_faults("")
                scope.cancel()

        await run_submit(emulator, [path], journal, also=cancel_on_retry, retry=slow)
    assert scope.cancelled_caught
    state = emulator.state()
    assert len(state["batches"]) == 1
    (line,) = read_journal(journal)
    assert line["adopted"] is True
    assert_converged(state, [line], [str(path)])


@pytest.mark.promise("cleanup-shielded")
@pytest.mark.asyncio
async def test_cleanup_that_takes_too_long_is_cut_and_reported(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Create refused, and the delete of the upload hangs past cleanup_seconds: the file
    fails saying so and naming the upload left behind, and a CleanupFailed says it too."""
    emulator.set_faults("create:1:400")
    emulator.stall("delete", 30)
    (path,) = make_inputs(tmp_path / "in", 1)
    events, summary = await run_submit(emulator, [path], tmp_path / "j.jsonl", cleanup_seconds=1)
    assert (summary.submitted, summary.failed) == (0, 1)
    (cleanup,) = [e for e in events if isinstance(e, CleanupFailed)]
    (failed,) = [e for e in events if isinstance(e, FileFailed)]
    upload = f"files/{emulator.state()['files'][0]['name'].removeprefix('files/')}"
    assert (cleanup.path, cleanup.file_name, cleanup.reason) == (
        str(path),
        upload,
        "cleanup timed out",
    )
    assert failed.reason.endswith("; cleanup timed out")
    assert failed.left_behind == upload


@pytest.mark.promise("stop-event")
@pytest.mark.asyncio
async def test_stop_gives_in_flight_files_cleanup_seconds_then_cuts_them(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """stop while every upload hangs: after cleanup_seconds the two in flight are cut and
    cleaned up, the six waiting never start (and are counted so), nothing is left behind."""
    paths = make_inputs(tmp_path / "in", 8)
    journal = tmp_path / "j.jsonl"
    emulator.stall("upload", 30)
    stop = anyio.Event()

    async def stop_soon() -> None:
        # Once the two in flight hang in their uploads (after the model check and the
        # job window's listing), not after a fixed time a loaded machine may not meet.
        def uploading() -> bool:
            return int(emulator.state()["requests"]["upload"]["count"]) >= 2

        await anyio.to_thread.run_sync(wait_until, uploading)
        stop.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_soon)
            events, summary = await run_submit(
                emulator, paths, journal, stop=stop, concurrency=2, cleanup_seconds=1
            )
    assert summary.interrupted is True
    assert (summary.submitted, summary.failed, summary.not_started) == (0, 2, 6)
    assert [e.reason for e in events if isinstance(e, FileFailed)] == ["cancelled"] * 2
    state = emulator.state()
    assert (state["files"], state["batches"], read_journal(journal)) == ([], [], [])


@pytest.mark.asyncio
async def test_long_paths_keep_their_tail_in_the_display_name(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path of 400 characters is the display name as it is; a longer one is cut to
    "..." and its last 400, and either is found again by that name."""
    monkeypatch.chdir(tmp_path)
    exact = Path("a" * 200) / ("b" * (400 - 201 - 6) + ".jsonl")
    longer = Path("c" * 200) / ("d" * 240 + ".jsonl")
    for path in (exact, longer):
        path.parent.mkdir()
        write_jsonl(path, 1)
    assert len(str(exact)) == 400
    await run_submit(emulator, [exact, longer], Path("j.jsonl"))
    names = sorted(b["displayName"].rsplit(" [gba-", 1)[0] for b in emulator.state()["batches"])
    assert names == sorted([str(exact), "..." + str(longer)[-400:]])
    await anyio.Path("j.jsonl").unlink()  # lost: each batch must be found again by its name
    events, _ = await run_submit(emulator, [exact, longer], Path("j.jsonl"))
    assert all(isinstance(e, FileSubmitted) and e.adopted for e in events)
    assert len(emulator.state()["batches"]) == 2


@pytest.mark.asyncio
async def test_retry_failed_submits_a_batch_that_no_longer_exists_again(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """--retry-failed asks for a live job's state; a batch that is gone (404: deleted on
    the service) will never run, so the file is submitted again, once."""
    paths = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths, journal)
    client = sdk(emulator)
    client.batches.delete(name=read_journal(journal)[0]["batch"]["name"])
    _, summary = await run_submit(emulator, paths, journal, retry_failed=True)
    assert (summary.submitted, summary.failed) == (1, 0)
    assert len(emulator.state()["batches"]) == 1
    assert len(read_journal(journal)) == 2


@pytest.mark.asyncio
async def test_the_same_file_for_another_model_is_another_batch(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The model is part of a submission's name: a batch made for one model is never
    adopted by a run for another, even when the journal was lost in between."""
    (path,) = make_inputs(tmp_path / "in", 1)
    await run_submit(emulator, [path], tmp_path / "a.jsonl", model="gemini-3.1-flash-lite")
    events, _ = await run_submit(emulator, [path], tmp_path / "b.jsonl", model="gemini-3.5-flash")
    (done,) = events
    assert isinstance(done, FileSubmitted)
    assert not done.adopted
    models = sorted(b["model"] for b in emulator.state()["batches"])
    assert models == ["models/gemini-3.1-flash-lite", "models/gemini-3.5-flash"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, latency_ms=150), id="latency")]
)
async def test_an_input_that_vanishes_mid_run_fails_alone(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """An input that vanishes after pre-flight: that file fails (reported with the reason,
    nothing left behind) and the run goes on with the others (issue 8).

    One at a time, with latency: when the first file's event is delivered, the second
    is uploading (from the descriptor opened before, so it is submitted as checked) and
    the third has not started; the third is the one that vanishes."""
    paths = make_inputs(tmp_path / "in", 3)
    journal = tmp_path / "j.jsonl"
    seen: list[Event] = []

    def remove_the_next(event: Event) -> None:
        seen.append(event)
        if isinstance(event, FileSubmitted) and paths[2].exists():
            paths[2].unlink()

    _, summary = await run_submit(emulator, paths, journal, also=remove_the_next, concurrency=1)
    assert (summary.submitted, summary.failed) == (2, 1)
    failed = {e.path: e for e in seen if isinstance(e, FileFailed)}
    assert "vanished since pre-flight" in failed[str(paths[2])].reason
    assert all(e.left_behind is None for e in failed.values())
    state = emulator.state()
    assert {line["batch"]["name"] for line in read_journal(journal)} == {
        b["name"] for b in state["batches"]
    }
    assert {f["name"] for f in state["files"]} == {b["inputFile"] for b in state["batches"]}


@pytest.mark.promise("failed-create-deletes-upload")
@pytest.mark.asyncio
async def test_upload_stored_but_unanswered_then_refused_is_deleted(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The upload's answer is lost (the file is stored), the next attempt is refused (400):
    the file fails and the stored upload is deleted, not left behind."""
    emulator.set_faults("upload:1:lost")
    (path,) = make_inputs(tmp_path / "in", 1)

    def refuse_next(event: Event) -> None:
        if isinstance(event, Retrying):
            emulator.set_faults("upload:1:400")

    events, summary = await run_submit(emulator, [path], tmp_path / "j.jsonl", also=refuse_next)
    assert summary.failed == 1
    (failed,) = [e for e in events if isinstance(e, FileFailed)]
    assert failed.left_behind is None
    assert emulator.state()["files"] == []


# -- pre-flight and failure reasons, as the user reads them -------------------------------


@pytest.mark.asyncio
async def test_recorded_file_whose_content_broke_is_not_refused(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A file the journal covers is not submitted again, so its content no longer matters
    to pre-flight: the run goes on with the others."""
    paths = make_inputs(tmp_path / "in", 2)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths[:1], journal)
    paths[0].write_text("not json any more\n")
    _, summary = await run_submit(emulator, paths, journal)
    assert (summary.submitted, summary.failed) == (1, 0)
    assert len(emulator.state()["batches"]) == 2


@pytest.mark.asyncio
async def test_recorded_file_whose_content_broke_is_reported_skipped(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """README: "a file already recorded is skipped" -- and the user is told so."""
    paths = make_inputs(tmp_path / "in", 2)
    journal = tmp_path / "j.jsonl"
    await run_submit(emulator, paths[:1], journal)
    paths[0].write_text("not json any more\n")
    events, summary = await run_submit(emulator, paths, journal)
    assert (summary.submitted, summary.skipped) == (1, 1)
    assert [e.path for e in events if isinstance(e, FileSkipped)] == [str(paths[0])]


@pytest.mark.asyncio
async def test_preflight_problems_say_what_is_wrong(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """No file given, no API key, a model check that keeps failing: each a clear problem."""
    with pytest.raises(PreflightError) as empty:
        await submit([], job_info=tmp_path / "j.jsonl", api_key=TEST_API_KEY)
    assert [str(p) for p in empty.value.problems] == ["(arguments): no input files given"]
    (path,) = make_inputs(tmp_path / "in", 1)
    with pytest.raises(PreflightError) as keyless:
        await submit([path], job_info=tmp_path / "j.jsonl", base_url=emulator.base_url)
    assert [str(p) for p in keyless.value.problems] == [
        "GEMINI_API_KEY: not set: set it (or GOOGLE_API_KEY), or use --emulator"
    ]
    emulator.set_faults("get:1:503")
    with pytest.raises(PreflightError, match="cannot check the model: 503 UNAVAILABLE"):
        await run_submit(emulator, [path], tmp_path / "j.jsonl")
    assert emulator.state()["requests"]["upload"]["count"] == 0


@pytest.mark.asyncio
async def test_retry_events_name_the_file_and_the_step(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """One 429 on the upload, then one on the create: two Retrying events, each naming
    the file and its step."""
    emulator.set_faults("upload:1:429")
    (path,) = make_inputs(tmp_path / "in", 1)

    def next_fault(event: Event) -> None:
        if isinstance(event, Retrying):
            emulator.set_faults("create:1:429" if event.step == "upload" else "")

    events, summary = await run_submit(emulator, [path], tmp_path / "j.jsonl", also=next_fault)
    assert summary.submitted == 1
    assert [(e.path, e.step, e.attempt) for e in events if isinstance(e, Retrying)] == [
        (str(path), "upload", 1),
        (str(path), "create", 1),
    ]


@pytest.mark.asyncio
async def test_refused_upload_fails_with_its_reason_and_leaves_nothing(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """An upload the service refuses (400): the file fails with that reason; nothing stored."""
    emulator.set_faults("upload:1:400")
    (path,) = make_inputs(tmp_path / "in", 1)
    events, _ = await run_submit(emulator, [path], tmp_path / "j.jsonl")
    (failed,) = events
    assert isinstance(failed, FileFailed)
    assert failed.reason.startswith("400 INVALID_ARGUMENT")
    assert failed.left_behind is None
    assert emulator.state()["files"] == []


@pytest.mark.promise("lookup-before-retry")
@pytest.mark.asyncio
async def test_lost_create_that_cannot_be_looked_up_says_so_and_names_the_upload(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The create's answer is lost and listing batches keeps failing: the file fails saying
    it could not tell, names the upload it keeps (a batch may use it), and asks for a rerun."""
    emulator.set_faults("create:1:lost,list:1:503")
    (path,) = make_inputs(tmp_path / "in", 1)
    quick = RetrySettings(attempts=2, initial_delay=0.01, max_delay=0.01, jitter=0)
    events, _ = await run_submit(emulator, [path], tmp_path / "j.jsonl", retry=quick)
    (failed,) = [e for e in events if isinstance(e, FileFailed)]
    assert "could not tell whether the batch was created (503 UNAVAILABLE" in failed.reason
    assert failed.reason.endswith("; run submit again to settle it")
    assert failed.left_behind == emulator.state()["files"][0]["name"]


@pytest.mark.promise("cleanup-shielded")
@pytest.mark.asyncio
async def test_create_in_flight_when_cancelled_is_waited_for_and_recorded(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Cancelled while its create is on the wire: the answer is waited for (shielded) and
    the batch recorded, rather than left for the next run to find."""
    emulator.stall("create", 1.5)
    (path,) = make_inputs(tmp_path / "in", 1)
    journal = tmp_path / "j.jsonl"

    async def cancel_when_create_sent(scope: anyio.CancelScope) -> None:
        await anyio.to_thread.run_sync(wait_until, creates_reached(emulator, 1))
        scope.cancel()

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_create_sent, scope)
            await run_submit(emulator, [path], journal)
    assert scope.cancelled_caught
    (line,) = read_journal(journal)
    assert_converged(emulator.state(), [line], [str(path)])
