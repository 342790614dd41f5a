"""The long-lived pipeline: submit under admission, watch, download, clean up.

``run`` is the command a high-volume user leaves running. Two tasks share one task
group: the submit pipeline (waiting at the service's limits instead of deferring)
and a watcher that polls this run's unfinished jobs, reading them from the job
listing (``_jobs._listing``: a few requests for hundreds of jobs) at a pace that
adapts (``_jobs._pace``: short while jobs are finishing, up to ``interval``). The moment
a job succeeds its results are downloaded (where ``download`` puts them) and its
upload is deleted; a job's end gives capacity back to the submit side. It ends when
every input's results are in or the input has failed.

Everything it knows lives in the journal and on disk, so a rerun of the same
command after a kill (SIGKILL included) continues: recorded files are not
submitted again, results already in place are not fetched again, and uploads of
ended jobs are deleted then.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import anyio

from ._admission import Admission, Limit
from ._backends import END_STATES, RESULT_STATES, Backend, VertexTarget
from ._backends._sessions import GenaiClient, chosen_target, open_target
from ._backends._target import Target
from ._errors import ApiError, UsageError
from ._events import (
    Event,
    EventHandler,
    FileFailed,
    FileSkipped,
    JobChanged,
    JobEnded,
    ResultsSaved,
    RunSummary,
    WaitingForCapacity,
    ignore_events,
)
from ._inputs import InputFile
from ._jobs import (
    JobsContext,
    JobStatus,
    RecordedTargets,
    cleanup_files,
    collect_results,
    earlier_uploads,
    reads_a_pack,
    record_results,
    recorded_targets,
    refresh_lines,
    with_uploads_deleted,
)
from ._jobs._listing import JobListing
from ._jobs._pace import Pace
from ._journal import JobLine
from ._prices import Cost, total_cost
from ._results import ResultFile
from ._results._once import downloads_once
from ._results._remainder import round_of
from ._results._usage import TokenUsage
from ._retry import describe
from ._settings import DEFAULT_JOB_INFO, SubmitSettings, checked_path
from ._submit import admission_for, check_model, prepared
from ._submit._pack import submit_run_for
from ._submit._pipeline import RETRYABLE_END_STATES, SubmitRun
from ._submit._twins import cancel_recorded_twins
from ._webhooks import Nudges, WebhookSettings, receiving


@dataclass
class _Input:
    """One input of this run and how far it got."""

    item: InputFile
    resubmits_left: int
    #: The state last reported, to report each change once.
    state: str = ""
    done: bool = False
    failed: bool = False
    #: A resubmission of it is under way: its recorded job is the old one until it lands.
    resubmitting: bool = False
    #: Its job succeeded (a part waits here for the other parts of its input).
    succeeded: JobStatus | None = None
    #: Sending its requests again found nothing to send (all answered, or its rounds
    #: used up): its ended job's results are collected as they are.
    rounds_done: bool = False


@dataclass
class _Watch:
    """The run's inputs by identity, and what the watcher has settled."""

    inputs: dict[str, _Input]
    submitting: int = 0
    interrupted: bool = False
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "downloaded": 0,
            "failed": 0,
            "incomplete": 0,
            "requests": 0,
            "answered": 0,
            "failed_requests": 0,
        }
    )
    #: The failed-requests files written (or found) for this run's inputs.
    failed_paths: list[str] = field(default_factory=list)
    #: Of those, the files of inputs whose rounds are used up, and their rounds.
    used_up: dict[str, int] = field(default_factory=dict)
    #: Tokens and cost of each input's answers (those whose usage was read).
    usages: list[TokenUsage] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)

    def settled(self) -> bool:
        return self.submitting == 0 and all(i.done or i.failed for i in self.inputs.values())


