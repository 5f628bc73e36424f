"""The lease rules (who may take the right to run) and the heartbeat/watchdog, without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import ValidationError

from batch.domain.lease import Facts, LeaseRow, Verdict, judge
from batch.entrypoints.nightly import print_run_result
from batch.errors import TransientError
from batch.service.heartbeat import Heartbeat
from batch.service.nightly.run import ExitCode, RunResult
from batch.settings import DatabaseSettings, RunSettings, Settings

NOW = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
BOOT = NOW - timedelta(hours=1)
RESTARTED = NOW - timedelta(seconds=3)


def _row(**kw: object) -> LeaseRow:
    base: dict[str, object] = {
        "run_id": uuid.uuid4(),
        "run_status": "RUNNING",
        "host": "node-a",
        "pid": 4242,
        "token": 7,
        "expires_at": NOW + timedelta(seconds=40),
        "lock_epoch": BOOT,
    }
    return LeaseRow(**(base | kw))  # type: ignore[arg-type]


def _facts(**kw: object) -> Facts:
    base: dict[str, object] = {"now": NOW, "got_session_lock": True, "server_epoch": BOOT, "host": "node-b"}
    return Facts(**(base | kw))  # type: ignore[arg-type]


def test_a_live_session_lock_always_refuses() -> None:
    """Someone holding the session lock is alive: the lease is HELD whatever the row says."""
    assert judge(None, _facts(got_session_lock=False))[0] is Verdict.HELD
    assert judge(_row(expires_at=NOW - timedelta(seconds=1)), _facts(got_session_lock=False))[0] is Verdict.HELD


def test_no_holder_or_a_finished_run_is_free() -> None:
    """A released lease, or one whose run finished, is FREE (no take-over, nobody to fence)."""
    assert judge(None, _facts())[0] is Verdict.FREE
    assert judge(_row(run_status="SUCCEEDED"), _facts())[0] is Verdict.FREE
    assert judge(_row(run_id=None, run_status=None), _facts(server_epoch=RESTARTED))[0] is Verdict.HELD
    assert not Verdict.FREE.takes_over


def test_an_expired_heartbeat_is_taken_over() -> None:
    """A holder that stopped renewing is taken over (and fenced)."""
    verdict, _ = judge(_row(expires_at=NOW - timedelta(seconds=1)), _facts())
    assert verdict is Verdict.EXPIRED and verdict.takes_over


def test_a_lost_session_alone_is_no_proof_of_death() -> None:
    """A free lock without a restart may be a live holder's dropped connection: HELD until its heartbeat expires."""
    verdict, why = judge(_row(lock_epoch=BOOT), _facts(server_epoch=BOOT))
    assert verdict is Verdict.HELD and "held by run" in why


def test_a_restart_gives_the_holder_time_to_come_back() -> None:
    """After a database restart the free lock proves nothing: a live lease from another host stays HELD."""
    verdict, why = judge(_row(lock_epoch=BOOT), _facts(server_epoch=RESTARTED))
    assert verdict is Verdict.HELD and "held by run" in why


def test_a_dead_process_on_this_host_is_taken_over_after_a_restart() -> None:
    """Same host and the holder's pid is gone: DEAD even when the server restarted since it locked."""
    facts = _facts(server_epoch=RESTARTED, host="node-a", holder_pid_alive=False)
    assert judge(_row(), facts)[0] is Verdict.DEAD
    assert judge(_row(), _facts(server_epoch=RESTARTED, host="node-a", holder_pid_alive=True))[0] is Verdict.HELD


class _Lease:
    def __init__(self, answers: list[object]) -> None:
        self.answers = answers

    def renew(self) -> bool:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_taken_over_is_lost_at_once() -> None:
    """A renewal that finds the lease gone marks it lost and calls back (the run stops)."""
    reasons: list[str] = []
    beat = Heartbeat(
        _Lease([True, False]), interval=1, warn_after=5, lost_after=45, abort_after=90, on_lost=reasons.append
    )
    beat.beat_once()
    assert not beat.lost.is_set()
    beat.beat_once()
    assert beat.lost.is_set() and reasons and "taken over" in reasons[0]


