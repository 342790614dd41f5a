"""Packing (``--pack``): many small inputs in one shared job, results split back per input.

A job window of N unfinished jobs runs N inputs at once; 200 small files through a
window of 20 take ten waves. Packed, they take one: whole inputs that fit together
(requests and bytes per job, by backend: ``JobLimits``) go into one upload, each
request's key namespaced by the input's place in the pack (``3~key``: the number
before the first ``~`` names the input, the rest is its own key, so the mapping
is unambiguous and reversed exactly; see ``_results/_unpack``).

Exactly-once holds per input, as for a job of its own:

- The upload id and the batch token come from the pack's members (identity and
  sha256 of each, in order) and content, so the same command after a kill packs
  the same inputs the same way, finds the upload (409) and the batch (by its
  token), and adopts them: no second job.
- The job is recorded as one journal line per member, all in one append (one
  ``write``): each names its own input, sha256 and size (so a rerun skips it, a
  changed member is noticed, ``status`` shows it with the job that carries it),
  and each carries the whole pack (``carries``: every member's identity, sha256,
  keys' sha256 and request count, the data model shared with request-level
  resubmission) and its own place in it (``pack``).
- Every member is claimed (sorted, so two processes never wait on each other)
  before the pack is planned again against the journal; a member another process
  recorded meanwhile fails the pack before anything is sent.
- A pack whose job ended badly without an output is packed again (``--retry-failed``)
  for the members that have no results recorded, never for those that have. A pack
  that left answers (one that succeeded with per-request errors, or a Vertex job that
  failed, was cancelled or expired after completing some rows) is never packed again:
  each member goes in a round of its own (``_submit._resubmit``) with only its
  unanswered requests. Rounds are not packed again: a round's lines are a member's
  own (no prefix), so its chain reads like any input's, and no round waits for other
  inputs' jobs to end before it can be planned (a pack would).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from .._admission import Admission
from .._backends import END_STATES, Backend, Job, output_of
from .._backends._target import Target
from .._errors import ApiError, InputChangedError, NotFoundApiError
from .._events import (
    Event,
    EventHandler,
    FileDeferred,
    FileFailed,
    FileSkipped,
    FileSubmitted,
)
from .._identity import NAME_PREFIX
from .._inputs import InputFile, JobLimits, open_as_checked
from .._journal import JobLine, Journal, JournalView, batch_name_of, batch_state_of, keys_sha256
from .._names import display_path
from .._settings import SubmitSettings
from ._one_file import Submission
from ._pipeline import RETRYABLE_END_STATES, SubmitRun
from ._writer import Completion, Tally, deliver, failed

#: Ends each member's key prefix: the number before the first ``~`` names the member.
PREFIX_END = "~"
_READ_SIZE = 1 << 20
#: The admission's token estimate (``_admission.estimated_tokens``): one per 4 bytes.
_BYTES_PER_TOKEN = 4


def key_prefix(member: int) -> str:
    """The prefix of every key of the pack's ``member``-th input (from 1)."""
    return f"{member}{PREFIX_END}"


@dataclass(frozen=True)
class Member:
    """One input of a pack, as planned: what its share of the packed file holds."""

    item: InputFile
    #: Its place in the pack (from 1): its keys' prefix.
    number: int
    #: Bytes of its lines in the packed file, and the sha256 of its request keys.
    packed_bytes: int
    keys_sha256: str

    @property
    def prefix(self) -> str:
        return key_prefix(self.number)


@dataclass(frozen=True)
class Pack(InputFile):
    """A packed job: submitted like one input, recorded as one line per member."""

    members: tuple[Member, ...] = ()

    def carries(self) -> list[dict[str, object]]:
        """The shared ``carries`` field: every input the job holds, whole."""
        return [
            {
                "input": m.item.identity,
                "sha256": m.item.sha256,
                "keys_sha256": m.keys_sha256,
                "requests": m.item.count,
            }
            for m in self.members
        ]


