"""The exit codes, and writing one line to the terminal, safe against names its
encoding cannot hold and a reader that went away (``| head``)."""

from __future__ import annotations

import os
from typing import TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEFERRED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _print(text: str, stream: TextIO) -> None:
    try:
        try:
            print(text, file=stream, flush=True)
        except UnicodeEncodeError:  # a name the stream's encoding cannot hold: escaped
            encoding = stream.encoding or "utf-8"
            print(
                text.encode(encoding, "backslashreplace").decode(encoding), file=stream, flush=True
            )
    except BrokenPipeError:
        # The reader went away (`| head`): keep working and recording, silently.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
