"""--retry-failed, request by request: send again only the requests without an answer.

Asked under the input's claim, with the journal just re-read, so two processes (or a
rerun after a kill) decide from the same recorded jobs and the same outputs: the same
round file, hence the same upload name and batch token (see ``_results._remainder``).
A round is made only once the input's newest job has ended, so an input has at most
one job in flight.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import anyio.to_thread

from .._backends import END_STATES, Backend, output_of, output_of_job
from .._errors import NotFoundApiError
from .._inputs import InputFile
from .._journal import JobLine, batch_name_of, batch_state_of, input_sha256_of
from .._results._remainder import (
    JobRef,
    Remainder,
    answered_digests,
    completed_jobs,
    plan_remainder,
    round_of,
)
from .._retry import call_with_retries
from .._settings import RetrySettings

#: End states after which a whole job is sent again when nothing of it was answered.
_WHOLE_AGAIN = frozenset({"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})


@dataclass(frozen=True)
class NothingToSend:
    """The input needs no round: every request is answered, or its rounds are used up."""

    reason: str


async def unanswered(
    api: Backend,
    retry: RetrySettings,
    item: InputFile,
    latest: JobLine,
    resubmits: int,
) -> InputFile | NothingToSend | None:
    """The input narrowed to its unanswered requests, NothingToSend, or None when this
    is not a case for a round (a part of a split input, an input changed since, a job
    not ended, nothing answered by a job that failed: the whole file goes as before).

    API calls are retried as ``retry`` says."""
    if item.part is not None or item.parts or input_sha256_of(latest) != item.sha256:
        return None
    if "pack" in latest:  # a packed job's answers carry prefixed keys: the input goes
        return None  # whole, as a pack (``_submit._pack``), when its job ended badly
    jobs = await _ended_chain(api, retry, latest)
    if jobs is None:
        return None
    with tempfile.TemporaryDirectory(prefix="gembatch-answers-") as folder:
        outputs = await _download_outputs(api, retry, jobs, Path(folder))
        answered = await anyio.to_thread.run_sync(answered_digests, outputs)
    if not answered and jobs[-1].state in _WHOLE_AGAIN:
        return None
    next_round = round_of(latest) + 1
    plan = await anyio.to_thread.run_sync(plan_remainder, item.path, answered, next_round, jobs)
    if plan is None:
        return None
    if plan.count == 0:
        return NothingToSend("every request has an answer")
    if next_round > resubmits:
        return NothingToSend(
            f"{plan.count} requests still have no answer after {next_round - 1} "
            f"resubmissions (--resubmits {resubmits})"
        )
    return _narrowed(item, plan)


def _narrowed(item: InputFile, plan: Remainder) -> InputFile:
    return replace(
        item,
        sha256=plan.sha256,
        size_bytes=plan.size,
        count=plan.count,
        input_sha256=item.sha256,
        selection=plan,
    )


async def _ended_chain(
    api: Backend,
    retry: RetrySettings,
    latest: JobLine,
) -> list[JobRef] | None:
    """The input's jobs, oldest first, as they ended; None while the newest has not
    ended (or is gone: the whole file goes again, as before)."""
    name = batch_name_of(latest)
    recorded = latest.get("batch")
    state = batch_state_of(latest)
    output = output_of(recorded) if isinstance(recorded, dict) else None
    if state not in END_STATES:  # as recorded; an ended state is trusted, as submit does
        try:
            batch = await call_with_retries(retry, lambda: api.get_batch(name))
        except NotFoundApiError:
            return None
        state = batch.state.value if batch.state is not None else state
        output = output_of_job(batch) or output
    if state not in END_STATES:
        return None
    upload = latest.get("uploaded_file_name")
    if latest.get("upload_deleted_at") or not isinstance(upload, str):
        upload = None
    return [*completed_jobs(latest), JobRef(name, state, output, upload)]


async def _download_outputs(
    api: Backend,
    retry: RetrySettings,
    jobs: list[JobRef],
    folder: Path,
) -> list[Path]:
    """Every output the chain's jobs left, downloaded into ``folder``. A job that ended
    without results may have left none (Gemini) or only its completed rows (Vertex)."""
    paths: list[Path] = []
    for number, job in enumerate(jobs):
        if job.output is None:
            continue
        target = folder / f"{number}.jsonl"
        try:
            await _download(api, retry, job.output, target)
        except NotFoundApiError:
            if job.state not in _WHOLE_AGAIN:
                raise
            continue  # ended before it completed any row
        paths.append(target)
    return paths


async def _download(api: Backend, retry: RetrySettings, output: str, target: Path) -> None:
    await call_with_retries(retry, lambda: api.download_file(output, str(target)))
