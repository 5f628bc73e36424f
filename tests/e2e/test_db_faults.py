"""Database faults under a running ``batch run``, each followed by an immediate rerun (issue 28).

Restart, crash (postmaster SIGKILL) and pause (SIGSTOP) of the journal's server, and a killed job: never
two runs at once, never "in progress 0" while payouts are stranded, nothing paid twice, every payout
counted in one report only.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psutil
import pytest

from batch.adapters.journal import Journal
from batch.adapters.journal.bus import BusStore
from batch.adapters.journal.leases import listener_lease
from batch.adapters.migrations import migrate
from batch.adapters.postgres import JOURNAL_DB, Dsns, ensure_database, make_engine, with_database
from batch.service.heartbeat import Heartbeat
from tests.e2e.db_faults_support import FaultJob, FaultyServer, log_events, pristine_pgdata, rows
from tests.fixtures.sandbox import RunningSandbox

pytestmark = pytest.mark.slow

LOCKED, DONE = 75, (0, 3)


@pytest.fixture(scope="module")
def pristine() -> Iterator[Path]:
    """One initdb for the module: each test's server starts on a copy of this stopped, empty cluster."""
    data = pristine_pgdata()
    yield data
    shutil.rmtree(data.parent, ignore_errors=True)


@pytest.fixture
def job(dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path, pristine: Path) -> Iterator[FaultJob]:
    """A 30-portfolio book, InvestSuite answering after 150 ms, journal and ledger on a server of our own."""
    server = FaultyServer(pristine)
    try:
        sandbox.admin.set_faults(latency_ms=150)
        yield FaultJob(server, dsns.sandbox, sandbox.base_url, tmp_path)
    finally:
        server.close()


def _converge(job: FaultJob, first: int) -> list[int]:
    """Rerun until a run is not refused; returns the exit codes. The last one leaves nothing open, or says 3."""
    codes = [first]
    while codes[-1] == LOCKED and len(codes) < 20:
        time.sleep(1)
        codes.append(job.run().code)
    assert codes[-1] in DONE, codes
    if job.open_payouts():
        assert codes[-1] == 3, job.open_payouts()
    return codes


def test_killed_run_is_taken_over_at_once(job: FaultJob) -> None:
    """SIGKILL of the job mid-run: the immediate rerun takes its lease over and completes every payout."""
    first = job.start()
    job.wait_completed(3, first)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    rerun = job.run()
    assert rerun.code in DONE, rerun.stderr[-3000:]
    assert not job.open_payouts(), job.open_payouts()  # nothing stranded under the dead run's leases
    assert "lease.taken_over" in log_events(rerun.stderr)
    statuses = [status for status, _, _ in job.books()["runs"]]
    assert statuses[0] == "ABANDONED" and statuses[1].startswith("SUCCEEDED"), statuses
    job.assert_one_at_a_time()
    job.assert_paid_once()


def test_killed_run_and_workers_deposits_too_are_taken_over_at_once(
    dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path, pristine: Path
) -> None:
    """SIGKILL of a run with two workers (withdrawals and deposits): the rerun releases every lease the dead
    processes held, whatever the flow, and drives both flows to the end (issue 26, item 3)."""
    server = FaultyServer(pristine)
    try:
        sandbox.admin.set_faults(latency_ms=150)
        job = FaultJob(server, dsns.sandbox, sandbox.base_url, tmp_path, deposits=True, workers=2)
        first = job.start()
        job.wait_completed(6, first)
        os.killpg(first.pid, signal.SIGKILL)  # the planner and its workers
        first.communicate()
        rerun = job.run()
        assert rerun.code in DONE, rerun.stderr[-3000:]
        assert not job.open_payouts(), job.open_payouts()
        flows = dict(rows(job.dsns.journal, "SELECT flow, count(*) FROM batch.payouts GROUP BY flow"))
        assert flows.get("DEPOSIT") and flows.get("WITHDRAWAL"), flows
        assert job.deposit_book is not None
        failed = [(name, detail) for name, ok, detail in job.deposit_book.checks() if not ok]
        assert not failed, failed
        job.assert_paid_once()
    finally:
        server.close()


def test_dead_worker_leases_are_released_by_its_planner(
    dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path, pristine: Path
) -> None:
    """A worker process SIGKILLed mid-run: its planner releases its leases once the workers exited and
    finishes those payouts itself; the run leaves nothing open (never "in progress 0" while stranded)."""
    server = FaultyServer(pristine)
    try:
        sandbox.admin.set_faults(latency_ms=150)
        job = FaultJob(server, dsns.sandbox, sandbox.base_url, tmp_path, workers=2)
        first = job.start()
        job.wait_completed(2, first)
        workers = [p for p in psutil.Process(first.pid).children() if "worker" in p.cmdline()]
        assert workers, "the planner started no worker"
        owner = f"%:{workers[0].pid}:worker"
        deadline = time.monotonic() + 30
        while not rows(job.dsns.journal, "SELECT 1 FROM batch.payouts WHERE lease_owner LIKE %s", [owner]):
            assert time.monotonic() < deadline, "the worker never held a payout"
            time.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)
        outcome = job.finish(first)
        assert outcome.code in DONE, outcome.stderr[-3000:]
        assert "run.worker_leases_released" in log_events(outcome.stderr)  # it held claims when it died
        assert not job.open_payouts(), job.open_payouts()
        job.assert_paid_once()
    finally:
        server.close()


