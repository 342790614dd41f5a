"""Finding the batches earlier attempts created, with one shared listing per run.

After a lost or partial journal every file whose upload still exists asks "did an
earlier run create my batch?". Listing all of the project's batches for each file
costs N x (batches in the project) requests. Here one listing answers every file
waiting at the time, and a new listing starts only when an answer is missing from
every listing that began after the question was asked (single-flight), so 300
files recovering at once cost one listing, not 300.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from google.genai import types

from .._identity import token_of

ListBatches = Callable[[], Awaitable[list[types.BatchJob]]]


class BatchIndex:
    """Our batches by display-name token, from listings shared by every caller."""

    def __init__(self, list_batches: ListBatches) -> None:
        self._list_batches = list_batches
        self._by_token: dict[str, types.BatchJob] = {}
        self._started = 0  # listings started so far
        self._finished = 0  # the newest listing that has completed
        self._in_flight: anyio.Event | None = None
        #: Listings made (each may be several page requests).
        self.listings = 0

    async def find(self, token: str) -> types.BatchJob | None:
        """The newest batch whose display name carries ``token``, or None.

        None only after a listing that started after this call found nothing: a
        batch created just before the question is never missed for an old answer.
        """
        needed = self._started + 1
        while True:
            found = self._by_token.get(token)
            if found is not None or self._finished >= needed:
                return found
            if self._in_flight is None:
                await self._refresh()
            else:
                await self._in_flight.wait()

    async def _refresh(self) -> None:
        self._started += 1
        number = self._started
        done = self._in_flight = anyio.Event()
        try:
            batches = await self._list_batches()
            self.listings += 1
            self._by_token = _newest_by_token(batches)
            self._finished = max(self._finished, number)
        finally:
            self._in_flight = None
            done.set()


def _newest_by_token(batches: list[types.BatchJob]) -> dict[str, types.BatchJob]:
    found: dict[str, types.BatchJob] = {}
    oldest_first = sorted(batches, key=lambda b: b.create_time.timestamp() if b.create_time else 0)
    for batch in oldest_first:
        token = token_of(batch.display_name)
        if token is not None:
            found[token] = batch
    return found
