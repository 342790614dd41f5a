"""Server situations a fault spec cannot make, set up by tests: ``POST /_emulator/ACTION``.

- ``end-batch`` ``{"name": "batches/ID", "state": "BATCH_STATE_FAILED"}`` (or
  ``BATCH_STATE_EXPIRED``): the batch ends now in that state, as the service
  fails a job, or expires one left pending or running for 48 h.
- ``expire-file`` ``{"name": "files/ID", "seconds": S}``: the file now expires
  in S seconds (uploads live 48 h).
- ``refuse-delete`` ``{"name": "files/ID"}``: every delete of that file answers
  400 FAILED_PRECONDITION.
- ``stall`` ``{"endpoint": "upload", "seconds": S}``: requests to that endpoint
  that arrive from now on wait S seconds before anything else (0 ends it), so a
  test can hold requests in flight.
- ``unlist`` ``{"name": "batches/ID"}``: ``batches.list`` leaves that batch out
  (GET still finds it), as an eventually consistent listing that has not caught
  up with a new job, or a job on a page a client did not read, would.
- ``advance-clock`` ``{"seconds": S}``: the emulator's clock (see _clock) moves S
  seconds forward, so every job and upload is S seconds older at once: a test makes a
  job finish or expire without waiting for it. Answers the clock's new offset.

``POST /_emulator/reset`` forgets refuse-delete, stall and unlist (the clock stays
where it is: time does not go back).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gembatch_async.emulator._errors import ApiError
from gembatch_async.emulator._faults import ENDPOINTS
from gembatch_async.emulator._store import Store

SCENARIO_ACTIONS = (
    "end-batch",
    "expire-file",
    "refuse-delete",
    "stall",
    "unlist",
    "advance-clock",
)
END_STATES = ("BATCH_STATE_FAILED", "BATCH_STATE_EXPIRED")


@dataclasses.dataclass
class Scenarios:
    """What the scenario actions changed that the store does not keep."""

    refused_deletes: set[str] = dataclasses.field(default_factory=set)
    stalls: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Batch names the listing leaves out.
    unlisted: set[str] = dataclasses.field(default_factory=set)

    def apply(
        self, action: str, body: dict[str, Any], store: Store, file_lifetime: float
    ) -> dict[str, Any]:
        """Carry out one scenario action; ApiError(400) for a malformed body."""
        if action == "end-batch":
            return _end_batch(store, _text(body, "name"), _text(body, "state"))
        if action == "expire-file":
            return _expire_file(store, _text(body, "name"), _number(body, "seconds"), file_lifetime)
        if action == "refuse-delete":
            file_id = _text(body, "name").removeprefix("files/")
            self.refused_deletes.add(file_id)
            return {"refused": f"files/{file_id}"}
        if action == "stall":
            return self._stall(_text(body, "endpoint"), _number(body, "seconds"))
        if action == "unlist":
            name = store.get_batch(_text(body, "name").removeprefix("batches/")).name
            self.unlisted.add(name)
            return {"unlisted": name}
        if action == "advance-clock":
            return _advance_clock(store, _number(body, "seconds"))
        raise ApiError(404, f"Unknown scenario {action!r}.")

    def clear(self) -> None:
        """Forget every situation set up (``POST /_emulator/reset``)."""
        self.refused_deletes.clear()
        self.stalls.clear()
        self.unlisted.clear()

    def _stall(self, endpoint: str, seconds: float) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise ApiError(
                400, f"Unknown endpoint {endpoint!r}; use one of {', '.join(ENDPOINTS)}."
            )
        self.stalls[endpoint] = max(0.0, seconds)
        return {"endpoint": endpoint, "seconds": self.stalls[endpoint]}

    def stall_seconds(self, endpoint: str) -> float:
        return self.stalls.get(endpoint, 0.0)

    def check_delete(self, file_id: str) -> None:
        if file_id in self.refused_deletes:
            raise ApiError(
                400, f"File files/{file_id} cannot be deleted at this time.", "FAILED_PRECONDITION"
            )


def _end_batch(store: Store, name: str, state: str) -> dict[str, Any]:
    if state not in END_STATES:
        raise ApiError(400, f"state must be one of {', '.join(END_STATES)}")
    batch = store.get_batch(name.removeprefix("batches/"))
    batch.end_state = state
    batch.end_time = store.clock.now()
    store.save()
    return {"name": batch.name, "state": state}


def _expire_file(store: Store, name: str, seconds: float, lifetime: float) -> dict[str, Any]:
    record = store.get_file(name.removeprefix("files/"))
    record.create_time = store.clock.now() + seconds - lifetime
    store.save()
    return {"name": record.name, "expiresInSeconds": seconds}


def _advance_clock(store: Store, seconds: float) -> dict[str, Any]:
    try:
        offset = store.clock.advance(seconds)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return {"advancedSeconds": seconds, "offsetSeconds": offset}


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Expected a string {key!r}.")
    return value


def _number(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"Expected a number {key!r}.")
    return float(value)
