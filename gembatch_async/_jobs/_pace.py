"""How long a watcher waits between polls: short while jobs are finishing, long while
nothing changes, never longer than ``--interval``.

The rule: after the first poll, and after any poll in which a job changed state (one
started running, or ended), the next wait is the shortest, ``interval / 16`` but at
least 1 s (never more than ``interval``); each poll in which nothing changed doubles
the wait, up to ``interval``. With the default 30 s: 1.9, 3.8, 7.5, 15, 30, 30, ...
Jobs of one wave tend to end close together, so the ones after the first are seen
within seconds; a wave still running costs a poll every ``interval``. A poll of
many jobs is a few listing requests (``_listing``), so the short waits stay cheap.
"""

from __future__ import annotations

#: The shortest wait is this share of ``interval`` ...
SHORTEST_SHARE = 1 / 16
#: ... but not below this many seconds (unless ``interval`` itself is shorter).
SHORTEST_SECONDS = 1.0


class Pace:
    """The wait before the next poll, from whether the last one saw a change."""

    def __init__(self, interval: float) -> None:
        self.longest = max(0.0, interval)
        self.shortest = min(self.longest, max(SHORTEST_SECONDS, self.longest * SHORTEST_SHARE))
        self._wait: float | None = None

    def next_wait(self, changed: bool) -> float:
        """Seconds to wait after a poll; ``changed``: a job changed state in it."""
        if self._wait is None or changed:
            self._wait = self.shortest
        else:
            self._wait = min(self.longest, self._wait * 2)
        return self._wait
