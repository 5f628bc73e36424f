"""The lease's heartbeat and the journal watchdog of a running run (or listener instance).

Two daemon threads:

- the **heartbeat** renews the lease every ``interval`` seconds over its own connection (after a
  database restart it reconnects and takes the session lock again, same run, same token); a renewal
  that finds the lease taken over (or the run fenced) marks it *lost*;
- the **watchdog** measures the time since the last good renewal, so a hung database (a paused
  server answers nothing, and no TCP timeout fires on a live host) is seen within seconds:
  ``warn_after`` -> one ``journal.unresponsive`` warning; ``lost_after`` (below the lease's TTL, so
  this holder stops before anyone may take over) -> the lease is lost and the run stops;
  ``abort_after`` -> the process exits 1 (its threads may be blocked in the hung database forever;
  every step's intent is durable, so the next run reads back and resumes).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from batch.errors import TransientError

log = structlog.get_logger("batch.lease")


class RenewablePort(Protocol):
    def renew(self) -> bool: ...


class Heartbeat:
    """Keeps a lease alive and says when it is lost (``lost`` event, ``on_lost`` callback)."""

    def __init__(
        self,
        lease: RenewablePort,
        *,
        interval: float,
        warn_after: float,
        lost_after: float,
        abort_after: float,
        on_lost: Callable[[str], None] | None = None,
        abort: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease = lease
        self.interval = interval
        self.warn_after = warn_after
        self.lost_after = lost_after
        self.abort_after = abort_after
        self.on_lost = on_lost
        self._abort = abort
        self._clock = clock
        self.lost = threading.Event()
        self.lost_reason = ""
        self._stalled = False
        self._stopped = threading.Event()
        self._last_ok = clock()
        self._warned = False
        self._threads: list[threading.Thread] = []

    def start(self) -> Heartbeat:
        self._last_ok = self._clock()
        for target, name in ((self._beat, "lease-heartbeat"), (self._watch, "journal-watchdog")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop both threads (the heartbeat may be blocked in a hung database: never waited for long)."""
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=0.2)

    def _lose(self, reason: str, *, stalled: bool = False) -> None:
        if self.lost.is_set():
            return
        self.lost_reason, self._stalled = reason, stalled
        self.lost.set()
        log.error("lease.lost", reason=reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    def beat_once(self) -> None:
        """One renewal (the heartbeat thread's step)."""
        try:
            ours = self.lease.renew()
        except TransientError as exc:
            log.warning("lease.renew_failed", error=str(exc)[:300], since_ok_s=round(self._clock() - self._last_ok, 1))
            return
        if not ours:
            self._lose("the lease was taken over by another run (or this run was marked ABANDONED)")
            return
        stalled = self._clock() - self._last_ok
        self._last_ok = self._clock()
        if self._warned:
            log.warning("journal.responsive_again", stalled_s=round(stalled, 1))
            self._warned = False

    def check_once(self) -> None:
        """One watchdog check (the watchdog thread's step)."""
        if self.lost.is_set() and not self._stalled:
            return  # taken over while the journal answers: the run stops on its own, promptly
        age = self._clock() - self._last_ok
        if age >= self.warn_after and not self._warned:
            self._warned = True
            log.warning("journal.unresponsive", seconds=round(age, 1), lost_after_s=self.lost_after)
        if age >= self.lost_after:
            self._lose(f"no heartbeat for {age:.0f} s: the journal does not answer", stalled=True)
        if age >= self.abort_after:
            log.error("run.aborted_journal_hung", seconds=round(age, 1))
            self._stopped.set()
            self._abort(1)

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval) and not self.lost.is_set():
            self.beat_once()

    def _watch(self) -> None:
        while not self._stopped.wait(min(1.0, self.interval)):
            self.check_once()
