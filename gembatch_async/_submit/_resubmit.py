"""--retry-failed, request by request: send again only the requests without an answer.

Asked under the input's claim, with the journal just re-read, so two processes (or a
rerun after a kill) decide from the same recorded jobs and the same outputs: the same
round file, hence the same upload name and batch token (see ``_results._remainder``).
A round is made only once the input's newest job has ended, so an input has at most
one job in flight.

Each part of a split input is its own unit here, as everywhere (its key ``ID#2/3``, its
own claim-protected decision): its round carries the part's unanswered requests, which
fit the limits the part was cut by. An input sent in a pack (``--pack``) reads its
answers from its share of the pack's output (its key prefix) and goes in a round of its
own: only its unanswered requests, never a sibling's, and the round is an ordinary job
(no prefix), so it needs nothing from the pack but the pack's output.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import anyio.to_thread

from .._backends import END_STATES, Backend, output_of
from .._errors import NotFoundApiError
from .._inputs import InputFile
from .._journal import JobLine, batch_name_of, batch_state_of, unit_sha256_of
from .._results._remainder import (
    JobRef,
    Remainder,
    answered_digests,
    completed_jobs,
    plan_remainder,
    round_of,
)
from .._results._unpack import member_output
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
    """The input (or one part of it) narrowed to its unanswered requests, NothingToSend,
    or None when this is not a case for a round (an input changed since, a job not
    ended, nothing answered by a job that failed: the whole file, or part, goes as
    before).

    API calls are retried as ``retry`` says."""
    if item.parts or unit_sha256_of(latest) != item.sha256:
        return None
    jobs = await _ended_chain(api, retry, latest)
    if jobs is None:
        return None
    with tempfile.TemporaryDirectory(prefix="gembatch-answers-") as folder:
        outputs = await _download_outputs(api, retry, jobs, Path(folder))
        answered = await anyio.to_thread.run_sync(answered_digests, outputs)
    if not answered and jobs[-1].state in _WHOLE_AGAIN:
        return None
    next_round = round_of(latest) + 1
    part = (item.part.start, item.part.end, item.part.sha256) if item.part is not None else None
    plan = await anyio.to_thread.run_sync(
        plan_remainder, item.path, answered, next_round, jobs, part
    )
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
    """The round's unit: a part's keeps its place (key, label, split) and the whole
    input's sha256; a whole input's records its own as the input's."""
    return replace(
        item,
        sha256=plan.sha256,
        size_bytes=plan.size,
        count=plan.count,
        input_sha256=item.input_sha256 if item.part is not None else item.sha256,
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
        state = batch.state if batch.state is not None else state
        output = batch.output or output
    if state not in END_STATES:
        return None
    upload = latest.get("uploaded_file_name")
    if latest.get("upload_deleted_at") or not isinstance(upload, str):
        upload = None
    prefix = _pack_prefix(latest)
    if prefix is not None:  # the pack's upload is its members' together: their lines keep it
        upload = None
    return [*completed_jobs(latest), JobRef(name, state, output, upload, prefix)]


def _pack_prefix(line: JobLine) -> str | None:
    """The input's key prefix in the packed job its line records (``_submit._pack``)."""
    pack = line.get("pack")
    prefix = pack.get("key_prefix") if isinstance(pack, dict) else None
    return prefix if isinstance(prefix, str) and prefix else None


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
        if job.key_prefix is not None:  # a pack: only this input's share, its own keys
            share = folder / f"{number}.share.jsonl"
            await anyio.to_thread.run_sync(
                functools.partial(member_output, target, share, job.key_prefix, unowned=False)
            )
            target = share
        paths.append(target)
    return paths


async def _download(api: Backend, retry: RetrySettings, output: str, target: Path) -> None:
    await call_with_retries(retry, lambda: api.download_file(output, str(target)))
