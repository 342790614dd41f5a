"""Files, upload sessions and batch jobs, with optional on-disk persistence.

All methods run on the server's event loop thread, except the `*_blocking` helpers that
stream file contents; those only touch paths handed to them and are run in a worker thread.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pathlib
import random
import secrets
import shutil
import string
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from gembatch_async._schema import GENERATE
from gembatch_async.emulator._clock import Clock
from gembatch_async.emulator._errors import ApiError, generic_quota_error
from gembatch_async.emulator._numeric_keys import numerified
from gembatch_async.emulator._request_errors import RequestErrors, draw_of
from gembatch_async.emulator._responses import (
    line_error,
    line_result,
    parse_line,
    request_response,
)
from gembatch_async.emulator._validation import MAX_LINES_NAMED, line_problem, uses_field

_ID_ALPHABET = string.ascii_lowercase + string.digits
_STATE_FILE = "state.json"
# Lines are shuffled within windows of this many lines: the real service does not keep
# input order, and a bounded window keeps memory flat for huge inputs.
_SHUFFLE_WINDOW = 64
#: Uploaded files are deleted 48 h after their creation (Google docs, files guide:
#: "Files are stored for 48 hours"; python-genai#1172 quotes it).
FILE_LIFETIME_SECONDS = 48 * 3600


def new_id(length: int) -> str:
    """A random lowercase alphanumeric id, like the real service generates."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def sha256_wire(hex_digest: str) -> str:
    """sha256Hash as the real service sends it: base64 of the lowercase hex digest text."""
    return base64.b64encode(hex_digest.encode("ascii")).decode("ascii")


@dataclasses.dataclass
class FileRecord:
    """A stored file (uploaded, or generated as batch output)."""

    file_id: str
    display_name: str | None
    mime_type: str
    size_bytes: int
    sha256_hash: str
    create_time: float
    source: str  # UPLOADED | GENERATED

    @property
    def name(self) -> str:
        """The resource name, `files/<id>`."""
        return f"files/{self.file_id}"


UNFINISHED = ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")


@dataclasses.dataclass
class BatchRecord:
    """A batch job; its state is derived from the clock, not stored."""

    batch_id: str
    model: str  # "models/<id>"
    display_name: str | None
    input_file: str | None  # "files/<id>" for file-sourced jobs
    inline_requests: list[Any] | None
    create_time: float
    request_count: int
    malformed_count: int
    cancel_time: float | None = None
    output_file: str | None = None  # "files/batch-..." once generated
    kind: str = GENERATE  # GENERATE (batchGenerateContent) or EMBED (asyncBatchEmbedContent)
    #: Enqueued tokens, as the emulator counts them: one per 4 bytes of request JSON.
    tokens: int = 0
    #: Set by the end-batch scenario: the job FAILED or EXPIRED at end_time.
    end_state: str | None = None
    end_time: float | None = None
    #: The input file's sha256Hash: with the jobs made earlier from the same bytes, it
    #: picks which requests --request-errors fails (see request_errors_draw).
    input_sha256: str = ""

    @property
    def name(self) -> str:
        """The resource name, `batches/<id>`."""
        return f"batches/{self.batch_id}"


@dataclasses.dataclass
class UploadSession:
    """A resumable upload in progress; the upload id in its URL is its credential."""

    upload_id: str
    file_id: str
    display_name: str | None
    mime_type: str
    total: int
    part_path: pathlib.Path
    received: int = 0
    hasher: Any = dataclasses.field(default_factory=hashlib.sha256)


