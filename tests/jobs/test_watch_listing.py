"""Watching many jobs costs listing pages, not one GET per job; the pace adapts."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from google.genai import types

from gembatch_async import SubmitSettings, open_jobs, run, submit
from gembatch_async._backends._genai import BatchDetail, job_of
from gembatch_async._jobs import refresh_lines, watch_status
from gembatch_async._jobs._listing import JobListing, listing_answers
from gembatch_async._jobs._pace import Pace
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import TEST_API_KEY, make_inputs, read_journal
from ..services import Service

LONG_JOBS = pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=3600.0), id="long")],
)
FAST_JOBS = pytest.mark.parametrize(
    "emulator_config", [pytest.param(EmulatorConfig(port=0, processing_seconds=1.0), id="fast")]
)
UNFINISHED = {"JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING"}


def _counts(emulator: RunningEmulator) -> tuple[int, int]:
    """(GETs, lists) the emulator has answered so far."""
    requests = emulator.state()["requests"]
    return int(requests["get"]["count"]), int(requests["list"]["count"])


async def _submitted(tmp_path: Path, count: int, target: dict[str, Any]) -> Path:
    journal = tmp_path / "job-info.jsonl"
    paths = [str(p) for p in make_inputs(tmp_path, count, lines=1)]
    summary = await submit(
        paths, settings=SubmitSettings(concurrency=8), job_info=journal, **target
    )
    assert summary.submitted == count, summary
    return journal


@pytest.mark.promise("listing-pages")
@LONG_JOBS
@pytest.mark.asyncio
async def test_a_poll_of_many_unfinished_jobs_costs_listing_pages(
    service: Service, tmp_path: Path
) -> None:
    """25 unfinished jobs, pages of 10: one poll is at most ceil(25/10) list requests, no GET."""
    count, page = 25, 10
    journal = await _submitted(tmp_path, count, service.submit_kwargs())
    async with open_jobs(journal, **service.submit_kwargs()) as jobs:
        lines = jobs.recorded()
        gets, lists = _counts(service.emulator)
        statuses = await refresh_lines(jobs, lines, JobListing(jobs.api, jobs.call, page))
        gets_after, lists_after = _counts(service.emulator)
    assert len(statuses) == count
    assert all(s.state in UNFINISHED and s.error is None for s in statuses), statuses
    assert lists_after - lists <= math.ceil(count / page)
    assert gets_after - gets == 0, "the listing answered for every job"
    recorded = read_journal(journal)
    assert all("status_checked_at" in line for line in recorded), "the poll was recorded"


@LONG_JOBS
@pytest.mark.asyncio
async def test_listing_pages_read_each_job_as_get_does(service: Service, tmp_path: Path) -> None:
    """list_batch_page follows the service's page tokens to the end, and reads each job
    (state, counts, error) exactly as get_batch_detail does: the seam for both backends."""
    journal = await _submitted(tmp_path, 7, service.submit_kwargs())
    ours = {line["batch"]["name"] for line in read_journal(journal)}
    async with open_jobs(journal, **service.submit_kwargs()) as jobs:
        near = next(iter(ours))
        listed: dict[str, Any] = {}
        token: str | None = None
        pages = 0
        while pages == 0 or token is not None:
            page = await jobs.api.list_batch_page(near, 3, token)
            listed.update({d.job.name or "": d for d in page.details})
            token, pages = page.next_token, pages + 1
        assert pages == 3, "7 jobs in pages of 3"
        assert set(listed) == ours
        for name in ours:
            got = await jobs.api.get_batch_detail(name)
            assert listed[name].job == got.job
            assert (listed[name].stats, listed[name].error) == (got.stats, got.error)


@pytest.mark.promise("listing-pages")
@LONG_JOBS
@pytest.mark.asyncio
async def test_a_job_missing_from_the_listing_is_read_with_a_get(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A job the listing leaves out is neither lost nor concluded gone: one GET reads it,
    and when it ends (FAILED here) the poll sees that end too."""
    target: dict[str, Any] = {"api_key": TEST_API_KEY, "base_url": emulator.base_url}
    journal = await _submitted(tmp_path, 5, target)
    hidden = read_journal(journal)[2]["batch"]["name"]
    emulator.unlist(hidden)
    async with open_jobs(journal, **target) as jobs:
        listing = JobListing(jobs.api, jobs.call, 10)
        gets, lists = _counts(emulator)
        statuses = await refresh_lines(jobs, jobs.recorded(), listing)
        assert _counts(emulator) == (gets + 1, lists + 1), "one page, one GET for the hidden job"
        by_name = {s.batch_name: s for s in statuses}
        assert by_name[hidden].state in UNFINISHED
        assert by_name[hidden].error is None
        emulator.end_batch(hidden, "BATCH_STATE_FAILED")
        statuses = await refresh_lines(jobs, jobs.recorded(), listing)
    assert {s.batch_name: s.state for s in statuses}[hidden] == "JOB_STATE_FAILED"
    assert listing.stats.gets == 2


@pytest.mark.promise("listing-pages")
@FAST_JOBS
@pytest.mark.asyncio
async def test_run_collects_every_result_from_listing_polls(
    service: Service, tmp_path: Path
) -> None:
    """run end to end over 12 inputs: every input gets its own results, in input order,
    while the watcher asks no job one by one (before: a GET per job per poll)."""
    count = 12
    paths = [str(p) for p in make_inputs(tmp_path, count, lines=3)]
    gets, _ = _counts(service.emulator)
    with anyio.fail_after(60):
        summary = await run(
            paths,
            job_info=tmp_path / "job-info.jsonl",
            interval=0.3,
            **service.submit_kwargs(),
        )
    assert (summary.downloaded, summary.failed, summary.answered) == (count, 0, 3 * count)
    for index, path in enumerate(paths):  # each input's own answers (they echo its prompts)
        written = (Path(path).parent / "results" / Path(path).name).read_text().splitlines()
        assert [json.loads(line)["key"] for line in written] == ["k0", "k1", "k2"]
        assert all(f"question {k} {index}" in line for k, line in enumerate(written)), path
    gets_after, lists_after = _counts(service.emulator)
    # Before, every poll asked each job (12 GETs a poll); now the listing answers and a
    # GET asks only a job left alone (one job: a GET costs no more than a page).
    assert gets_after - gets < count // 2
    assert lists_after > 0


