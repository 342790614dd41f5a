"""``run`` on a terminal: a live table of the run's files and an overall bar.

Used only by the CLI (the one place that prints). Events in, a redraw out; when
the output is not a terminal, or with ``--json``, the CLI prints plain lines
instead and this module is not used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._events import (
    BatchStats,
    CleanupFailed,
    Event,
    FileDeferred,
    FileFailed,
    FileSkipped,
    FileSubmitted,
    JobChanged,
    JobEnded,
    JournalProblem,
    ResultsSaved,
    Retrying,
    TwinFound,
    WaitingForCapacity,
)
from .._names import display_path
from ._words import count_of

#: Rows shown at once; the rest are counted in a footer.
MAX_ROWS = 20
#: Warnings kept below the bar, each shown with its age.
MAX_WARNINGS = 3
#: A warning older than this is dropped: it described a moment that has passed (a retry
#: that since succeeded), and at the end it would read as current.
STALE_WARNING_SECONDS = 120.0
#: Lines besides the file rows: the table's header and rule, the "more files" footer,
#: the bar, and one for the cursor rich leaves below a live display.
_FIXED_LINES = 5
_ORDER = {"running": 0, "pending": 1, "submitted": 2, "waiting": 3, "failed": 4, "done": 5}
_STYLE = {"done": "green", "failed": "red", "waiting": "yellow", "running": "cyan"}


@dataclass
class _Row:
    path: str
    state: str = "queued"
    stats: BatchStats | None = None
    note: str = ""
    since: float = field(default_factory=time.monotonic)


class LiveView:
    """A table redrawn as events arrive; warnings kept in a short log below it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: dict[str, _Row] = {}
        self.total = 0
        self.log: list[tuple[float, str]] = []
        #: Requests of the files whose results are in: answered, and failed.
        self.answered = self.failed_requests = 0
        # get_renderable: every refresh redraws, so the times keep counting between events.
        self._live = Live(
            console=console, refresh_per_second=4, transient=False, get_renderable=self._render
        )

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.refresh()
        self._live.__exit__(exc_type, exc, tb)

    def on_event(self, event: Event) -> None:
        self._apply(event)
        self._live.refresh()

    def _apply(self, event: Event) -> None:
        if isinstance(event, (FileSubmitted, FileSkipped, FileFailed, FileDeferred)):
            self.total = max(self.total, event.total)
        if isinstance(event, FileSubmitted):
            self._set(event.path, "pending")
        elif isinstance(event, FileSkipped):
            self._set(event.path, "submitted", "recorded earlier")
        elif isinstance(event, FileFailed):
            self._set(event.path, "failed", event.reason)
        elif isinstance(event, (FileDeferred, WaitingForCapacity)):
            self._set(event.path, "waiting", event.reason)
        elif isinstance(event, JobChanged):
            state = event.state.removeprefix("JOB_STATE_").lower()
            row = self._set(event.path, "pending" if state == "pending" else "running")
            row.stats = event.stats or row.stats
            if state == "succeeded":
                row.note = "downloading results"
        elif isinstance(event, ResultsSaved):
            self.answered += event.responses
            self.failed_requests += event.failed
            done = f"{count_of(event.responses, 'answer')}, {count_of(event.errors, 'error')}"
            self._set(event.path, "done", done)
        elif isinstance(event, JobEnded):
            state = "waiting" if event.resubmitted else "failed"
            self._set(event.path, state, event.reason)
        elif isinstance(event, (Retrying, CleanupFailed, JournalProblem, TwinFound)):
            self.log = [*self.log[-(MAX_WARNINGS - 1) :], (time.monotonic(), _log_line(event))]

    def _set(self, path: str, state: str, note: str = "") -> _Row:
        row = self.rows.setdefault(path, _Row(path))
        if row.state != state:
            row.state, row.since = state, time.monotonic()
        row.note = note
        return row

    def _render(self) -> Group:
        done = sum(1 for r in self.rows.values() if r.state == "done")
        failed = sum(1 for r in self.rows.values() if r.state == "failed")
        total = max(self.total, len(self.rows), 1)
        now = time.monotonic()
        warnings = [
            # The age first and one line each, cut to the width: a warning never pushes
            # the bar off the screen, and an old one never reads as current.
            Text(f"{_age(now - at)} ago: {line}", style="dim", no_wrap=True, overflow="ellipsis")
            for at, line in self.log
            if now - at < STALE_WARNING_SECONDS
        ]
        # One line per row, and only as many rows as the terminal holds beside the bar and
        # the warnings: rich cuts a live display taller than the screen from the bottom.
        max_rows = max(1, min(MAX_ROWS, self.console.size.height - _FIXED_LINES - len(warnings)))
        table = Table(expand=True, show_edge=False, pad_edge=False)
        for column in ("file", "state", "requests", "for", "note"):
            table.add_column(column, overflow="ellipsis", no_wrap=True)
        shown = sorted(self.rows.values(), key=lambda r: (_ORDER.get(r.state, 9), r.path))
        for row in shown[:max_rows]:
            table.add_row(
                Text(display_path(row.path)),  # Text: a name is never read as markup
                Text(row.state, style=_STYLE.get(row.state, "")),
                _counts(row.stats),
                "" if row.state in ("done", "failed") else _age(time.monotonic() - row.since),
                row.note,
            )
        parts: list[object] = [table]
        if len(shown) > max_rows:
            parts.append(Text(f"... and {len(shown) - max_rows} more files"))
        summary = Text(
            f"results {done}/{total}, failed {failed}; requests "
            f"{self.answered} answered, {self.failed_requests} failed",
            no_wrap=True,
            overflow="ellipsis",
        )
        # One line whatever the width: the bar gives way to the counts (40 cells at most,
        # 10 at least), since the row budget above counts the overall line as one.
        width = max(10, min(40, self.console.width - len(summary) - 1))
        overall = Table.grid(padding=(0, 1))
        overall.add_row(ProgressBar(total=total, completed=done + failed, width=width), summary)
        parts.append(overall)
        parts += warnings
        return Group(*parts)  # type: ignore[arg-type]


def _counts(stats: BatchStats | None) -> str:
    if stats is None or not stats.requests:
        return ""
    return f"{stats.succeeded + stats.failed}/{stats.requests}"


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m{int(seconds % 60):02d}s"


def _log_line(event: Retrying | CleanupFailed | JournalProblem | TwinFound) -> str:
    if isinstance(event, Retrying):
        return f"retrying {event.step} of {display_path(event.path)}: {event.reason}"
    if isinstance(event, CleanupFailed):
        return f"could not delete {display_path(event.file_name)}: {event.reason}"
    if isinstance(event, TwinFound):
        done = "cancelled" if event.cancelled else "could not cancel"
        return f"{done} {event.twin}, a second job for {display_path(event.path)}"
    return f"{display_path(event.journal)}:{event.line}: {event.message}"
