"""Leases with fencing tokens on a real journal (migration 0012): take-over, fencing, listeners, in progress."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.journal import Journal
from batch.adapters.journal.bus import BusStore
from batch.adapters.journal.leases import RUN_LEASE, LeaseSession, listener_lease
from batch.adapters.postgres import Dsns
from batch.domain.lease import Verdict
from batch.domain.payout import PayoutState
from batch.errors import FenceLostError, RunLockedError
from batch.sandbox.seed import libpq_dsn
from batch.service.nightly.run import ExitCode, RunRequest, run_job
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.payout_support import BUSINESS_DATE, add_customer, app_for, make_settings


def _start_run(journal: Journal, run_id: uuid.UUID, *, trigger: str = "test", **parameters: Any) -> None:
    journal.start_run(
        run_id=run_id,
        business_date=date(2026, 3, 2),
        trigger=trigger,
        operator="itest",
        dry_run=False,
        parameters=parameters,
        software_version="test",
        config_digest="x",
        host="itest-host",
        pid=1,
    )


def _expire(engine: Engine, name: str) -> None:
    """The lease's heartbeat ran out (its holder stopped renewing)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE batch.leases SET expires_at = now() - interval '1 second' WHERE name = :n"), {"n": name}
        )


def _session(engine: Engine, name: str = RUN_LEASE, host: str = "node-a", pid: int = 111) -> LeaseSession:
    return LeaseSession(engine, name, ttl_seconds=60, host=host, pid=pid, alive=lambda _pid: True)


def test_contender_refused_while_the_holder_lives_then_takes_over_when_its_heartbeat_expired(
    journal_engine: Engine,
) -> None:
    """A second run is refused while the holder's session lives, and still once that session is gone (a live
    holder's dropped connection looks the same); once the heartbeat expired the lease is taken over, the old run
    fenced (ABANDONED) and its heartbeat finds the lease lost."""
    journal = Journal(journal_engine)
    old_run, new_run = uuid.uuid4(), uuid.uuid4()
    holder = _session(journal_engine)
    first = holder.acquire(old_run, actor="itest")
    assert first.verdict is Verdict.FREE
    _start_run(journal, old_run)
    contender = _session(journal_engine, host="node-b", pid=222)
    with pytest.raises(RunLockedError):
        contender.acquire(new_run, actor="itest")
    assert holder.renew()
    holder._drop()  # its connection (and session lock) is gone: no proof that the process died
    with pytest.raises(RunLockedError):
        contender.acquire(new_run, actor="itest")
    _expire(journal_engine, RUN_LEASE)  # the holder stopped renewing
    taken = contender.acquire(new_run, actor="itest")
    assert taken.verdict is Verdict.EXPIRED and taken.fenced_run == old_run and taken.token != first.token
    assert not holder.renew()  # the old holder's heartbeat: lost
    run = journal.get_run(old_run)
    assert run is not None and run["status"] == "ABANDONED" and run["fenced_at"] is not None
    with pytest.raises(FenceLostError):  # whatever it still believes, it can claim nothing more
        journal.claim_payouts(
            worker="old", limit=1, lease_seconds=60, states=[PayoutState.PLANNED], not_stalled_in=old_run
        )
    contender.release()
    holder.release()  # never raises, even on a lease that is no longer its own


def test_step_functions_refuse_a_fenced_run(journal_engine: Engine, dsns: Dsns) -> None:
    """batch.step_begin and batch.step_finish check the fence in the same statement (SQLSTATE BJ003)."""
    journal = Journal(journal_engine)
    run_id = uuid.uuid4()
    _start_run(journal, run_id)
    with journal_engine.begin() as conn:
        conn.execute(sa.text("UPDATE batch.runs SET fenced_at = now() WHERE id = :id"), {"id": run_id})
    with psycopg.connect(libpq_dsn(dsns.journal), autocommit=True) as conn:
        with pytest.raises(psycopg.DatabaseError) as begin:
            conn.execute(
                "SELECT batch.step_begin(%s, 'PLANNED', 'w', 60, %s, 'LEDGER_POST', '{}', '{}')",
                [uuid.uuid4(), run_id],
            )
        assert begin.value.sqlstate == "BJ003"
        with pytest.raises(psycopg.DatabaseError) as finish:
            conn.execute(
                "SELECT batch.step_finish(1, 'OK', '{}', %s, 'PLANNED', 'w', '{}', '{}', NULL,"
                " 'a', 'x', %s, 'P', '{}')",
                [uuid.uuid4(), run_id],
            )
        assert finish.value.sqlstate == "BJ003"