def _atomic_write_json(path: pathlib.Path, data: Any) -> None:
    """Write JSON so a crash leaves either the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Store:
    """All emulator state. Metadata lives in dicts (and state.json); contents in blob files."""

    def __init__(
        self,
        state_dir: pathlib.Path | None,
        processing_seconds: float,
        expire_after_seconds: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        #: Every record's times and every state derived from them follow this clock.
        self.clock = Clock() if clock is None else clock
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            # Memory mode still streams blobs to disk so big uploads never sit in RAM.
            self._tempdir = tempfile.TemporaryDirectory(prefix="gembatch-emulator-")
            self.root = pathlib.Path(self._tempdir.name)
            self.persistent = False
        else:
            self.root = pathlib.Path(state_dir)
            self.persistent = True
        self.processing_seconds = processing_seconds
        #: A job still unfinished this long after its creation ends EXPIRED.
        self.expire_after_seconds = expire_after_seconds
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.uploads: dict[str, UploadSession] = {}
        for sub in ("blobs", "uploads", "inputs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._load()

    @property
    def expires_first(self) -> bool:
        """Jobs expire before they would have finished."""
        limit = self.expire_after_seconds
        return limit is not None and limit < self.processing_seconds

    # ----- paths -------------------------------------------------------------------------

    def blob_path(self, file_id: str) -> pathlib.Path:
        """Where a stored file's contents live."""
        return self.root / "blobs" / file_id

    def request_errors_draw(self, batch: BatchRecord) -> str:
        """What ``--request-errors`` draws a job's failures by: its input's bytes and how
        many jobs were made from the same bytes before it. Deterministic for a seed (the
        same inputs fail the same requests in a fresh emulator, whatever the random batch
        ids), yet a job sent again with the same bytes draws anew, as on the service."""
        if not batch.input_sha256:
            return batch.batch_id  # inline requests: one draw per job
        earlier = sum(
            1
            for other in self.batches.values()
            if other.input_sha256 == batch.input_sha256
            and (other.create_time, other.batch_id) < (batch.create_time, batch.batch_id)
        )
        return draw_of(batch.input_sha256, earlier)

    def batch_input_path(self, batch_id: str) -> pathlib.Path:
        """A batch's private snapshot of its input file (a hard link when possible)."""
        return self.root / "inputs" / batch_id

    # ----- persistence -------------------------------------------------------------------

    def _load(self) -> None:
        path = self.root / _STATE_FILE
        if not self.persistent or not path.exists():
            return
        data = json.loads(path.read_text(encoding="utf-8"))
        for raw in data.get("files", []):
            record = FileRecord(**raw)
            self.files[record.file_id] = record
        for raw in data.get("batches", []):
            batch = BatchRecord(**raw)
            self.batches[batch.batch_id] = batch
        # Upload sessions are not persisted (the SDK cannot resume them anyway).
        shutil.rmtree(self.root / "uploads", ignore_errors=True)
        (self.root / "uploads").mkdir(exist_ok=True)

    def save(self) -> None:
        """Persist metadata after every change (no-op in memory mode)."""
        if not self.persistent:
            return
        data = {
            "files": [dataclasses.asdict(f) for f in self.files.values()],
            "batches": [dataclasses.asdict(b) for b in self.batches.values()],
        }
        _atomic_write_json(self.root / _STATE_FILE, data)

    def close(self) -> None:
        """Remove the temporary directory of memory mode."""
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def clear(self) -> None:
        """Forget every file, batch and upload (POST /_emulator/reset)."""
        self.files.clear()
        self.batches.clear()
        self.uploads.clear()
        for sub in ("blobs", "uploads", "inputs"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.save()

    # ----- files -------------------------------------------------------------------------

    def expire_files(self, now: float | None = None) -> None:
        """Delete the uploads past their 48 h, as the service does. Output files are
        kept: how long the service keeps them is not documented (docs/fidelity.md)."""
        limit = (self.clock.now() if now is None else now) - FILE_LIFETIME_SECONDS
        expired = [
            f.file_id
            for f in self.files.values()
            if f.source == "UPLOADED" and f.create_time <= limit
        ]
        for file_id in expired:
            del self.files[file_id]
            self.blob_path(file_id).unlink(missing_ok=True)
        if expired:
            self.save()

    def uploaded_bytes(self) -> int:
        """Bytes counted against the storage quota: stored uploads plus uploads in progress."""
        stored = sum(f.size_bytes for f in self.files.values() if f.source == "UPLOADED")
        return stored + sum(s.total for s in self.uploads.values())

    def get_file(self, file_id: str) -> FileRecord:
        """The file, or the real service's 403 for a missing one."""
        record = self.files.get(file_id)
        if record is None:
            raise ApiError(
                403,
                f"You do not have permission to access the File {file_id} or it may not exist.",
            )
        return record

    def start_upload(
        self, file_id: str, display_name: str | None, mime_type: str, total: int
    ) -> UploadSession:
        """Open a resumable upload session with an empty part file."""
        upload_id = new_id(32)
        session = UploadSession(
            upload_id=upload_id,
            file_id=file_id,
            display_name=display_name,
            mime_type=mime_type,
            total=total,
            part_path=self.root / "uploads" / f"{upload_id}.part",
        )
        session.part_path.touch()
        self.uploads[upload_id] = session
        return session

    def finish_upload(self, session: UploadSession) -> FileRecord:
        """Turn a complete upload session into a stored file."""
        self.uploads.pop(session.upload_id, None)
        if session.file_id in self.files:
            session.part_path.unlink(missing_ok=True)
            raise ApiError(409, f"File files/{session.file_id} already exists.")
        os.replace(session.part_path, self.blob_path(session.file_id))
        record = FileRecord(
            file_id=session.file_id,
            display_name=session.display_name,
            mime_type=session.mime_type,
            size_bytes=session.received,
            sha256_hash=sha256_wire(session.hasher.hexdigest()),
            create_time=self.clock.now(),
            source="UPLOADED",
        )
        self.files[record.file_id] = record
        self.save()
        return record

    def abandon_upload(self, session: UploadSession) -> None:
        """Drop a failed upload session and its partial data."""
        self.uploads.pop(session.upload_id, None)
        session.part_path.unlink(missing_ok=True)

    def delete_file(self, file_id: str) -> None:
        """Delete a file and its contents (403 if missing)."""
        self.get_file(file_id)
        del self.files[file_id]
        self.blob_path(file_id).unlink(missing_ok=True)
        self.save()

    # ----- batches -----------------------------------------------------------------------

    def batch_state(self, batch: BatchRecord, now: float | None = None) -> str:
        """The wire state, computed from the create time so it survives restarts."""
        if batch.end_state is not None:
            return batch.end_state
        if batch.cancel_time is not None:
            return "BATCH_STATE_CANCELLED"
        elapsed = (self.clock.now() if now is None else now) - batch.create_time
        if self.expires_first and elapsed >= (self.expire_after_seconds or 0):
            return "BATCH_STATE_EXPIRED"
        if elapsed >= self.processing_seconds:
            return "BATCH_STATE_SUCCEEDED"
        if elapsed >= self.processing_seconds / 3:
            return "BATCH_STATE_RUNNING"
        return "BATCH_STATE_PENDING"

    def unfinished_batches(self) -> int:
        """Jobs counted against the concurrent-job limit (PENDING or RUNNING)."""
        return sum(1 for b in self.batches.values() if self.batch_state(b) in UNFINISHED)

    def get_batch(self, batch_id: str) -> BatchRecord:
        """The batch, or 404 NOT_FOUND."""
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"Requested entity was not found. (batches/{batch_id})")
        return batch

    def admit_batch(
        self, batch: BatchRecord, max_unfinished: int, token_quota: int | None = None
    ) -> None:
        """Register a new batch unless the unfinished-jobs limit or the model's
        enqueued-token quota is reached.

        Check and insert happen in one synchronous step on the event loop, so
        concurrent creates can never both pass the check (nothing awaits between).
        """
        refusal = self._refusal(batch, max_unfinished, token_quota)
        if refusal is not None:
            self.batch_input_path(batch.batch_id).unlink(missing_ok=True)
            raise refusal
        self.batches[batch.batch_id] = batch
        self.save()

    def _refusal(
        self, batch: BatchRecord, max_unfinished: int, token_quota: int | None
    ) -> ApiError | None:
        # Both refusals answer the generic body, which names neither limit
        # (langchain4j/langchain4j#3942; see _errors.generic_quota_error).
        unfinished = [b for b in self.batches.values() if self.batch_state(b) in UNFINISHED]
        if len(unfinished) >= max_unfinished:
            return generic_quota_error()
        if token_quota is None:
            return None
        enqueued = sum(b.tokens for b in unfinished if b.model == batch.model)
        if enqueued + batch.tokens > token_quota:
            return generic_quota_error()
        return None

    def delete_batch(self, batch_id: str) -> None:
        """Delete a batch and its output file: output files answer 404 once their batch
        is deleted (go-genai#436, as issue 16 quotes it)."""
        batch = self.get_batch(batch_id)
        del self.batches[batch_id]
        self.batch_input_path(batch_id).unlink(missing_ok=True)
        output = self.output_file_id(batch)
        if self.files.pop(output, None) is not None:
            self.blob_path(output).unlink(missing_ok=True)
        self.save()

    def output_file_id(self, batch: BatchRecord) -> str:
        """Id of the output file of a file-sourced batch."""
        return f"batch-{batch.batch_id}"

    def register_output(self, batch: BatchRecord, size: int, hex_digest: str) -> FileRecord:
        """Record a generated output file and link it to its batch."""
        file_id = self.output_file_id(batch)
        record = FileRecord(
            file_id=file_id,
            display_name=file_id,
            mime_type="application/jsonl",
            size_bytes=size,
            sha256_hash=sha256_wire(hex_digest),
            create_time=batch.create_time + self.processing_seconds,
            source="GENERATED",
        )
        self.files[file_id] = record
        batch.output_file = record.name
        self.batch_input_path(batch.batch_id).unlink(missing_ok=True)
        self.save()
        return record


