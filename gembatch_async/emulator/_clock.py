"""The emulator's clock: wall-clock time, plus whatever a test has moved it forward.

Every job's progress (PENDING, RUNNING, done, EXPIRED) and every upload's 48 h lifetime
is derived from creation times compared with this clock, so moving it forward ages every
job and file at once: a test that needs a job finished, or expired, asks for it
(``POST /_emulator/advance-clock {"seconds": S}``, ``RunningEmulator.advance_clock``)
instead of sleeping until it is. Users never move it: the default is the wall clock.

It only moves forward (a job never goes back to RUNNING), and only for the emulator's
own records: webhook signatures keep the real time, since the receiver checks their
timestamps against its own clock.
"""

from __future__ import annotations

import math
import threading
import time


class Clock:
    """Wall-clock seconds since the epoch, plus an offset that only grows."""

    def __init__(self) -> None:
        self._offset = 0.0
        # advance() may come from another thread than the server's loop (a test's admin
        # helper goes through HTTP, but an in-process owner could call it directly).
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        """Seconds this clock is ahead of the wall clock."""
        return self._offset

    def now(self) -> float:
        """The emulator's present, in seconds since the epoch."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward; returns the new offset.

        ValueError for a negative, infinite or NaN amount: time only moves forward."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("the clock only moves forward: seconds must be a finite number >= 0")
        with self._lock:
            self._offset += seconds
            return self._offset