def test_watchdog_warns_then_self_fences_then_aborts() -> None:
    """A journal that does not answer: a warning after warn_after, lost after lost_after, exit 1 after abort_after."""
    clock, exits = _Clock(), list[int]()
    beat = Heartbeat(
        _Lease([TransientError("journal database unavailable")]),
        interval=1,
        warn_after=5,
        lost_after=45,
        abort_after=90,
        abort=exits.append,
        clock=clock,
    )
    beat.beat_once()  # a failed renewal is logged, not fatal
    clock.now = 4.0
    beat.check_once()
    assert not beat._warned
    clock.now = 6.0
    beat.check_once()
    assert beat._warned and not beat.lost.is_set()
    clock.now = 46.0
    beat.check_once()
    assert beat.lost.is_set() and "does not answer" in beat.lost_reason and not exits
    clock.now = 91.0
    beat.check_once()
    assert exits == [1]


def test_watchdog_does_not_abort_a_run_that_was_taken_over() -> None:
    """Taken over while the journal answers: the run stops by itself, the watchdog never kills it."""
    clock, exits = _Clock(), list[int]()
    beat = Heartbeat(
        _Lease([False]), interval=1, warn_after=5, lost_after=45, abort_after=90, abort=exits.append, clock=clock
    )
    beat.beat_once()
    clock.now = 200.0
    beat.check_once()
    assert beat.lost.is_set() and exits == []


def test_a_renewal_after_a_stall_says_the_journal_is_back() -> None:
    """After a warned stall a good renewal clears the warning (the holder came back after a restart)."""
    clock = _Clock()
    beat = Heartbeat(
        _Lease([TransientError("down"), True]), interval=1, warn_after=5, lost_after=45, abort_after=90, clock=clock
    )
    beat.beat_once()
    clock.now = 6.0
    beat.check_once()
    assert beat._warned
    beat.beat_once()
    assert not beat._warned and not beat.lost.is_set()


def test_lease_timings_must_nest() -> None:
    """Heartbeat, warning, self-fence and abort must come in that order, or the settings are refused."""

    Settings(run=RunSettings())  # the defaults a bank keeps
    with pytest.raises(ValidationError, match="journal_stall_warn_seconds"):
        Settings(run=RunSettings(lease_ttl_seconds=6, journal_stall_warn_seconds=5))
    with pytest.raises(ValidationError, match="journal_stall_abort_seconds"):
        Settings(run=RunSettings(lease_ttl_seconds=60, journal_stall_abort_seconds=30))


def test_database_timeouts_become_libpq_parameters() -> None:
    """connect, statement and keepalive settings reach every connection of the job's engines."""
    options = DatabaseSettings(statement_timeout_seconds=30, keepalives_idle_seconds=20).libpq_options()
    assert options == {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 20,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "options": "-c statement_timeout=30000",
    }
    assert "options" not in DatabaseSettings(statement_timeout_seconds=0).libpq_options()


def test_run_summary_lists_operations_in_progress_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    """The run's stdout names each open operation another live process holds, with the exit code 3."""
    row: dict[str, object] = {
        "flow": "DEPOSIT",
        "id": "op-1",
        "portfolio_id": "P1",
        "state": "LEDGER_MOVED",
        "lease_owner": "listener:h:9:ab",
    }
    result = RunResult(None, date(2026, 12, 4), ExitCode.ATTENTION, "SUCCEEDED_WITH_EXCEPTIONS")
    result.in_progress_elsewhere = [row]
    print_run_result(result)
    out = capsys.readouterr().out
    assert "in progress elsewhere: 1" in out
    assert "DEPOSIT op-1 P1 LEDGER_MOVED leased by listener:h:9:ab" in out
    assert "exit code 3" in out
