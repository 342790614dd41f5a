"""The floor: only ``files.upload`` then ``batches.create`` per file, under a semaphore.

No retries, no journal, no validation. Anything built on google-genai pays at least this.
Run as a script: ``python bench/bare_sdk.py BASE_URL CONCURRENCY FILE...``.
"""

from __future__ import annotations

import asyncio
import sys

from google import genai
from google.genai import types


async def submit_bare(paths: list[str], base_url: str, concurrency: int) -> int:
    """Upload and create for every file; returns how many batches were created."""
    client = genai.Client(api_key="bench", http_options=types.HttpOptions(base_url=base_url))
    semaphore = asyncio.Semaphore(concurrency)

    async def one(path: str) -> None:
        async with semaphore:
            uploaded = await client.aio.files.upload(
                file=path, config={"mime_type": "application/jsonl", "display_name": path}
            )
            await client.aio.batches.create(
                model="gemini-3.1-flash-lite",
                src=uploaded.name or "",
                config={"display_name": path},
            )

    await asyncio.gather(*(one(p) for p in paths))
    await client.aio.aclose()
    return len(paths)


if __name__ == "__main__":
    url, conc, *files = sys.argv[1:]
    print(asyncio.run(submit_bare(files, url, int(conc))))