# -- planning -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Candidate:
    item: InputFile
    #: Its lines' bytes in a packed file, without their key prefixes.
    bare_bytes: int
    keys_sha256: str


def packable(item: InputFile) -> bool:
    """Whole inputs read by pre-flight go in packs; a part of a split input is a job's
    worth already, and an input known only from the journal is never sent."""
    return item.part is None and not item.parts and bool(item.sha256) and item.count > 0


def plan_packs(items: Sequence[InputFile], limits: JobLimits) -> list[InputFile]:
    """The units to submit: ``items`` with those that fit together replaced by packs.

    Greedy in the given order (so the same command makes the same packs), one kind
    and at most ``limits`` per pack. An input whose requests do not all have a key
    (answers to it are matched by position, which a shared job cannot keep) goes
    alone, as does one a pack would hold alone. Blocking (reads each input); run it
    in a thread.
    """
    units: list[InputFile] = []
    group: list[_Candidate] = []
    used = [0, 0]  # bytes, requests

    def close() -> None:
        pack = _pack_of(group) if len(group) > 1 else None
        if pack is not None:
            units.append(pack)
        else:
            units.extend(c.item for c in group)
        group.clear()
        used[:] = [0, 0]

    for item in items:
        candidate = _candidate(item) if packable(item) else None
        if candidate is None:
            units.append(item)
            continue
        number = len(group) + 1
        size = candidate.bare_bytes + item.count * len(key_prefix(number))
        fits = (
            group
            and group[0].item.kind == item.kind
            and used[0] + size <= limits.max_bytes
            and (limits.max_requests is None or used[1] + item.count <= limits.max_requests)
        )
        if group and not fits:
            close()
            size = candidate.bare_bytes + item.count * len(key_prefix(1))
        group.append(candidate)
        used[0] += size
        used[1] += item.count
    close()
    return units


def _candidate(item: InputFile) -> _Candidate | None:
    """What packing needs of one input (one read), or None when it cannot be packed
    (a request without a string key, or a file changed since pre-flight)."""
    keys: list[str] = []
    size = 0
    try:
        for obj in _requests(item.path):
            key = obj.get("key")
            if not isinstance(key, str):
                return None
            keys.append(key)
            size += len(_packed_line(obj, ""))
    except (OSError, ValueError):
        return None
    if len(keys) != item.count:
        return None
    return _Candidate(item, size, keys_sha256(keys))


def _pack_of(group: list[_Candidate]) -> Pack | None:
    """The pack of these inputs; None when one of them can no longer be read as it was
    (each then goes alone, and its upload says what changed)."""
    members = tuple(
        Member(c.item, n, c.bare_bytes + c.item.count * len(key_prefix(n)), c.keys_sha256)
        for n, c in enumerate(group, start=1)
    )
    hasher = hashlib.sha256()
    try:
        for member in members:
            for obj in _requests(member.item.path):
                if not isinstance(obj.get("key"), str):
                    return None
                hasher.update(_packed_line(obj, member.prefix))
    except (OSError, ValueError):
        return None
    first = group[0].item
    # Its identity, made of its members' (identity and content, in order): the same
    # plan gets the same upload id and batch token (see _identity), another plan another.
    recipe = "\0".join(f"{m.item.identity}\0{m.item.sha256}" for m in members)
    identity = f"{NAME_PREFIX}pack-{hashlib.sha256(recipe.encode('utf-8', 'surrogatepass')).hexdigest()[:24]}"
    label = f"pack of {len(members)} inputs ({display_path(first.path)}, ...)"
    return Pack(
        path=label,
        size_bytes=sum(m.packed_bytes for m in members),
        sha256=hasher.hexdigest(),
        count=sum(m.item.count for m in members),
        identity=identity,
        kind=first.kind,
        members=members,
    )


