"""The entry point: a succeeded job's output downloaded and turned into results on disk
(see ``_join`` for how, ``_staging`` for how they are put in place)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.from_thread
import anyio.to_thread

from .._backends import JobsApi
from .._errors import ApiError, NotFoundApiError, OutputError
from .._retry import call_with_retries, describe
from .._settings import RetrySettings
from ._join import Tally, build_results
from ._records import ResultFile
from ._staging import Staging
from ._targets import ResultTargets
from ._unpack import member_output

#: How much of the input is hashed at a time (``changed_since``).
_HASH_CHUNK = 1 << 20


class SucceededJob(Protocol):
    """What fetching results needs of a job (``JobStatus`` has it)."""

    @property
    def path(self) -> str: ...

    @property
    def batch_name(self) -> str: ...

    @property
    def output_file(self) -> str | None: ...


async def fetch_results(
    api: JobsApi,
    job: SucceededJob | Sequence[SucceededJob],
    targets: ResultTargets,
    *,
    retry: RetrySettings | None = None,
    keep_raw: bool = False,
    limiter: anyio.CapacityLimiter | None = None,
    submitted: Sequence[tuple[int, str]] | None = None,
    superseding: bool = False,
    key_prefix: str | None = None,
) -> ResultFile:
    """Download a succeeded job's output and write its results (see the module doc).

    ``key_prefix``: the job is a pack of several inputs (``_submit/_pack``) and this
    input's requests were sent with keys so prefixed: only their answers are its own. A
    job of ``job`` with a ``key_prefix`` of its own (a pack that a round completes) is
    cut by that one.

    ``job`` may be the jobs of every part of a split input, in part order: their
    outputs are merged into one results file in the input's order. With
    ``superseding``, they are the jobs of one input's rounds, newest first (see
    :func:`build_results`); an output that is not there (a job that ended before it
    answered anything) is left out.

    ``submitted`` is (size, sha256) of what each job was made from, as the journal
    records it. When the input no longer holds exactly that, its lines are not what
    was answered: no results are matched to them; the answers (to the requests as
    submitted) are kept as the raw output and the file is an error (see
    :func:`_changed_input`).

    Never raises for a failure of this one file (API, disk, malformed output): the
    returned :class:`ResultFile` carries it in ``error``. Cancellation removes every
    temporary and re-raises. ``limiter`` bounds how many files are built at once
    (each holds a few MiB).
    """
    parts = list(job) if isinstance(job, Sequence) else [job]
    first = parts[0]
    staging = Staging(targets)
    done = ResultFile(first.path, first.batch_name, str(targets.results))
    outputs = [part.output_file for part in parts]
    if not all(outputs):
        return _with(done, error="the job has no output file")
    output_file = ", ".join(name for name in outputs if name)
    raw: Path | None = None
    raws: list[Path] = []
    try:
        await anyio.to_thread.run_sync(staging.prepare)
        names: list[str] = []
        for part, name in zip(parts, outputs, strict=True):
            assert name is not None
            prefix = getattr(part, "key_prefix", None) or key_prefix  # a pack's, in a chain
            raw = await anyio.to_thread.run_sync(staging.new, "raw")
            try:
                await _download(api, retry, name, raw)
            except NotFoundApiError:
                if not superseding:
                    raise
                continue
            raws.append(raw)
            names.append(name)
            if prefix is not None:
                raw = await anyio.to_thread.run_sync(_share_of, staging, raw, prefix)
                raws[-1] = raw
        tally, results, failed = await anyio.to_thread.run_sync(
            _build_checked,
            targets.input_path,
            raws,
            names,
            staging,
            superseding,
            limiter=limiter,
        )
        change = None
        if submitted is not None:
            change = await anyio.to_thread.run_sync(changed_since, targets.input_path, submitted)
        if (keep_raw or change) and len(raws) > 1:  # a split input: the parts' outputs in order
            raw = await anyio.to_thread.run_sync(_joined, staging, raws)
        if change is not None:
            assert raw is not None
            kept = await anyio.to_thread.run_sync(_keep_raw, staging, raw)
            return _with(done, error=_changed_input(change, tally, kept), raw_path=kept)
        await anyio.to_thread.run_sync(staging.finish, results, failed, raw if keep_raw else None)
    except ApiError as exc:
        return _with(done, error=f"download of {output_file} failed: {describe(exc)}")
    except OutputError as exc:
        kept = await anyio.to_thread.run_sync(_keep_raw, staging, raw) if keep_raw and raw else None
        return _with(done, error=_malformed(exc, kept), problems=_problems(exc), raw_path=kept)
    except OSError as exc:
        return _with(done, error=_describe_os_error(exc))
    finally:
        staging.discard()
    return _result_file(done, tally, targets, failed is not None, keep_raw)


def _share_of(staging: Staging, packed: Path, prefix: str) -> Path:
    """This input's share of a packed job's output, in a temporary of its own."""
    share = staging.new("raw")
    member_output(packed, share, prefix)
    return share


def changed_since(input_path: str, submitted: Sequence[tuple[int, str]]) -> str | None:
    """How the input differs from what was submitted (each part's size and sha256, in
    order: the parts are consecutive byte ranges of it), or None when it is the same."""
    expected = sum(size for size, _ in submitted)
    with open(input_path, "rb") as handle:
        now = os.fstat(handle.fileno()).st_size
        if now != expected:
            return f"{now} bytes now, {expected} submitted"
        for size, sha256 in submitted:
            hasher = hashlib.sha256()
            left = size
            while left and (chunk := handle.read(min(left, _HASH_CHUNK))):
                hasher.update(chunk)
                left -= len(chunk)
            if left or hasher.hexdigest() != sha256:
                return "sha256 differs"
    return None


def _changed_input(change: str, tally: Tally, kept: str | None) -> str:
    """An input edited after submission: what is known, and what is kept."""
    line = f"changed since it was submitted ({change}): no results are matched to its new lines"
    if not tally.keyless:
        line += (
            f" ({tally.unknown} answered keys are no longer in it,"
            f" {tally.missing + tally.unmatched} of its requests have no answer)"
        )
    where = f"kept in {kept}" if kept else "not kept (the results folder cannot be written)"
    return (
        f"{line}; the answers to the requests as submitted are {where}; "
        "restore the file and download again, or submit it again"
    )


def _joined(staging: Staging, raws: list[Path]) -> Path:
    joined = staging.new("raw")
    with joined.open("wb") as target:
        for raw in raws:
            with raw.open("rb") as source:
                shutil.copyfileobj(source, target, 1 << 20)
    return joined


async def _download(api: JobsApi, retry: RetrySettings | None, name: str, target: Path) -> None:
    await call_with_retries(retry or RetrySettings(), lambda: api.download_file(name, str(target)))


def _build_checked(
    input_path: str, raws: list[Path], names: list[str], staging: Staging, superseding: bool
) -> tuple[Tally, Path, Path | None]:
    return build_results(
        input_path,
        raws,
        staging,
        names=names,
        check=anyio.from_thread.check_cancelled,
        superseding=superseding,
    )


def _malformed(exc: OutputError, kept: str | None) -> str:
    total = len(exc.problems) + exc.more
    first = exc.problems[0]
    noun = "line" if total == 1 else "lines"
    hint = f"; it is kept in {kept}" if kept else "; download again with --keep-raw to inspect it"
    # The first line's number and reason here too: run shows this one line (no list).
    shown = f"{first.path}:{first.line}: {first.message}" + ("" if total == 1 else ", ...")
    return f"{total} malformed {noun} in {first.path} ({shown}), no results written{hint}"


def _problems(exc: OutputError) -> tuple[str, ...]:
    more = (f"... and {exc.more} more",) if exc.more else ()
    return tuple(str(p) for p in exc.problems) + more


def _keep_raw(staging: Staging, raw: Path) -> str | None:
    try:
        staging.commit(raw, staging.targets.raw)
    except OSError:
        return None
    return str(staging.targets.raw)


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _with(result: ResultFile, **changes: Any) -> ResultFile:
    return replace(result, **changes)


def _result_file(
    done: ResultFile, tally: Tally, targets: ResultTargets, any_failed: bool, keep_raw: bool
) -> ResultFile:
    return _with(
        done,
        responses=tally.responses,
        errors=tally.errors,
        missing_keys=tuple(tally.missing_keys),
        unexpected_keys=tally.unknown,
        ambiguous_keys=tally.ambiguous,
        missing_count=tally.missing,
        requests=tally.requests,
        failed_path=str(targets.failed) if any_failed else None,
        failed_by_code=dict(sorted(tally.failed_by_code.items())),
        unknown_keys=tuple(tally.unknown_keys),
        unmatched=tally.unmatched,
        duplicates=tally.duplicates,
        keyless=tally.keyless,
        raw_path=str(targets.raw) if keep_raw else None,
        usage=tally.usage.usage(),
    )
