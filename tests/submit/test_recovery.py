"""Recovery that scales: after a lost journal, one shared listing answers every file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gembatch_async import SubmitSettings, submit
from gembatch_async.emulator import EmulatorConfig, RunningEmulator

from ..helpers import FAST_RETRY, TEST_API_KEY, assert_converged, make_inputs, read_journal


async def _submit(emulator: RunningEmulator, paths: list[Path], journal: Path) -> None:
    summary = await submit(
        [str(p) for p in paths],
        settings=SubmitSettings(concurrency=16, retry=FAST_RETRY, job_window=10_000),
        job_info=journal,
        api_key=TEST_API_KEY,
        base_url=emulator.base_url,
    )
    assert summary.failed == 0


@pytest.mark.parametrize(
    "emulator_config",
    [pytest.param(EmulatorConfig(port=0, max_unfinished_batches=10_000), id="wide-window")],
)
@pytest.mark.parametrize("lose_lock", [False, True], ids=["journal-lost", "journal-and-lock-lost"])
@pytest.mark.asyncio
async def test_lost_journal_rerun_lists_once_not_per_file(
    emulator: RunningEmulator, tmp_path: Path, lose_lock: bool
) -> None:
    """40 files, then the journal (and maybe its lock file) is lost: the rerun adopts every
    batch with a handful of list requests (one shared listing), not one listing per file
    (the project's 110 other jobs make a listing 2 pages, so per file it is 2 requests)."""
    paths = make_inputs(tmp_path / "in", 40, lines=1)
    others = make_inputs(tmp_path / "noise", 110, lines=1, prefix="other")
    await _submit(emulator, others, tmp_path / "other-journal.jsonl")  # the project's other jobs
    journal = tmp_path / "j.jsonl"
    await _submit(emulator, paths, journal)
    first = {line["input_file"]: line["batch"]["name"] for line in read_journal(journal)}
    journal.unlink()
    if lose_lock:
        journal.with_name("j.jsonl.lock").unlink()
    before = emulator.state()["requests"]["list"]["count"]
    await _submit(emulator, paths, journal)
    lines = read_journal(journal)
    assert all(line["adopted"] for line in lines)
    assert {line["input_file"]: line["batch"]["name"] for line in lines} == first
    lists = emulator.state()["requests"]["list"]["count"] - before
    pages = -(-150 // 100)  # one listing of 150 batches, 100 a page
    assert lists <= 2 * pages, f"{lists} list requests for 40 files"
    state = emulator.state()
    ours = [b for b in state["batches"] if b["displayName"].startswith(str(tmp_path / "in"))]
    assert len(ours) == 40
    assert_converged(
        {
            **state,
            "batches": ours,
            "files": [f for f in state["files"] if "other" not in f["displayName"]],
        },
        lines,
        [str(p) for p in paths],
    )