def test_the_pace_shortens_after_a_change_and_doubles_up_to_the_interval() -> None:
    """Shortest wait after the first poll and after a change, doubling while nothing
    changes, never above the interval (the rule the README states)."""
    pace = Pace(30.0)
    waits = [pace.next_wait(changed) for changed in (False, False, False, False, False, False)]
    assert waits == [1.875, 3.75, 7.5, 15.0, 30.0, 30.0]
    assert pace.next_wait(True) == 1.875
    assert Pace(0.2).next_wait(False) == 0.2, "an interval under 1 s is not stretched"
    assert Pace(8.0).next_wait(False) == 1.0


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, processing_seconds=4.0), id="4s-jobs")],
)
@pytest.mark.asyncio
async def test_status_watch_sees_jobs_end_long_before_the_interval(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """watch_status (status --watch) with interval 30 over jobs of 4 s ends within
    seconds of their end: the pace starts short instead of waiting the whole interval
    after the first look (which saw them unfinished)."""
    target: dict[str, Any] = {"api_key": TEST_API_KEY, "base_url": emulator.base_url}
    journal = await _submitted(tmp_path, 3, target)
    seen: list[str] = []
    started = time.monotonic()
    async with open_jobs(journal, **target) as jobs:
        with anyio.fail_after(60):
            statuses = await watch_status(jobs, lambda s: seen.append(s.state), interval=30)
    elapsed = time.monotonic() - started
    assert seen[:3] != ["JOB_STATE_SUCCEEDED"] * 3, "the first look saw them unfinished"
    assert [s.state for s in statuses] == ["JOB_STATE_SUCCEEDED"] * 3
    assert elapsed < 20, f"took {elapsed:.1f}s: the watcher waited the whole interval"


@LONG_JOBS
@pytest.mark.asyncio
async def test_paging_stops_when_another_page_cannot_save_a_request(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Two of our four jobs are not in the listing, four older jobs of another tool are:
    paging stops once pages outnumber the jobs still missing, instead of reading the whole
    project, and a GET reads each missing job."""
    target: dict[str, Any] = {"api_key": TEST_API_KEY, "base_url": emulator.base_url}
    await _submitted(tmp_path / "other-tool", 4, target)
    journal = await _submitted(tmp_path, 4, target)
    for line in read_journal(journal)[:2]:
        emulator.unlist(line["batch"]["name"])
    async with open_jobs(journal, **target) as jobs:
        gets, lists = _counts(emulator)
        statuses = await refresh_lines(jobs, jobs.recorded(), JobListing(jobs.api, jobs.call, 1))
        assert _counts(emulator) == (gets + 2, lists + 2), "2 pages (2 of ours), 2 GETs"
    assert all(s.state in UNFINISHED and s.error is None for s in statuses)


@LONG_JOBS
@pytest.mark.asyncio
async def test_a_listing_that_never_shows_our_jobs_is_given_up(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """When three polls in a row find none of our jobs in the listing, later polls of the
    same session stop listing and ask each job with a GET, as before the listing."""
    target: dict[str, Any] = {"api_key": TEST_API_KEY, "base_url": emulator.base_url}
    journal = await _submitted(tmp_path, 3, target)
    for line in read_journal(journal):
        emulator.unlist(line["batch"]["name"])
    async with open_jobs(journal, **target) as jobs:
        listing = JobListing(jobs.api, jobs.call, 10)
        costs = []
        for _ in range(5):
            gets, lists = _counts(emulator)
            statuses = await refresh_lines(jobs, jobs.recorded(), listing)
            after = _counts(emulator)
            costs.append((after[0] - gets, after[1] - lists))
            assert all(s.state in UNFINISHED and s.error is None for s in statuses)
    assert costs == [(3, 1)] * 3 + [(3, 0)] * 2


@pytest.mark.parametrize(
    ("state", "output", "error", "answers"),
    [
        pytest.param("JOB_STATE_RUNNING", None, None, True, id="running"),
        pytest.param("JOB_STATE_SUCCEEDED", "files/batch-out", None, True, id="succeeded"),
        pytest.param("JOB_STATE_SUCCEEDED", None, None, False, id="succeeded-no-output"),
        pytest.param("JOB_STATE_FAILED", None, "quota", True, id="failed"),
        pytest.param("JOB_STATE_FAILED", None, None, False, id="failed-no-error"),
        pytest.param("JOB_STATE_CANCELLED", None, None, True, id="cancelled"),
        pytest.param(None, None, None, False, id="no-state"),
    ],
)
def test_a_listed_job_needs_a_get_when_the_listing_lacks_what_a_poll_needs(
    state: str | None, output: str | None, error: str | None, answers: bool
) -> None:
    """No capture shows a finished job in a listing: one listed as succeeded without its
    output, or failed without its error, is asked with a GET (listing_answers is False)."""
    job = types.BatchJob(
        name="batches/x",
        state=types.JobState(state) if state else None,
        dest=types.BatchJobDestination(file_name=output) if output else None,
    )
    detail = BatchDetail(dataclasses.replace(job_of(job), error=error), None)
    assert listing_answers(detail) is answers
