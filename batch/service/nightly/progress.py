"""Progress of a long run: a rich progress bar on a terminal, a periodic ``run.progress`` log event otherwise.

One phase at a time (``resume``, ``plan``, ``execute``), each with what is done, the total when it is
known, the rate and the time left. On a terminal every phase gets its own bar (refreshed by rich a
few times a second, log lines printed above it); off a terminal (cron, Kubernetes), or when the logs
are JSON lines (``--log-format json``: nothing else may draw on stderr), an INFO event ``run.progress``
is logged at most every ``interval`` seconds.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from batch.adapters.journal import PayoutRecord
from batch.logs import json_logging

log = structlog.get_logger("batch.progress")

#: seconds between two reads of the work left (a journal query) when other processes share the run
REMAINING_POLL_SECONDS = 2.0


class _RateColumn(ProgressColumn):
    """Items per second, as rich estimates it over its recent samples."""

    def render(self, task: Task) -> Text:
        return Text("-/s" if task.speed is None else f"{task.speed:.1f}/s", style="progress.data.speed")


class Progress:
    """Thread-safe progress of the run's phases; finished payouts are counted with ``done``."""

    def __init__(
        self,
        *,
        interval: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) and not json_logging()
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._phase = ""
        self._total: int | None = None
        self._done = 0
        self._started = clock()
        self._last_event = -math.inf
        self._last_poll = -math.inf
        self._remaining: Callable[[], int] | None = None
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def phase(self, name: str, total: int | None, remaining: Callable[[], int] | None = None) -> None:
        """Start a phase; ``remaining`` (work left, e.g. read from the journal) counts other processes' work too."""
        with self._lock:
            self._end_task()
            self._phase, self._total, self._done = name, total, 0
            self._started = self._clock()
            self._last_event = self._last_poll = -math.inf
            self._remaining = remaining
            if self.tty and total != 0:  # a phase with nothing to do gets no bar
                self._task = self._live().add_task(name, total=total)

    def planned(self, candidates: int) -> None:
        """Planning has recorded ``candidates`` decisions so far."""
        with self._lock:
            self._done = candidates
            self._show()

    def done(self, payout: PayoutRecord) -> None:
        """One payout finished (completed, stopped or cancelled) in this process."""
        with self._lock:
            self._done += 1
            self._show()

    def close(self) -> None:
        """Stop the display (the bars stay on screen as they ended)."""
        with self._lock:
            self._end_task()
            if self._bar is not None:
                self._bar.stop()
                self._bar = None

    # -- inside the lock -------------------------------------------------------------------------------
    def _show(self) -> None:
        now = self._clock()
        if self._remaining is not None and self._total is not None and now - self._last_poll >= REMAINING_POLL_SECONDS:
            self._last_poll = now
            self._done = max(self._total - self._remaining(), 0)
        if self.tty:
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, completed=self._done)
            return
        if now - self._last_event < self.interval:
            return
        self._last_event = now
        rate = self._done / max(now - self._started, 1e-6)
        eta = max(self._total - self._done, 0) / rate if self._total and rate > 0 else None
        log.info(
            "run.progress",
            phase=self._phase,
            done=self._done,
            total=self._total,
            rate_per_s=round(rate, 1),
            eta_s=None if eta is None else round(eta),
        )

    def _live(self) -> RichProgress:
        if self._bar is None:
            ours = self.stream is sys.stderr  # only then may rich redirect print() and log lines above the bars
            self._bar = RichProgress(
                TextColumn("{task.description:>8}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream, force_terminal=True),
                get_time=self._clock,
                refresh_per_second=4,
                redirect_stdout=ours,
                redirect_stderr=ours,
            )
            self._bar.start()
        return self._bar

    def _end_task(self) -> None:
        if self._bar is not None and self._task is not None:
            # a phase without a known total (planning) ends as a full bar of what it did
            total = self._done if self._total is None else self._total
            self._bar.update(self._task, completed=self._done, total=total)
            self._bar.stop_task(self._task)
        self._task = None


class PhaseTimer:
    """Wall time per phase of a run (``resume``, ``plan``, ``execute``, ``reconcile``, ``report``), in seconds.

    ``start(name)`` ends the phase under way and starts ``name``; a phase entered twice adds up. The run
    records the figures in its summary, the metrics and the text output: where the night's time went.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = clock
        self._phase: str | None = None
        self._since = 0.0

    def start(self, phase: str) -> None:
        self.stop()
        self._phase, self._since = phase, self._clock()

    def stop(self) -> None:
        if self._phase is not None:
            spent = self._clock() - self._since
            self.seconds[self._phase] = round(self.seconds.get(self._phase, 0.0) + spent, 3)
            self._phase = None
