"""Progress display: rich bars on a terminal, a run.progress event every interval otherwise (fake clock and stream)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any, cast

from structlog.testing import capture_logs

from batch.adapters.journal import PayoutRecord
from batch.logs import configure_logging, reset_logging
from batch.service.nightly.progress import PhaseTimer, Progress

PAYOUT = cast(PayoutRecord, object())  # Progress only counts payouts; it never reads them
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(stream: io.StringIO) -> str:
    """What the terminal shows at the end: the last frame of each bar, escape codes removed."""
    return ANSI.sub("", stream.getvalue()).replace("\r", "\n")


def test_off_a_terminal_progress_is_an_event_every_interval() -> None:
    """Not a terminal: run.progress at the first payout, then only once `interval` seconds have passed."""
    clock = FakeClock()
    progress = Progress(interval=10.0, stream=io.StringIO(), clock=clock)
    with capture_logs() as logs:
        progress.phase("execute", 100)
        for at in (1004.0, 1008.0, 1013.9, 1014.0, 1020.0):
            clock.now = at
            progress.done(PAYOUT)
        progress.close()
    events = [{k: v for k, v in e.items() if k != "log_level"} for e in logs]
    assert events == [
        {"event": "run.progress", "phase": "execute", "done": 1, "total": 100, "rate_per_s": 0.2, "eta_s": 396},
        {"event": "run.progress", "phase": "execute", "done": 4, "total": 100, "rate_per_s": 0.3, "eta_s": 336},
    ]
    assert all(e["log_level"] == "info" for e in logs)


def test_planning_progress_counts_candidates_without_a_total() -> None:
    """planned(n) reports the candidates decided so far; no total, so no ETA."""
    clock = FakeClock()
    progress = Progress(interval=5.0, stream=io.StringIO(), clock=clock)
    with capture_logs() as logs:
        progress.phase("plan", None)
        clock.now += 2
        progress.planned(100)
        clock.now += 1
        progress.planned(200)  # within the interval: no event
        clock.now += 5
        progress.planned(900)
    assert [(e["done"], e["total"], e["eta_s"]) for e in logs] == [(100, None, None), (900, None, None)]
    assert [e["rate_per_s"] for e in logs] == [50.0, 112.5]


def test_work_left_is_read_from_the_shared_count_at_most_every_two_seconds() -> None:
    """With other processes, done = total - remaining(); remaining() is not queried more than every 2 s."""
    clock = FakeClock()
    left = [70]
    calls: list[float] = []

    def remaining() -> int:
        calls.append(clock.now)
        return left[0]

    progress = Progress(interval=1.0, stream=io.StringIO(), clock=clock)
    with capture_logs() as logs:
        progress.phase("execute", 100, remaining)
        progress.done(PAYOUT)  # reads 70 left: 30 done (this process and the others)
        clock.now += 1.5
        progress.done(PAYOUT)  # no read: 31
        left[0] = 20
        clock.now += 1.0
        progress.done(PAYOUT)  # reads 20 left: 80 done
    assert calls == [1000.0, 1002.5]
    assert [e["done"] for e in logs] == [30, 31, 80]


def test_on_a_terminal_each_phase_gets_a_rich_bar_with_count_rate_and_eta() -> None:
    """A terminal gets rich bars (phase, done/total, rate, ETA) and no run.progress events; empty phases no bar."""
    clock = FakeClock()
    stream = Terminal()
    progress = Progress(interval=10.0, stream=stream, clock=clock)
    with capture_logs() as logs:
        progress.phase("resume", 0)
        progress.phase("plan", None)
        progress.planned(40)
        progress.phase("execute", 40)
        for _ in range(10):
            clock.now += 0.5
            progress.done(PAYOUT)
        clock.now += 0.5
        progress.close()
    assert logs == []
    screen = _screen(stream)
    assert "resume" not in screen
    last_plan = [line for line in screen.splitlines() if line.strip().startswith("plan")][-1]
    assert "40/40" in last_plan  # planning ended: a full bar of what it decided
    last_execute = [line for line in screen.splitlines() if line.strip().startswith("execute")][-1]
    assert "10/40" in last_execute
    assert "2.0/s" in last_execute  # ten payouts in five seconds
    assert re.search(r"ETA 0:00:15", last_execute), last_execute  # thirty left at two a second


def test_close_twice_and_without_phase_is_harmless() -> None:
    """close() ends the display once; a progress that never started a phase closes without output."""
    stream: Any = Terminal()
    progress = Progress(stream=stream, clock=FakeClock())
    progress.close()
    progress.close()
    assert stream.getvalue() == ""


def test_json_logs_on_a_terminal_get_progress_events_and_no_bars() -> None:
    """With JSON logs (--log-format json) even a terminal gets run.progress events, never a drawn bar."""
    terminal = Terminal()
    configure_logging("INFO", "json", stream=io.StringIO())
    try:
        progress = Progress(interval=10.0, stream=terminal, clock=FakeClock())
        with capture_logs() as logs:
            progress.phase("execute", 10)
            progress.done(PAYOUT)
            progress.close()
    finally:
        reset_logging()
    assert terminal.getvalue() == ""
    assert [(e["event"], e["done"], e["total"]) for e in logs] == [("run.progress", 1, 10)]


def test_phase_timer_adds_up_each_phase_and_ends_the_one_under_way() -> None:
    """start() ends the phase under way; a phase entered twice adds up; stop() ends the last one."""
    ticks = iter([0.0, 1.5, 1.5, 4.0, 4.0, 4.25])
    timer = PhaseTimer(clock=lambda: next(ticks))
    timer.start("plan")
    timer.start("execute")
    timer.start("plan")
    timer.stop()
    timer.stop()  # nothing under way: no change
    assert timer.seconds == {"plan": 1.75, "execute": 2.5}