async def run(
    paths: Sequence[str | os.PathLike[str]],
    *,
    settings: SubmitSettings | None = None,
    job_info: str | os.PathLike[str] = DEFAULT_JOB_INFO,
    out_dir: str | os.PathLike[str] | None = None,
    interval: float = 30.0,
    resubmits: int = 1,
    client: GenaiClient | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    on_event: EventHandler = ignore_events,
    stop: anyio.Event | None = None,
    vertex: VertexTarget | None = None,
    webhooks: WebhookSettings | None = None,
) -> RunSummary:
    """Submit every file under admission, then watch, download and clean up until done.

    ``settings.retry_failed`` sends again the requests of an input that have no
    answer (a job that ended FAILED, CANCELLED or EXPIRED, or answered some requests
    with errors), at most ``resubmits`` times per file in this run and ``resubmits``
    rounds per input in the journal. Setting ``stop`` starts nothing new and ends the
    run once in-flight files have settled. ``webhooks`` asks for a dynamic webhook on
    each job and serves the receiver: a delivery makes the watcher look at its job at
    once; polling every ``interval`` stays on as the fallback.
    """
    settings = settings or SubmitSettings()
    if out_dir is not None:
        checked_path(out_dir, "out_dir")
    retry_failed = settings.retry_failed
    # The watcher resubmits jobs that ended badly (earlier runs' too), counting each
    # time; the submit side only submits what the journal does not record.
    settings = replace(
        settings, wait_for_capacity=True, dry_run=False, retry_failed=False, resubmits=resubmits
    )
    target = chosen_target(client, api_key=api_key, base_url=base_url, vertex=vertex)
    if webhooks is not None:
        if (problem := target.webhook_problem()) is not None:
            raise UsageError(problem)
        settings = replace(settings, webhook_url=webhooks.url)
    stop = stop or anyio.Event()
    started = time.monotonic()
    async with (
        prepared(paths, settings, job_info, target, on_event) as (journal, view, items),
        open_target(target) as api,
    ):
        if not await check_model(api, settings, items, stop):  # cut by the stop bound
            return RunSummary(0, 0, 0, 0, time.monotonic() - started, interrupted=True)
        jobs = JobsContext(journal, api, settings.retry, prices=settings.prices)
        watch = _Watch({item.key: _Input(item, resubmits if retry_failed else 0) for item in items})
        admission = admission_for(journal, view, settings, api)
        runner = _Runner(jobs, target, api, settings, admission, on_event, stop, watch)
        async with receiving(webhooks, journal) as nudges:
            tally = await runner.run(items, _Polling(out_dir, interval, nudges))
    return _summary(tally, watch, time.monotonic() - started)


def _summary(tally: _SubmitTally, watch: _Watch, elapsed: float) -> RunSummary:
    counts = watch.counts
    failed = tally.failed + counts["failed"]
    whole = not (failed or counts["incomplete"] or counts["failed_requests"] or watch.interrupted)
    return RunSummary(
        submitted=tally.submitted,
        skipped=tally.skipped,
        failed=failed,
        downloaded=counts["downloaded"],
        incomplete=counts["incomplete"],
        elapsed=elapsed,
        interrupted=watch.interrupted,
        requests=counts["requests"],
        answered=counts["answered"],
        failed_requests=counts["failed_requests"],
        failed_paths=tuple(sorted(watch.failed_paths)),  # the same order whatever ended first
        used_up_paths=tuple(sorted(watch.used_up)),
        rounds_used=max(watch.used_up.values(), default=0),
        complete=whole and all(i.done for i in watch.inputs.values()),
        usage=sum(watch.usages, TokenUsage()) if watch.usages else None,
        cost=total_cost(watch.costs),
    )


