"""A run stopped by a signal: the stop request that remembers who asked and when, and what it left behind.

Interrupted is a state of its own (``INTERRUPTED``): not ABANDONED (a run found dead by a later one),
not FAILED (an error). The CLI's signal handler calls ``Interruption.request``; the run finishes the
steps in flight, records itself INTERRUPTED with when and what was in flight (``summary.interrupted``
and the ``error`` text), and the next run resumes those payouts.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

INTERRUPTED = "INTERRUPTED"


class Interruption(threading.Event):
    """A stop request (a ``threading.Event``) that keeps the signal's name and the moment it came."""

    def __init__(self) -> None:
        super().__init__()
        self.signal: str | None = None
        self.at: datetime | None = None

    def request(self, signal: str, at: datetime | None = None) -> None:
        """Ask the run to stop; the first request's signal and time are kept."""
        if self.signal is None:
            self.signal, self.at = signal, at or datetime.now(UTC)
        self.set()


def interruption_record(stop: threading.Event, in_flight: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """What an interrupted run records: the signal, when, and the payouts it left on their way per state."""
    signal = getattr(stop, "signal", None) or "stop request"
    at = getattr(stop, "at", None)
    return {
        "signal": signal,
        "at": at.isoformat() if isinstance(at, datetime) else None,
        "in_flight": sum(v["count"] for v in in_flight.values()),
        "in_flight_moved": sum(v["moved"] for v in in_flight.values()),
        "by_state": {state: v["count"] for state, v in sorted(in_flight.items())},
    }


def interruption_text(record: Mapping[str, Any]) -> str:
    """The run's ``error`` line: who stopped it, when, and what it left in flight."""
    when = f" at {record['at']}" if record.get("at") else ""
    states = ", ".join(f"{state} {n}" for state, n in record["by_state"].items())
    left = (
        f"{record['in_flight']} payout(s) in flight ({states}; {record['in_flight_moved']} past the money move),"
        " resumed by the next run"
        if record["in_flight"]
        else "nothing in flight"
    )
    return f"interrupted by {record['signal']}{when}: {left}"
