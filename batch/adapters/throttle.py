"""Client-side rate limiting shared by every thread of one process: a token bucket and a "not before" instant.

The bucket spaces requests to ``rate`` per second (bursts up to ``max(1, rate)``); the instant is pushed
forward by a 429's ``Retry-After`` (``pause_until``), so every thread waits the server's pause out, not
only the one that was refused. The clock and the sleep are injected: tests observe the waits without
waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Throttle:
    """Token bucket plus a shared "not before" instant; all threads go through ``acquire``."""

    def __init__(self, rate: float | None, monotonic: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._rate, self._capacity = rate, self._bucket_size(rate)
        self._tokens = self._capacity
        self._monotonic = monotonic
        self._sleep = sleep
        self._updated = monotonic()
        self._not_before = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def _bucket_size(rate: float | None) -> float:
        return max(1.0, rate) if rate else 1.0

    def set_rate(self, rate: float | None) -> None:
        """Change the rate (e.g. this process's share when several processes run); the bucket never grows."""
        with self._lock:
            self._rate, self._capacity = rate, self._bucket_size(rate)
            self._tokens = min(self._tokens, self._capacity)

    def pause_until(self, instant: float) -> None:
        """Hold every thread back until ``instant`` (monotonic), e.g. after a 429 Retry-After."""
        with self._lock:
            self._not_before = max(self._not_before, instant)

    def acquire(self) -> float:
        """Reserve one request slot and sleep until it is due; returns the seconds waited."""
        with self._lock:
            now = self._monotonic()
            start = max(now, self._not_before)
            if self._rate:
                self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                self._tokens -= 1.0
                if self._tokens < 0:
                    start = max(start, now + (-self._tokens) / self._rate)
            wait = start - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0