class _Runner:
    """The submit side and the watcher, sharing one gate and one journal."""

    def __init__(
        self,
        jobs: JobsContext,
        target: Target,
        api: Backend,
        settings: SubmitSettings,
        admission: Admission,
        emit: EventHandler,
        stop: anyio.Event,
        watch: _Watch,
    ) -> None:
        self.jobs = jobs
        self.target = target
        #: The whole backend: the job side's calls go through ``jobs``, submit's here.
        self.api = api
        self.settings = settings
        self.admission = admission
        self.emit = emit
        self.stop = stop
        self.watch = watch
        self.polling = _Polling(None, 30.0)
        self._full_poll_due = 0.0
        #: The job listing every poll reads first (GETs only for what it cannot answer).
        self.listing = JobListing(jobs.api, jobs.call)
        #: A file waits for storage: the watcher deletes ended jobs' uploads.
        self._storage_short = False
        #: Results built at once (CPU work, a few MiB each).
        self._builds = anyio.CapacityLimiter(2)
        #: Inputs whose job's news (results, an end) are handled at once.
        self._settling = anyio.CapacityLimiter(8)
        #: This poll's jobs context, downloading each packed job's output once, and
        #: what the journal says of result targets when the poll began.
        self._shared = jobs
        self._known: RecordedTargets | None = None
        #: Results written in this poll, recorded in the journal together at its end.
        self._collected: list[tuple[list[JobStatus], ResultFile]] = []
        self.submitted = self._submit_run(settings)
        #: What this run's submissions again (after a job ended badly) came to: they
        #: count in the summary like the first ones.
        self.again = _SubmitTally(0, 0, 0)

    def _submit_run(self, settings: SubmitSettings) -> SubmitRun:
        return submit_run_for(
            self.target,
            self.api,
            self.jobs.journal,
            settings,
            self._on_submit_event(),
            self.stop,
            self.admission,
        )

    async def run(self, items: list[InputFile], polling: _Polling) -> _SubmitTally:
        self.polling = polling
        self._full_poll_due = anyio.current_time() + polling.interval
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._submit, items)
            with anyio.CancelScope() as watching:
                async with anyio.create_task_group() as bound:
                    bound.start_soon(self._cut_after_stop, watching)
                    await self._watch_until_settled(tg)
                    bound.cancel_scope.cancel()
            if watching.cancelled_caught:
                self.watch.interrupted = True
        return _SubmitTally(
            self.submitted.tally.submitted + self.again.submitted,
            self.submitted.tally.skipped,
            self.submitted.tally.failed + self.again.failed,
        )

    async def _cut_after_stop(self, watching: anyio.CancelScope) -> None:
        """The stop bound for the watcher, as the submit side has its own: after a stop,
        the downloads, deletes and polls in flight get cleanup_seconds to finish, then
        every wait of the watcher is cut (a stalled download or delete too). What it
        leaves undone (results, upload deletes) the next run or cleanup does."""
        await self.stop.wait()
        await anyio.sleep(self.settings.cleanup_seconds)
        watching.cancel()

    # -- the submit side -------------------------------------------------------------
    async def _submit(self, items: list[InputFile]) -> None:
        self.watch.submitting += 1
        try:
            await self.submitted.run(items)
        finally:
            self.watch.submitting -= 1
            if self.submitted.interrupted:
                self.watch.interrupted = True

    def _on_submit_event(self) -> EventHandler:
        def forward(event: Event) -> None:
            if isinstance(event, WaitingForCapacity) and event.limit == Limit.STORAGE.key:
                self._storage_short = True
            if isinstance(event, FileFailed):
                entry = self._input_named(event.path)
                if entry is not None:
                    entry.failed = True
            self.emit(event)

        return forward

    def _input_named(self, path: str) -> _Input | None:
        for entry in self.watch.inputs.values():
            if entry.item.label == path:
                return entry
        return None

    def _siblings(self, entry: _Input) -> list[_Input]:
        """The entries of one input: itself, or every part of a split input, in order."""
        if entry.item.part is None:
            return [entry]
        found = [e for e in self.watch.inputs.values() if e.item.identity == entry.item.identity]
        return sorted(found, key=lambda e: e.item.part.number if e.item.part else 0)

    async def _resubmit(self, entry: _Input, ended: JobStatus | None = None) -> None:
        """A job of this run ended badly, or left requests without an answer, and may be
        tried again: one more submission (of those requests only, when some were
        answered). When there is nothing to send, the ``ended`` job's results are
        collected now."""
        again = self._submit_run(replace(self.settings, retry_failed=True))
        again.emit = self._without_skips(again.emit)
        self.watch.submitting += 1
        try:
            tally = await again.run([entry.item])
            self.again = _SubmitTally(
                self.again.submitted + tally.submitted, 0, self.again.failed + tally.failed
            )
            if tally.skipped:  # nothing left to send: its results are what it has
                entry.rounds_done = True
                if ended is not None and (ended.state in RESULT_STATES or ended.completes):
                    entry.succeeded = ended
                    await self._collect(entry, in_poll=False)
        finally:
            self.watch.submitting -= 1
            entry.resubmitting = False
            entry.state = ""

    # -- the watcher -----------------------------------------------------------------
    async def _watch_until_settled(self, tg: anyio.abc.TaskGroup) -> None:
        pace = Pace(self.polling.interval)
        only: set[str] | None = None
        while True:
            changed = await self._poll_once(tg, only)
            if only is None:  # a full poll sets when the next one is due
                wait = pace.next_wait(changed) if self.polling.nudges is None else None
                self._full_poll_due = anyio.current_time() + (wait or self.polling.interval)
            if self._storage_short:
                self._storage_short = False
                await self._free_storage()
            if self.watch.settled() or (self.stop.is_set() and self.watch.submitting == 0):
                if self.stop.is_set():
                    self.watch.interrupted = True
                return
            only = await self._rest()

    async def _free_storage(self) -> None:
        """Storage holds files back: delete the uploads of every ended job the journal
        records (they only take room now, until they expire), and count the room free."""
        sizes = {
            line.get("uploaded_file_name"): line.get("size_bytes") for line in self.jobs.recorded()
        }
        for cleaned in await cleanup_files(self.jobs):
            size = sizes.get(cleaned.file_name)
            if (cleaned.deleted or cleaned.error == "already gone") and isinstance(size, int):
                self.admission.release_bytes(size)

    async def _rest(self) -> set[str] | None:
        """Wait for the next full poll (its pace adapts without webhooks), a stop, or (with
        webhooks) a delivery. Returns the inputs a delivery named, to look at only those;
        None: look at all."""
        due = self._full_poll_due  # deliveries never put off the fallback poll
        nudges = self.polling.nudges
        if nudges is None:
            with anyio.move_on_at(due):
                await self.stop.wait()
            return None
        with anyio.move_on_at(due):
            async with anyio.create_task_group() as woken:
                for wake in (self.stop.wait, nudges.wait):
                    woken.start_soon(_then_cancel, wake, woken.cancel_scope)
        named = nudges.take()
        if named and not self.stop.is_set() and anyio.current_time() < due:
            return named
        return None

    async def _poll_once(self, tg: anyio.abc.TaskGroup, only: set[str] | None = None) -> bool:
        """Read this run's unfinished jobs (``only`` these inputs, when given: a webhook is
        a hint, the service's answer here is what counts) and act on each; whether any
        changed state."""
        view = self.jobs.journal.refresh()
        tracked = [
            (entry, view.latest[identity])
            for identity, entry in self.watch.inputs.items()
            if identity in view.latest
            and not (entry.done or entry.failed or entry.resubmitting)
            and (only is None or identity in only)
        ]
        if not tracked:
            return False
        if only is None:
            await self._cancel_late_twins([line for _, line in tracked])
        statuses = await refresh_lines(self.jobs, [line for _, line in tracked], self.listing)
        changes: list[bool] = []
        # Inputs are settled side by side (a packed job ends for all its inputs at once:
        # one after the other, their downloads and journal writes add up).
        async with (
            downloads_once(self.jobs.api) as shared,
            anyio.create_task_group() as settling,
        ):
            self._shared = replace(self.jobs, api=shared)
            # Read once a poll: this poll's results are recorded together at its end.
            self._known = recorded_targets(self.jobs)
            for (entry, _line), status in zip(tracked, statuses, strict=True):
                settling.start_soon(self._settle_input, entry, status, tg, changes)
        collected, self._collected = self._collected, []
        if collected:
            with anyio.CancelScope(shield=True):  # what is on disk gets its record
                await record_results(self.jobs, collected)
        return any(changes)

    async def _cancel_late_twins(self, lines: list[JobLine]) -> None:
        """A job created after a look-up may get a twin from a lost create that lands
        late (``_submit/_twins``): look for it while the job is unfinished (the listing of
        every job is the submit side's call)."""
        api = self.api

        async def cancel(name: str) -> None:
            await self.jobs.call(lambda: api.cancel_batch(name))

        await cancel_recorded_twins(
            lines, lambda: self.jobs.call(api.list_batches), cancel, self.emit
        )

    async def _settle_input(
        self, entry: _Input, status: JobStatus, tg: anyio.abc.TaskGroup, changes: list[bool]
    ) -> None:
        """Act on one input's status; note whether its job changed state."""
        async with self._settling:
            changes.append(await self._on_status(entry, status, tg))

    async def _on_status(self, entry: _Input, status: JobStatus, tg: anyio.abc.TaskGroup) -> bool:
        """Act on one job's status; whether it changed state since the last poll saw it."""
        if status.error is not None and not status.error_is_final:
            return False  # not read this time; the next poll asks again
        if status.error is not None:  # the batch is gone, or not ours: it will not finish
            await self._ended_badly(entry, status, tg)
            return True
        changed = bool(entry.state) and status.state != entry.state
        if status.state != entry.state:
            entry.state = status.state
            self.emit(JobChanged(entry.item.label, status.batch_name, status.state, status.stats))
        if status.state not in END_STATES:
            return changed
        self.admission.job_ended(status.batch_name)  # a place in the window, and its tokens
        if self._may_send_again(entry, status):
            self._send_again(entry, status, tg)
        elif status.state in RESULT_STATES or status.completes:
            entry.succeeded = status
            await self._collect(entry)
        elif status.state in RETRYABLE_END_STATES:
            await self._ended_badly(entry, status, tg)
        return True

    def _may_send_again(self, entry: _Input, status: JobStatus) -> bool:
        """Whether the input's requests without an answer go again (request by request:
        ``_submit._resubmit``; each part of a split input for its own requests)."""
        if entry.rounds_done:
            return False
        if entry.resubmits_left <= 0 or self.stop.is_set():
            return False
        line = self.jobs.journal.refresh().latest.get(entry.item.key)
        if line is not None and round_of(line) >= self.settings.resubmits:
            return False  # its rounds are used up: what it has are its results
        # A job that succeeded is looked at too, whatever its counts say: whether the
        # service counts per-request errors as failed requests is not documented, so
        # its outputs decide (see _submit._resubmit).
        return status.state in RETRYABLE_END_STATES or status.state in RESULT_STATES

    def _send_again(self, entry: _Input, status: JobStatus, tg: anyio.abc.TaskGroup) -> None:
        """Start sending the input's unanswered requests (or the whole file) again; said
        up front when the service's counts show some, else by the submission itself."""
        unanswered = _unanswered_requests(status)
        if status.state in RETRYABLE_END_STATES or unanswered:
            reason = (
                f"{unanswered} requests without an answer"
                if unanswered and status.state not in RETRYABLE_END_STATES
                else status.batch_error or status.state.removeprefix("JOB_STATE_").lower()
            )
            self.emit(JobEnded(entry.item.label, status.batch_name, status.state, reason, True))
        entry.resubmits_left -= 1
        entry.resubmitting = True
        tg.start_soon(self._resubmit, entry, status)

    @staticmethod
    def _without_skips(emit: EventHandler) -> EventHandler:
        """A resubmission that finds nothing to send says nothing (the results will)."""

        def forward(event: Event) -> None:
            if not isinstance(event, FileSkipped):
                emit(event)

        return forward

    async def _collect(self, entry: _Input, *, in_poll: bool = True) -> None:
        """Once every job of the input has succeeded (one, or one per part), write its
        results, then delete the jobs' uploads (they only take storage now).

        Outside a poll (after a resubmission found nothing to send) a packed output is
        downloaded on its own: the poll's shared copies are removed when it ends."""
        siblings = self._siblings(entry)
        group = [s.succeeded for s in siblings if s.succeeded is not None]
        if len(group) < len(siblings):
            return  # the other parts are not done yet
        status = group[0]
        try:
            result = await collect_results(
                self._shared if reads_a_pack(group) and in_poll else self.jobs,  # a pack's: once
                group,
                self.polling.out_dir,
                self._builds,
                self._together(),
                record=False,  # recorded with the others of this poll, in one rewrite
                known=self._known,
            )
        except ApiError as exc:
            self.emit(JobEnded(status.path, status.batch_name, status.state, describe(exc), False))
            return  # the next poll tries again
        self._collected.append((group, result))
        if result.error is not None:
            self.emit(JobEnded(status.path, status.batch_name, status.state, result.error, False))
            await self._fail(siblings)
            return
        cost = result.cost
        self.emit(
            ResultsSaved(
                status.path,
                status.batch_name,
                result.output_path,
                result.responses,
                result.errors,
                already=result.skipped,
                complete=result.complete,
                requests=result.requests,
                failed=result.failed,
                failed_path=result.failed_path if result.failed else None,
                usage=result.usage,
                cost=cost,
            )
        )
        for sibling in siblings:
            await self._delete_upload(sibling)
            sibling.done = True
        self._count(result, cost, self._rounds_if_used_up(entry))

    def _rounds_if_used_up(self, entry: _Input) -> int | None:
        """The rounds the input has had, when they are all it may have under this
        ``--resubmits`` (``_submit._resubmit`` sends nothing more); else None.

        A split input's parts each have their rounds: it counts as used up by its part
        with the most. A run with --retry-failed gives every part with failed requests
        its rounds, so a part with fewer had none to send."""
        latest = self.jobs.journal.refresh().latest
        keys = [s.item.key for s in self._siblings(entry)] if entry.item.part else [entry.item.key]
        done = max((round_of(latest[k]) for k in keys if k in latest), default=0)
        return done if done >= self.settings.resubmits else None

    def _count(self, result: ResultFile, cost: Cost | None, used_up: int | None) -> None:
        """An input's results are in: what the summary says of its requests."""
        if result.usage is not None and cost is not None:
            self.watch.usages.append(result.usage)
            self.watch.costs.append(cost)
        counts = self.watch.counts
        counts["downloaded"] += 1
        if not result.complete:  # answers missing or unknown: the file is not whole
            counts["incomplete"] += 1
        counts["requests"] += result.requests
        counts["answered"] += result.responses
        counts["failed_requests"] += result.failed
        if result.failed and result.failed_path:
            self.watch.failed_paths.append(result.failed_path)
            if used_up is not None:
                self.watch.used_up[result.failed_path] = used_up

    def _together(self) -> list[str]:
        """Every input of this run: their results must not land on one file."""
        return list(dict.fromkeys(e.item.path for e in self.watch.inputs.values()))

    async def _delete_upload(self, entry: _Input) -> None:
        """Delete the upload of the input's recorded job, and of the earlier jobs a round
        completes: no job reads them any more."""
        line = self.jobs.journal.refresh().latest.get(entry.item.key)
        if line is None:
            return
        own = line.get("uploaded_file_name")
        for earlier in earlier_uploads(line):
            if earlier != own:
                await self._delete_one_upload(earlier, entry.item.size_bytes)
        if isinstance(own, str) and not line.get("upload_deleted_at"):
            size = line.get("size_bytes")
            await self._delete_one_upload(own, size if isinstance(size, int) else 0)

    async def _delete_one_upload(self, name: str, size: int) -> None:
        try:
            await self.jobs.call(lambda: self.jobs.api.delete_file(name))
        except ApiError:
            return  # cleanup can do it later; the results are what matters
        await anyio.to_thread.run_sync(self.jobs.journal.rewrite, with_uploads_deleted({name}))
        self.admission.release_bytes(size)

    async def _ended_badly(self, entry: _Input, status: JobStatus, tg: anyio.abc.TaskGroup) -> None:
        """Submit it again if allowed (its upload is reused), else report it and delete
        the upload, which no job will read any more."""
        retry = entry.resubmits_left > 0 and not self.stop.is_set()
        reason = (
            status.error or status.batch_error or status.state.removeprefix("JOB_STATE_").lower()
        )
        self.emit(JobEnded(entry.item.label, status.batch_name, status.state, reason, retry))
        if retry:
            entry.resubmits_left -= 1
            entry.resubmitting = True
            tg.start_soon(self._resubmit, entry)
        else:
            await self._fail(self._siblings(entry))

    async def _fail(self, siblings: list[_Input]) -> None:
        """The input will have no results (a part of it failed): it counts once, and
        the uploads of its parts are deleted."""
        if not any(s.failed for s in siblings):
            self.watch.counts["failed"] += 1
        for sibling in siblings:
            sibling.failed = True
            await self._delete_upload(sibling)


async def _then_cancel(wait: Callable[[], Awaitable[object]], scope: anyio.CancelScope) -> None:
    await wait()
    scope.cancel()


def _unanswered_requests(status: JobStatus) -> int | None:
    """Requests of an ended job without an answer, as the service counts them (None
    when it gave no counts: then the outputs tell, see ``_submit._resubmit``)."""
    stats = status.stats
    if stats is None or not stats.requests:
        return None
    return stats.requests - stats.succeeded


@dataclass(frozen=True)
class _Polling:
    """Where results go, how often the watcher asks, and what wakes it sooner."""

    out_dir: str | os.PathLike[str] | None
    interval: float
    nudges: Nudges | None = None


@dataclass(frozen=True)
class _SubmitTally:
    submitted: int
    skipped: int
    failed: int