# ----- blocking helpers, run in a worker thread --------------------------------------------


def snapshot_input(source: pathlib.Path, target: pathlib.Path) -> None:
    """Give a batch its own copy of the input, so deleting the file later does not matter."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def count_requests_blocking(path: pathlib.Path, kind: str = GENERATE) -> tuple[int, int]:
    """(requests, requests that will fail) in a JSONL input, read line by line."""
    total = 0
    malformed = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            total += 1
            if line_error(raw, kind) is not None:
                malformed += 1
    return total, malformed


@dataclasses.dataclass
class InputScan:
    """What a create learns from reading its input file once."""

    requests: int = 0
    #: Requests the service cannot parse (answered with an error line when the
    #: emulator is told to be kinder than the service, see answer_invalid_lines).
    malformed: int = 0
    #: (line number, why) for the first lines the service would refuse.
    problems: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    #: A line uses a field the service is set to refuse (refused_fields).
    refused: bool = False


def scan_input_blocking(
    path: pathlib.Path, kind: str = GENERATE, refused_fields: frozenset[str] = frozenset()
) -> InputScan:
    """Count a JSONL input's requests and find the lines the service refuses, line by line."""
    scan = InputScan()
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            scan.requests += 1
            problem = line_problem(raw, kind)
            if problem is not None:
                scan.malformed += 1
                if len(scan.problems) < MAX_LINES_NAMED:
                    scan.problems.append((number, problem))
            elif refused_fields and not scan.refused:
                _, request, _ = parse_line(raw)
                scan.refused = uses_field(request, refused_fields)
    return scan