def test_listener_sweep_spares_its_own_run_and_a_holder_back_from_a_restart(journal_engine: Engine) -> None:
    """The sweep never abandons the sweeper's own run; a lease whose lock predates the server's start (a
    restart) stays live; one whose heartbeat expired is abandoned, fenced and released."""
    journal = Journal(journal_engine)
    store = BusStore(journal_engine)
    instances = {"own": uuid.uuid4().hex, "restarted": uuid.uuid4().hex, "dead": uuid.uuid4().hex}
    runs = {}
    for key, instance in instances.items():
        runs[key] = uuid.uuid4()
        session = _session(journal_engine, listener_lease(instance), host="elsewhere")
        session.acquire(None, actor="itest")
        _start_run(journal, runs[key], trigger="listener", instance=instance, worker=f"listener:{key}")
        session._drop()  # no session lock held by anyone now
    with journal_engine.begin() as conn:  # as if it locked before the server restarted
        conn.execute(
            sa.text("UPDATE batch.leases SET lock_epoch = '2000-01-01' WHERE name = :n"),
            {"n": listener_lease(instances["restarted"])},
        )
    assert store.abandon_dead_listeners("itest", instances["own"])[0] == []  # a gone session is no proof
    _expire(journal_engine, listener_lease(instances["dead"]))
    abandoned, _ = store.abandon_dead_listeners("itest", instances["own"])
    assert abandoned == [runs["dead"]]
    statuses = {key: (journal.get_run(run) or {}).get("status") for key, run in runs.items()}
    assert statuses == {"own": "RUNNING", "restarted": "RUNNING", "dead": "ABANDONED"}
    with journal_engine.connect() as conn:
        released = conn.execute(
            sa.text("SELECT released_at IS NOT NULL FROM batch.leases WHERE name = :n"),
            {"n": listener_lease(instances["dead"])},
        ).scalar_one()
    assert released


def test_open_payout_leased_by_a_live_process_is_in_progress_and_exit_3(
    dsns: Dsns, sandbox: RunningSandbox, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """A run that finds an open payout it cannot claim (a live listener holds it) lists it and exits 3."""
    add_customer(sandbox_store, dsns)
    with app_for(make_settings(sandbox.base_url, tmp_path / "reports"), dsns) as app:
        planned_only = threading.Event()
        planned_only.set()  # plan, execute nothing: the payout stays PLANNED
        run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"), stop=planned_only)
        with app.journal_engine.begin() as conn:
            held = conn.execute(
                sa.text(
                    "UPDATE batch.payouts SET lease_owner = 'listener:elsewhere:9:abcd',"
                    " lease_expires_at = now() + interval '5 minutes' WHERE state = 'PLANNED' RETURNING id"
                )
            ).scalar_one()
        result = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))
        assert result.exit_code is ExitCode.ATTENTION, result.error
        assert [row["id"] for row in result.in_progress_elsewhere] == [held]
        assert result.run_id is not None
        run = app.journal.get_run(result.run_id)
        assert run is not None
        summary = run["summary"] if isinstance(run["summary"], dict) else json.loads(run["summary"])
        assert str(held) in summary["in_progress_elsewhere"][0]


