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

from .._backends import Job
from ._twins import by_token, keeper

ListBatches = Callable[[], Awaitable[list[Job]]]


class BatchIndex:
    """Our batches by display-name token, from listings shared by every caller."""

    def __init__(self, list_batches: ListBatches) -> None:
        self._list_batches = list_batches
        self._by_token: dict[str, list[Job]] = {}
        self._started = 0  # listings started so far
        self._finished = 0  # the newest listing that has completed
        self._in_flight: anyio.Event | None = None
        #: Listings made (each may be several page requests).
        self.listings = 0

    async def find(self, token: str) -> Job | None:
        """The batch to keep (``_twins.keeper``) of those whose display name carries
        ``token``, or None.

        None only after a listing that started after this call found nothing: a
        batch created just before the question is never missed for an old answer.
        """
        found = await self._all(token, fresh=False)
        return keeper(found) if found else None

    async def known(self, token: str) -> list[Job]:
        """Every batch carrying ``token`` in the newest listing (no new request)."""
        return list(self._by_token.get(token, []))

    async def find_all(self, token: str) -> list[Job]:
        """Every batch carrying ``token``, from a listing that started after this call."""
        return await self._all(token, fresh=True)

    async def _all(self, token: str, *, fresh: bool) -> list[Job]:
        needed = self._started + 1
        while True:
            found = self._by_token.get(token, [])
            if (found and not fresh) or self._finished >= needed:
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
            self._by_token = by_token(batches)
            self._finished = max(self._finished, number)
        finally:
            self._in_flight = None
            done.set()