def _windows(fh: IO[bytes], rng: random.Random) -> Iterator[list[tuple[int, bytes]]]:
    """Non-empty input lines with their positions, in shuffled windows."""
    window: list[tuple[int, bytes]] = []
    position = 0
    for raw in fh:
        if not raw.strip():
            continue
        window.append((position, raw))
        position += 1
        if len(window) >= _SHUFFLE_WINDOW:
            rng.shuffle(window)
            yield window
            window = []
    if window:
        rng.shuffle(window)
        yield window


def generate_output_blocking(
    input_path: pathlib.Path,
    output_path: pathlib.Path,
    batch_id: str,
    model: str,
    kind: str = GENERATE,
    request_errors: RequestErrors | None = None,
    numeric_keys: bool = False,
    draw: str | None = None,
) -> tuple[int, str]:
    """Write the output JSONL for a batch; returns (size, sha256 hex). Streams both files."""
    rng = random.Random(batch_id)  # deterministic order per batch
    hasher = hashlib.sha256()
    size = 0
    tmp = output_path.with_name(output_path.name + ".tmp")
    with input_path.open("rb") as src, tmp.open("wb") as dst:
        for window in _windows(src, rng):
            for position, raw in window:
                result = line_result(raw, batch_id, model, position, kind)
                if request_errors is not None:
                    result = request_errors.apply(result, position, draw or batch_id)
                if numeric_keys:  # test only: see _numeric_keys
                    result = numerified(result)
                line = json.dumps(result).encode() + b"\n"
                dst.write(line)
                hasher.update(line)
                size += len(line)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, output_path)
    return size, hasher.hexdigest()


def inline_results(batch: BatchRecord) -> list[dict[str, Any]]:
    """Inline responses in input order: `{"response"|"error", "metadata"}` per request."""
    results: list[dict[str, Any]] = []
    model = batch.model.removeprefix("models/")
    for position, item in enumerate(batch.inline_requests or []):
        entry: dict[str, Any] = {}
        request = item.get("request") if isinstance(item, dict) else None
        if isinstance(request, dict):
            entry["response"] = request_response(
                request, batch.kind, batch.batch_id, model, position
            )
        else:
            # No "status" here: the SDK parses inline errors strictly (code, message).
            entry["error"] = {"code": 400, "message": "Request is missing or not an object."}
        metadata = item.get("metadata") if isinstance(item, dict) else None
        if isinstance(metadata, dict):
            # The SDK types metadata as dict[str, str]; anything else would break parsing.
            entry["metadata"] = {str(k): str(v) for k, v in metadata.items()}
        results.append(entry)
    return results