def test_nightly_run_takes_over_a_dead_listeners_payouts_at_once(
    dsns: Dsns, sandbox: RunningSandbox, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """A payout leased by a listener that died (its heartbeat expired) is released by the next nightly run and
    paid by it, the listener's run marked ABANDONED: no wait of the payout's lease_seconds."""
    add_customer(sandbox_store, dsns)
    with app_for(make_settings(sandbox.base_url, tmp_path / "reports"), dsns) as app:
        planned_only = threading.Event()
        planned_only.set()
        run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"), stop=planned_only)
        instance, listener_run = uuid.uuid4().hex, uuid.uuid4()
        worker = f"listener:elsewhere:9:{instance[:8]}"
        dead = _session(app.journal_engine, listener_lease(instance), host="elsewhere")
        dead.acquire(None, actor="itest")
        _start_run(app.journal, listener_run, trigger="listener", instance=instance, worker=worker)
        dead._drop()  # the listener process died: its session (and lock) went with it
        _expire(app.journal_engine, listener_lease(instance))  # and its heartbeat ran out
        with app.journal_engine.begin() as conn:
            held = conn.execute(
                sa.text(
                    "UPDATE batch.payouts SET lease_owner = :w, lease_expires_at = now() + interval '5 minutes'"
                    " WHERE state = 'PLANNED' RETURNING id"
                ),
                {"w": worker},
            ).scalar_one()
        result = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))
        assert result.exit_code is ExitCode.OK, result.error
        payout = app.journal.get_payout(held)
        assert payout is not None and payout.state is PayoutState.COMPLETED
        run = app.journal.get_run(listener_run)
        assert run is not None and run["status"] == "ABANDONED" and run["fenced_at"] is not None


def test_next_run_releases_payout_leases_of_a_failed_runs_gone_process_and_pays_them(
    dsns: Dsns, sandbox: RunningSandbox, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """A run that failed while its journal was away (its row FAILED, the run lease free) could not release its
    payout's lease: the next run releases the leases of gone processes of this host at once and pays the payout,
    instead of exiting 3 until the payout lease runs out."""
    add_customer(sandbox_store, dsns)
    with app_for(make_settings(sandbox.base_url, tmp_path / "reports"), dsns) as app:
        planned_only = threading.Event()
        planned_only.set()
        first = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"), stop=planned_only)
        gone = _gone_pid()
        with app.journal_engine.begin() as conn:
            conn.execute(sa.text("UPDATE batch.runs SET status = 'FAILED' WHERE id = :id"), {"id": first.run_id})
            held = conn.execute(
                sa.text(
                    "UPDATE batch.payouts SET lease_owner = :w, lease_expires_at = now() + interval '5 minutes'"
                    " WHERE state = 'PLANNED' RETURNING id"
                ),
                {"w": f"{socket.gethostname()}:{gone}:deadbeef"},
            ).scalar_one()
        result = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))
        assert result.exit_code is ExitCode.OK, (result.error, result.in_progress_elsewhere)
        payout = app.journal.get_payout(held)
        assert payout is not None and payout.state is PayoutState.COMPLETED


def _gone_pid() -> int:
    """A pid no process of this host has now."""
    pid = max(psutil.pids()) + 1000
    while psutil.pid_exists(pid):
        pid += 1
    return pid


def test_a_run_starts_only_the_worker_processes_the_database_server_can_connect(
    dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """16 processes of 1,000 threads each cannot connect to one server: the run caps them (at one, the planner);
    3 processes of 2 threads fit the test server and are kept."""
    from batch.service.nightly.capacity import fit_processes  # noqa: PLC0415

    huge = make_settings(sandbox.base_url, tmp_path / "reports")
    huge = huge.model_copy(update={"run": huge.run.model_copy(update={"concurrency": 1000})})
    with app_for(huge, dsns) as app:
        assert fit_processes(app, 16) == 1
    small = make_settings(sandbox.base_url, tmp_path / "reports")
    small = small.model_copy(update={"run": small.run.model_copy(update={"concurrency": 2})})
    with app_for(small, dsns) as app:
        assert fit_processes(app, 3) == 3
