"""Progress of a long run: a live line on a terminal, a periodic ``run.progress`` log event otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import structlog

from batch.adapters.journal import PayoutRecord

log = structlog.get_logger("batch.progress")


class Progress:
    """Thread-safe counter of finished payouts with a rate and an ETA."""

    def __init__(self, *, interval: float = 10.0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if not self.tty else 0.25
        self._lock = threading.Lock()
        self._phase = ""
        self._total: int | None = None
        self._done = 0
        self._started = time.monotonic()
        self._last = 0.0
        self._shown = False
        self._remaining: Callable[[], int] | None = None

    def phase(self, name: str, total: int | None, remaining: Callable[[], int] | None = None) -> None:
        """Start a phase; ``remaining`` (work left, e.g. read from the journal) counts other processes' work too."""
        with self._lock:
            self._finish_line()
            self._phase, self._total, self._done = name, total, 0
            self._started = time.monotonic()
            self._remaining = remaining
            if remaining is not None:
                self.interval = max(self.interval, 2.0)  # a journal query per display

    def planned(self, candidates: int) -> None:
        with self._lock:
            self._done = candidates
            self._maybe_show()

    def done(self, payout: PayoutRecord) -> None:
        with self._lock:
            self._done += 1
            self._maybe_show()

    def _maybe_show(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        if self._remaining is not None and self._total is not None:
            self._done = max(self._total - self._remaining(), 0)
        elapsed = max(now - self._started, 1e-6)
        rate = self._done / elapsed
        eta = None
        if self._total and rate > 0:
            eta = max(self._total - self._done, 0) / rate
        if self.tty:
            total = f"/{self._total}" if self._total else ""
            eta_text = f" ETA {eta:5.0f}s" if eta is not None else ""
            self.stream.write(f"\r{self._phase:>8}: {self._done}{total}  {rate:7.1f}/s{eta_text}   ")
            self.stream.flush()
            self._shown = True
        else:
            log.info(
                "run.progress",
                phase=self._phase,
                done=self._done,
                total=self._total,
                rate_per_s=round(rate, 1),
                eta_s=None if eta is None else round(eta),
            )

    def _finish_line(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False

    def close(self) -> None:
        with self._lock:
            self._finish_line()