def _requests(path: str) -> Iterable[dict[str, object]]:
    """The request objects of a JSONL file, in order (blank lines skipped)."""
    with open(path, "rb", buffering=_READ_SIZE) as handle:
        for raw in handle:
            if raw.strip():
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                yield obj


def _packed_line(obj: dict[str, object], prefix: str) -> bytes:
    """One request as the packed file holds it: the same object, its key prefixed."""
    line = {**obj, "key": f"{prefix}{obj['key']}"} if prefix else obj
    try:
        text = json.dumps(line, ensure_ascii=False, separators=(",", ":"))
        return text.encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (an escape in the input): keep it escaped
        return json.dumps(line, separators=(",", ":")).encode() + b"\n"


# -- the packed file ------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def packed_source(pack: Pack) -> AsyncIterator[str]:
    """The packed file, written to a temporary from the very members pre-flight read
    (each checked unchanged, see ``open_as_checked``) and checked against the plan's
    sha256; removed afterwards."""
    handle, temp = tempfile.mkstemp(prefix="gembatch-pack-", suffix=".jsonl")
    try:
        async with contextlib.AsyncExitStack() as stack:
            sources = [
                await stack.enter_async_context(open_as_checked(m.item)) for m in pack.members
            ]
            await anyio.to_thread.run_sync(_write_pack, pack, sources, handle)
        yield temp
    finally:
        os.close(handle)
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _write_pack(pack: Pack, sources: list[str], target: int) -> None:
    hasher = hashlib.sha256()
    for member, source in zip(pack.members, sources, strict=True):
        for obj in _requests(source):
            if not isinstance(obj.get("key"), str):
                raise InputChangedError(
                    f"{display_path(member.item.path)}: changed since pre-flight; not submitted"
                )
            data = _packed_line(obj, member.prefix)
            hasher.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(target, view) :]
    if hasher.hexdigest() != pack.sha256:
        raise InputChangedError(f"{pack.label}: an input changed since pre-flight; not submitted")


# -- the journal lines ----------------------------------------------------------------------
def member_lines(pack: Pack, common: JobLine) -> list[JobLine]:
    """One line per member: its own input, with the job's fields and the whole pack."""
    carries = pack.carries()
    return [
        {
            **common,
            "input_file": m.item.path,
            "input_identity": m.item.identity,
            "count": m.item.count,
            "sha256": m.item.sha256,
            "size_bytes": m.item.size_bytes,
            "carries": carries,
            "pack": {
                "member": m.number,
                "members": len(pack.members),
                "key_prefix": m.prefix,
                "sha256": pack.sha256,
                "size_bytes": pack.size_bytes,
            },
        }
        for m in pack.members
    ]


def has_results(line: JobLine) -> bool:
    """Whether a download recorded this line's input's results from its job."""
    results = line.get("results")
    return isinstance(results, dict) and results.get("batch_name") == batch_name_of(line)


