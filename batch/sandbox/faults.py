"""Fault injection for the sandbox: latency, 5xx, lost responses and a rate limit, plus request statistics.

All faults are off by default and are switched at run time with ``PUT /_sandbox/faults`` (the whole
setting is replaced; keys left out take their default, so ``{}`` turns every fault off).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class FaultSettings(BaseModel):
    """What goes wrong, and where. ``methods``/``path_prefixes`` restrict the error and lost-response faults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0, ge=0, le=60_000)
    #: probability of answering an error (500/503, or ``error_statuses``) before doing anything
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: the statuses an injected error picks from (default 500 and 503); e.g. [422] for a permanent refusal
    error_statuses: list[int] | None = None
    #: probability (POST/PATCH only) of doing and committing the write, then answering 504
    lose_response_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: token bucket over all non-admin requests; over it: 429 with Retry-After (seconds)
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    methods: list[str] | None = None
    path_prefixes: list[str] | None = None
    seed: int | None = None

    @field_validator("error_statuses")
    @classmethod
    def _error_statuses(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(not 400 <= status <= 599 or status == 429 for status in value)):
            raise ValueError("error statuses must be 4xx (but 429) or 5xx")
        return value


class TokenBucket:
    """A token bucket refilled at ``rate`` per second holding at most ``rate`` tokens (one second of burst)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._updated = time.monotonic()

    def take(self) -> float | None:
        """Take one token; None when granted, else the seconds until one is available."""
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self.rate


class FaultInjector:
    """The current fault settings and the random source deciding each request's fate."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self.configure(settings or FaultSettings())

    def configure(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._random = random.Random(settings.seed)
        self._bucket = TokenBucket(settings.rate_limit_per_second) if settings.rate_limit_per_second else None

    def _applies(self, method: str, path: str) -> bool:
        settings = self.settings
        if settings.methods is not None and method.upper() not in {m.upper() for m in settings.methods}:
            return False
        return settings.path_prefixes is None or any(path.startswith(p) for p in settings.path_prefixes)

    def retry_after(self) -> int | None:
        """Whole seconds to wait when the rate limit refuses this request, else None."""
        if self._bucket is None:
            return None
        wait = self._bucket.take()
        return None if wait is None else max(1, math.ceil(wait))

    @property
    def latency_seconds(self) -> float:
        return self.settings.latency_ms / 1000.0

    def injected_error(self, method: str, path: str) -> int | None:
        """An error status (500 or 503 unless configured) when this request should fail first, else None."""
        rate = self.settings.error_rate
        if rate <= 0 or not self._applies(method, path) or self._random.random() >= rate:
            return None
        return self._random.choice(self.settings.error_statuses or (500, 503))

    def lose_response(self, method: str, path: str) -> bool:
        """Whether the (already committed) write's response should be replaced by a 504."""
        rate = self.settings.lose_response_rate
        if rate <= 0 or method.upper() not in ("POST", "PATCH") or not self._applies(method, path):
            return False
        return self._random.random() < rate


class RequestStats:
    """Counts of every non-admin request, by route template and by status code."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()

    def record(self, route: str, status: int) -> None:
        self.total += 1
        self.by_route[route] += 1
        self.by_status[str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"total": self.total, "by_route": dict(self.by_route), "by_status": dict(self.by_status)}