def _one_run_through(job: FaultJob, fault: str) -> None:
    """The fault mid-run, a rerun right after it. Either the first run comes back (same lease, same token),
    the rerun is refused (75) and the first finishes with the exit code its run row records; or the first
    one could not reach its journal in time and failed (exit 1, payouts resumable) and the rerun took over.
    Never both at once; then nothing is left open and nothing is paid twice."""
    first = job.start()
    job.wait_completed(3, first)
    if fault == "restart":
        job.server.restart()
    else:
        job.server.crash_and_start()
    second = job.run()
    outcome = job.finish(first)
    assert "lease.renew_failed" in log_events(outcome.stderr)  # it did lose the journal for a while
    if outcome.code in DONE:
        assert second.code == LOCKED, second.stderr[-3000:]
        status, exit_code, _ = job.books()["runs"][0]
        assert exit_code == outcome.code and status.startswith("SUCCEEDED"), (status, exit_code)  # one exit code
    else:
        assert outcome.code == 1, outcome.stderr[-3000:]
    _converge(job, job.run().code if second.code == LOCKED else second.code)
    assert not job.open_payouts()
    job.assert_one_at_a_time()
    job.assert_paid_once()


def test_database_restart_keeps_one_run(job: FaultJob) -> None:
    """db stop/start mid-run: the run re-takes its lease, a rerun started right after is refused (75)."""
    _one_run_through(job, "restart")


def test_postmaster_crash_then_immediate_rerun(job: FaultJob) -> None:
    """kill -9 of the postmaster mid-run: no second run beside the first, every payout completed once."""
    _one_run_through(job, "crash")


def test_paused_database_fails_bounded_then_rerun_completes(job: FaultJob) -> None:
    """SIGSTOP of the server: a warning within seconds, exit 1 within the abort bound, the rerun completes."""
    first = job.start()
    job.wait_completed(3, first)
    job.server.pause()
    paused_at = time.monotonic()
    try:
        outcome = job.finish(first, timeout=60)
        stopped_after = time.monotonic() - paused_at
    finally:
        job.server.resume()
    assert outcome.code == 1, outcome.stderr[-3000:]
    assert stopped_after < 30, stopped_after  # journal_stall_abort_seconds = 15
    events = log_events(outcome.stderr)
    assert "journal.unresponsive" in events and "run.aborted_journal_hung" in events, events[-20:]
    rerun = job.run()  # the lease expired while paused (ttl 12 s): taken over at once
    assert rerun.code in DONE, rerun.stderr[-3000:]
    assert not job.open_payouts(), job.open_payouts()
    runs = rows(job.dsns.journal, "SELECT status, fenced_at IS NOT NULL FROM batch.runs ORDER BY started_at")
    assert runs[0] == ("ABANDONED", True), runs
    job.assert_one_at_a_time()
    job.assert_paid_once()


def test_listener_instance_lease_survives_a_journal_restart(tmp_path: Path, pristine: Path) -> None:
    """A listener's instance lease across a journal restart: its heartbeat takes the lock again, no sweep
    (its own or another instance's) marks its live run ABANDONED, and the lease is never lost."""
    server = FaultyServer(pristine)
    engine = None
    try:
        ensure_database(server.admin, JOURNAL_DB)
        dsn = with_database(server.admin, JOURNAL_DB)
        engine = make_engine(dsn, pool_size=2)
        migrate(engine, "journal")
        journal, store = Journal(engine), BusStore(engine)
        instance, run_id = uuid.uuid4().hex, uuid.uuid4()
        aborted: list[int] = []
        with store.instance_lock(instance, ttl_seconds=12) as lease:
            beat = Heartbeat(lease, interval=0.3, warn_after=1, lost_after=9, abort_after=20, abort=aborted.append)
            beat.start()
            journal.start_run(
                run_id=run_id,
                business_date=date(2026, 12, 4),
                trigger="listener",
                operator="listener",
                dry_run=False,
                parameters={"role": "listener", "instance": instance, "worker": f"listener:x:1:{instance[:8]}"},
                software_version="test",
                config_digest="x",
                host="x",
                pid=1,
            )
            server.restart()
            deadline = time.monotonic() + 15
            query = "SELECT l.lock_epoch = pg_postmaster_start_time() FROM batch.leases l WHERE l.name = %s"
            while not rows(dsn, query, [listener_lease(instance)])[0][0]:
                assert time.monotonic() < deadline, "the heartbeat did not take the lock again"
                time.sleep(0.2)
            assert store.abandon_dead_listeners("listener", instance) == ([], [])  # its own sweep
            assert store.abandon_dead_listeners("listener", uuid.uuid4().hex) == ([], [])  # another instance's
            assert not beat.lost.is_set() and not aborted
            beat.stop()
        run = journal.get_run(run_id)
        assert run is not None and run["status"] == "RUNNING" and run["fenced_at"] is None
    finally:
        if engine is not None:
            engine.dispose()
        server.close()