# -- the run --------------------------------------------------------------------------------
class PackRun(SubmitRun):
    """A submit run that packs its inputs first; events and counts stay per input."""

    def __init__(
        self,
        api: Backend,
        journal: Journal,
        settings: SubmitSettings,
        emit: EventHandler,
        stop: anyio.Event,
        admission: Admission | None = None,
        *,
        limits: JobLimits,
    ) -> None:
        #: What one job may hold on this run's backend (its Target's rule).
        self._job_limits = limits
        #: The packs of this run by every label an event about one may carry: its
        #: own, and its first member's (an unrecorded job's failure names that one).
        self._packs: dict[str, Pack] = {}
        self._per_input = _PerInput(emit, self._packs)
        #: How recorded jobs ended, asked of the service (see _learn_end_states).
        self._states: dict[str, str] = {}
        #: Their outputs, learned with their states.
        self._outputs: dict[str, str | None] = {}
        super().__init__(api, journal, settings, self._per_input, stop, admission)

    async def run(self, items: list[InputFile]) -> Tally:
        units = await self._plan(items)
        self._per_input.total = len(items)
        tally = await super().run(units)
        done = tally.submitted + tally.skipped + tally.failed + tally.deferred
        tally.not_started = len(items) - done
        return tally

    async def _plan(self, items: list[InputFile]) -> list[InputFile]:
        """The run's units: packs of the inputs to submit, and every other input alone.

        Packs are planned over every packable input of the command, recorded or not,
        and kept when all their members are to be submitted: so the packs a command
        makes do not depend on which of them an interrupted run recorded, and the
        same command after a kill makes the very packs it may have created (and
        adopts them). Inputs left over (the command's inputs changed) are packed anew.
        """
        view = self.journal.refresh()
        await self._learn_end_states(items, view)
        wanted = {item.key for item in items if self._may_pack(item, view)}
        limits = self._limits()
        planned = await anyio.to_thread.run_sync(plan_packs, items, limits)
        packs = [u for u in planned if isinstance(u, Pack)]
        kept = [p for p in packs if all(m.item.key in wanted for m in p.members)]
        leftovers = [
            m.item for p in packs if p not in kept for m in p.members if m.item.key in wanted
        ]
        if len(leftovers) > 1:
            again = await anyio.to_thread.run_sync(plan_packs, leftovers, limits)
            kept += [u for u in again if isinstance(u, Pack)]
        return self._units(items, kept)

    def _units(self, items: list[InputFile], packs: list[Pack]) -> list[InputFile]:
        """Each pack in the place of its first member; every input in no pack alone."""
        by_first = {p.members[0].item.key: p for p in packs}
        packed = {m.item.key for p in packs for m in p.members}
        for pack in packs:
            self._packs[pack.label] = self._packs[pack.members[0].item.label] = pack
        return [
            by_first.get(item.key, item)
            for item in items
            if item.key in by_first or item.key not in packed
        ]

    async def _learn_end_states(self, items: list[InputFile], view: JournalView) -> None:
        """With --retry-failed, how each recorded job of these inputs ended, when the
        journal does not know yet (one request per job): its failed packs are packed
        again, for the inputs without results."""
        if not self.settings.retry_failed or self.settings.force:
            return
        names = {
            batch_name_of(line)
            for item in items
            if (line := view.recorded(item.key, item.identity, None)) is not None
            and batch_state_of(line) not in END_STATES
        }
        for name in sorted(names):
            try:
                batch = await self._with_retries("status", name, self._getter(name))
            except NotFoundApiError:
                self._states[name] = "JOB_STATE_FAILED"  # gone: nothing will run for it
                continue
            except ApiError:
                continue  # the input goes alone, where the same question is asked again
            self._states[name] = batch.state if batch.state is not None else ""
            self._outputs[name] = batch.output

    def _getter(self, name: str) -> Callable[[], Awaitable[Job]]:
        return lambda: self.api.get_batch(name)

    def _limits(self) -> JobLimits:
        """What one job may hold on this backend; with a token quota, no pack larger
        than the quota (a member that fits alone never fails for its pack's size)."""
        limits = self._job_limits
        quota = self.settings.enqueued_token_quota
        if quota is not None:
            limits = replace(limits, max_bytes=min(limits.max_bytes, quota * _BYTES_PER_TOKEN))
        return limits

    def _may_pack(self, item: InputFile, view: JournalView) -> bool:
        """Unrecorded inputs (all, with --force), and with --retry-failed recorded ones
        whose job ended badly, left no output and that have no results."""
        latest = view.recorded(item.key, item.identity, None)
        if latest is None or self.settings.force:
            return True
        state = self._states.get(batch_name_of(latest), batch_state_of(latest))
        return (
            self.settings.retry_failed
            and state in RETRYABLE_END_STATES
            and not has_results(latest)
            and not self._left_output(latest)
        )

    def _left_output(self, latest: JobLine) -> bool:
        """Whether the line's job left an output: Vertex keeps the rows a failed,
        cancelled or expired job completed (docs/fidelity.md), which rounds resume from
        without sending them again; a whole pack again would pay for them twice."""
        recorded = latest.get("batch")
        known = output_of(recorded) if isinstance(recorded, dict) else None
        return bool(known or self._outputs.get(batch_name_of(latest)))

    async def _should_resubmit(self, latest: JobLine) -> bool:
        # A member of a pack that ended badly but whose results are in is answered:
        # never sent again (its siblings without results are).
        if "pack" in latest and has_results(latest) and not self.settings.force:
            return False
        return await super()._should_resubmit(latest)

    async def _submit_file(self, item: InputFile, send: MemoryObjectSendStream[Completion]) -> None:
        if not isinstance(item, Pack):
            await super()._submit_file(item, send)
            return
        async with send, contextlib.AsyncExitStack() as claims:
            for identity in sorted({m.item.identity for m in item.members}):
                await claims.enter_async_context(self.journal.claim(identity))
            completion = await self._decide_and_submit_pack(item, send)
            if completion is not None:
                await deliver(send, completion)

    async def _decide_and_submit_pack(
        self, pack: Pack, send: MemoryObjectSendStream[Completion]
    ) -> Completion | None:
        view = self.journal.refresh()
        async with self.limiter:
            if self.stop.is_set() or self.halted:
                return None
            taken = [m for m in pack.members if not self._may_pack(m.item, view)]
            if taken:
                reason = (
                    f"{display_path(taken[0].item.path)} was submitted by another run meanwhile; "
                    "nothing was sent: run the command again"
                )
                return failed(pack, reason, None)
            generation = max(view.history.get(m.item.key, 0) for m in pack.members)
            return await self._submit_when_admitted(self._submission(pack, generation), send)

    def _source(self, item: InputFile) -> contextlib.AbstractAsyncContextManager[str]:
        return packed_source(item) if isinstance(item, Pack) else super()._source(item)

    def _submitted(self, sub: Submission, batch: Job, adopted: bool) -> Completion:
        completion = super()._submitted(sub, batch, adopted)
        pack = sub.item
        if not isinstance(pack, Pack) or completion.line is None:
            return completion
        first, *rest = member_lines(pack, completion.line)
        return replace(completion, line=first, more_lines=rest)

    def _count(self, event: Event) -> None:
        pack = self._packs.get(getattr(event, "path", ""))
        for _ in pack.members if pack is not None else (None,):
            super()._count(event)


