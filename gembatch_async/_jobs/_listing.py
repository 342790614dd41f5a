"""Learning the state of many jobs from the project's job listing, not one GET each.

A poll of N unfinished jobs used to cost N GETs. One page of the listing holds up
to 100 jobs (the page size we ask for; the service may send fewer, and we follow
``nextPageToken``), so the same poll costs about ceil(N / 100) requests when the
listing shows our jobs. Evidence that it does: a captured ``batches.list`` answer
carries, per job, the same Operation a GET returns, with ``state`` and
``batchStats`` (python-genai#1323, flachesis/gemini-rust#13); Vertex lists whole
BatchPredictionJob resources.

What the listing cannot be trusted for is asked with a GET, so the listing only
ever saves requests and never decides a job's fate:

- The listing is the project's (other tools' jobs too) and may be eventually
  consistent: a job missing from it is not gone, it is asked with a GET (only a
  GET's 404 says a job is gone). So is a job in a state we do not know.
- What a finished job looks like in a listing is not captured anywhere we know of:
  a job the listing shows succeeded without its output's name, or failed without
  its error, is asked with a GET (once: an ended job is never polled again).
- Its order is not documented (the captures list newest first): paging stops once
  every job asked for is found, or when another page could not save a request
  (more pages than jobs still missing). A listing that showed none of our jobs
  three polls in a row is not used again in this session (a backend whose listing
  we cannot read falls back to one GET per job; one fruitless poll may just be
  jobs created a moment ago that the listing has not caught up with).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .._backends import (
    END_STATES,
    RESULT_STATES,
    BatchDetail,
    BatchPage,
    JobsApi,
    backend_of_name,
)
from .._errors import ApiError

T = TypeVar("T")
Call = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]

#: Jobs per page we ask for. The SDK's ListBatchJobsConfig.page_size is a plain int; the
#: Files API documents 100 as its page maximum (PROTOCOL.md 2.4) and batches.list
#: answers page_size=100 (python-genai#1250). A service that caps lower just sends
#: more pages: each page's nextPageToken is followed.
PAGE_SIZE = 100
#: Below this many jobs a GET each costs no more than a page of the listing.
LISTING_PAYS_FROM = 2
#: Polls in a row whose listing showed none of our jobs before it is given up.
FRUITLESS_LISTINGS = 3
#: States a job is in while it is still going, on either backend (``types.JobState``).
UNFINISHED_STATES = frozenset(
    {
        "JOB_STATE_QUEUED",
        "JOB_STATE_PENDING",
        "JOB_STATE_RUNNING",
        "JOB_STATE_CANCELLING",
        "JOB_STATE_PAUSED",
        "JOB_STATE_UPDATING",
    }
)


@dataclass
class ListingStats:
    """Requests a session's polls made: listing pages, and GETs the listing left."""

    pages: int = 0
    gets: int = 0


class JobListing:
    """Reads jobs from the listing, shared by the polls of one ``run`` or ``status --watch``."""

    def __init__(self, api: JobsApi, call: Call[BatchPage], page_size: int = PAGE_SIZE) -> None:
        self._api = api
        self._call = call
        self._page_size = page_size
        #: Per backend, listings in a row that showed none of our jobs.
        self._fruitless: dict[str, int] = {}
        self.stats = ListingStats()

    async def find(self, names: Sequence[str]) -> dict[str, BatchDetail]:
        """What the listing says of each job in ``names`` that it can answer for.

        A job left out needs a GET. Never raises ApiError: a listing that fails
        answers for nothing, and every job is then asked with a GET."""
        by_backend: dict[str, list[str]] = {}
        for name in dict.fromkeys(names):
            by_backend.setdefault(backend_of_name(name), []).append(name)
        found: dict[str, BatchDetail] = {}
        for kind, wanted in by_backend.items():
            if self._fruitless.get(kind, 0) >= FRUITLESS_LISTINGS:
                continue
            if len(wanted) < LISTING_PAYS_FROM:
                continue
            answered = await self._list_until_found(wanted)
            self._fruitless[kind] = 0 if answered else self._fruitless.get(kind, 0) + 1
            found.update(answered)
        self.stats.gets += len(set(names) - set(found))
        return found

    async def _list_until_found(self, wanted: list[str]) -> dict[str, BatchDetail]:
        missing = set(wanted)
        found: dict[str, BatchDetail] = {}
        token: str | None = None
        pages = 0
        while True:
            try:
                page = await self._page(wanted[0], token)
            except ApiError:
                return found  # what the pages so far answered; GETs do the rest
            pages += 1
            for detail in page.details:
                name = detail.job.name or ""
                if name in missing and listing_answers(detail):
                    found[name] = detail
                    missing.discard(name)
            token = page.next_token
            if not missing or token is None or pages >= len(missing):
                return found

    async def _page(self, near: str, token: str | None) -> BatchPage:
        self.stats.pages += 1
        return await self._call(lambda: self._api.list_batch_page(near, self._page_size, token))


def listing_answers(detail: BatchDetail) -> bool:
    """Whether a listed job says all a poll needs, so no GET is needed for it."""
    state = detail.job.state if detail.job.state is not None else ""
    if state in UNFINISHED_STATES:
        return True
    if state in RESULT_STATES:  # its results are fetched from the output it names
        return detail.job.output is not None
    if state == "JOB_STATE_FAILED":  # the reason shown to the user is its error
        return detail.error is not None
    return state in END_STATES  # cancelled, expired; an unknown state is asked with a GET
