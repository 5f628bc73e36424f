"""Which failed InvestSuite calls are sent again, when, and for how long: stamina, with the client's rules.

``with_retries`` runs one call in a ``stamina.retry_context`` (jittered exponential backoff, waits skipped
in stamina's testing mode). ``CallRetries`` is the context's backoff hook and decides per failure:

* only a ``RemoteTransientError`` is retried; a write only when it is a ``NotProcessedError`` (the server
  provably did not process it) or the client was built with ``retry_writes`` — an unknown outcome is left
  to the step engine, which reads back first (``investsuite.write_failed``);
* a ``Retry-After`` (429, 503) is the wait; otherwise stamina's backoff;
* at most ``max_attempts`` requests, and no wait that could end past ``max_retry_seconds`` from the first
  try (so a call never outlives connect + read timeout + ``max_retry_seconds``, which the lease is checked
  against): then ``investsuite.gave_up`` and the last error is raised.

``investsuite.retry`` is logged when the next try starts, with the wait it had (the client's clock).
Beside them: ``NotProcessedError`` (safe to resend, even a write), ``connect_cause`` (why a connection was
never made, for its message) and ``parse_retry_after``.
"""

from __future__ import annotations

import email.utils
import math
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import stamina
import structlog

from batch.errors import RemoteTransientError

log = structlog.get_logger("batch.adapters.investsuite")

_T = TypeVar("_T")

#: stamina's backoff: min(MAX, INITIAL * 2 ** (failures - 1) + uniform(0, JITTER)) seconds
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
BACKOFF_JITTER_SECONDS = 0.5


class NotProcessedError(RemoteTransientError):
    """Transient failure where the server provably did not process the request; safe to resend."""


def parse_retry_after(value: str | None, *, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date); None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now() if now is not None else datetime.now(UTC)
        return max(0.0, (when - current).total_seconds())
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def connect_cause(exc: httpx.TransportError, connect_timeout: float) -> str:
    """Why no connection was made, in a few words (``connection refused``, ``host name not resolved``)."""
    if isinstance(exc, httpx.PoolTimeout):
        return "no free connection in the client's pool"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no answer within the {connect_timeout:g} s connect timeout"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return f"host name not resolved ({cause.strerror})"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed ({getattr(cause, 'verify_message', None) or cause.reason or cause})"
    if isinstance(cause, TimeoutError):
        return f"no answer within the {connect_timeout:g} s connect timeout"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[:1].lower() + cause.strerror[1:]
    return str(exc) or type(exc).__name__


@contextmanager
def not_sent_on_auth_failure(route: str) -> Iterator[None]:
    """A transient auth failure means the request itself was never sent: safe to resend, even a write."""
    try:
        yield
    except NotProcessedError:
        raise
    except RemoteTransientError as exc:
        raise NotProcessedError(
            f"{route}: not sent, authentication failed: {exc}", status=exc.status, retry_after=exc.retry_after
        ) from exc


class CallRetries:
    """stamina's backoff hook for one call: retry or give up, and how long to wait (see the module docstring)."""

    def __init__(
        self,
        method: str,
        route: str,
        *,
        write: bool,
        retry_writes: bool,
        max_attempts: int,
        max_retry_seconds: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.method, self.route = method, route
        self.write, self.retry_writes = write, retry_writes
        self.max_attempts, self.max_retry_seconds = max_attempts, max_retry_seconds
        self._monotonic = monotonic
        self._started = monotonic()
        self.failures = 0
        self._last: tuple[RemoteTransientError, float] | None = None

    def __call__(self, exc: Exception) -> bool | float:
        if not isinstance(exc, RemoteTransientError):
            return False
        if self.write and not self.retry_writes and not isinstance(exc, NotProcessedError):
            log.warning(
                "investsuite.write_failed",
                method=self.method,
                route=self.route,
                status=exc.status,
                error=str(exc),
            )
            return False
        self.failures += 1
        now = self._monotonic()
        elapsed = now - self._started
        longest_wait = exc.retry_after or min(
            BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2.0 ** (self.failures - 1) + BACKOFF_JITTER_SECONDS
        )
        if self.failures >= self.max_attempts or elapsed + longest_wait > self.max_retry_seconds:
            log.warning(
                "investsuite.gave_up",
                method=self.method,
                route=self.route,
                attempts=self.failures,
                elapsed_seconds=round(elapsed, 3),
                status=exc.status,
                error=str(exc),
            )
            return False
        self._last = (exc, now)
        return float(exc.retry_after) if exc.retry_after else True

    def log_retry(self) -> None:
        """The next try starts: log the failure it follows and the wait it had."""
        assert self._last is not None  # stamina starts another try only after the hook asked for one
        exc, failed_at = self._last
        log.debug(
            "investsuite.retry",
            method=self.method,
            route=self.route,
            attempt=self.failures,
            delay_seconds=round(self._monotonic() - failed_at, 3),
            status=exc.status,
            retry_after=exc.retry_after,
            error=str(exc),
        )


def with_retries(call: Callable[[], _T], retries: CallRetries) -> _T:
    """``call()``, tried again as ``retries`` decides, with stamina's jittered exponential backoff between tries.

    The first try runs outside stamina: a retry context costs 10-30 µs of CPU, up to a quarter of a whole
    request through ``http_transport``, and nearly every call succeeds at once. A transient first failure
    is raised again as the context's first attempt, so stamina decides on it and waits as after any try.
    """
    try:
        return call()
    except RemoteTransientError as exc:  # anything else is never retried: it goes straight up
        first_failure: RemoteTransientError | None = exc
    for attempt in stamina.retry_context(
        on=retries,
        attempts=retries.max_attempts,
        timeout=None,  # the time bound is the hook's: it also covers a Retry-After, which stamina does not cap
        wait_initial=BACKOFF_INITIAL_SECONDS,
        wait_max=BACKOFF_MAX_SECONDS,
        wait_jitter=BACKOFF_JITTER_SECONDS,
    ):
        with attempt:
            if first_failure is not None:
                failure, first_failure = first_failure, None
                raise failure
            retries.log_retry()
            return call()
    raise AssertionError("unreachable: stamina re-raises the last error")