class _PerInput:
    """Events about a pack become one event per input in it, numbered over the run's
    inputs (``[n/total]`` counts inputs, as without packing)."""

    def __init__(self, emit: EventHandler, packs: dict[str, Pack]) -> None:
        self.emit = emit
        self.packs = packs
        self.total = 0
        self.done = 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, _NUMBERED):
            self.emit(event)
            return
        pack = self.packs.get(event.path)
        labels = [m.item.label for m in pack.members] if pack is not None else [event.path]
        for label in labels:
            self.done += 1
            self.emit(_renumbered(event, label, self.done, self.total))


_Numbered = FileSubmitted | FileSkipped | FileFailed | FileDeferred
_NUMBERED = (FileSubmitted, FileSkipped, FileFailed, FileDeferred)


def _renumbered(event: _Numbered, path: str, n: int, total: int) -> _Numbered:
    return replace(event, path=path, n=n, total=total)


def submit_run_for(
    target: Target,
    api: Backend,
    journal: Journal,
    settings: SubmitSettings,
    emit: EventHandler,
    stop: anyio.Event,
    admission: Admission | None = None,
) -> SubmitRun:
    """The submit run ``settings`` ask for: packing (within ``target``'s job limits) or not."""
    if not settings.pack:
        return SubmitRun(api, journal, settings, emit, stop, admission)
    limits = target.job_limits(settings.max_bytes_per_job, settings.max_requests_per_job)
    return PackRun(api, journal, settings, emit, stop, admission, limits=limits)
