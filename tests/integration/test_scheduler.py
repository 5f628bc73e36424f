"""The resident scheduler (``batch schedule``): APScheduler settings, the same run service, graceful stop.

Sub-minute firings use ``schedule.cron`` with six fields (seconds first), a time a second or two ahead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
)
from apscheduler.schedulers.blocking import BlockingScheduler

from batch.adapters.postgres import Dsns
from batch.entrypoints.scheduler import build_scheduler, make_trigger
from batch.errors import ConfigError
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.seed import libpq_dsn, seed_scenario
from batch.service.nightly.run import RunResult
from batch.settings import Settings, load_settings
from tests.fixtures.sandbox import RunningSandbox

ZONE = "Europe/Brussels"
ROOT = Path(__file__).resolve().parents[2]


def _cron_in(seconds: float) -> str:
    """A six-field cron expression firing once, ``seconds`` from now (in the schedule's zone)."""
    at = datetime.now(ZoneInfo(ZONE)) + timedelta(seconds=seconds)
    return f"{at.second} {at.minute} {at.hour} {at.day} {at.month} *"


def _write_config(
    tmp_path: Path,
    dsns: Dsns | None = None,
    base_url: str = "http://127.0.0.1:9",
    *,
    cron: str = "30 1 * * *",
    misfire_grace_seconds: int = 3600,
    concurrency: int = 8,
) -> Path:
    database = ""
    if dsns is not None:
        database = f'journal_dsn = "{dsns.journal}"\nledger_dsn = "{dsns.ledger}"\nsandbox_dsn = "{dsns.sandbox}"\n'
    path = tmp_path / "batch.toml"
    path.write_text(
        f"""
[database]
{database}data_dir = "{tmp_path / "pg"}"

[investsuite]
base_url = "{base_url}"
access_key_id = "{DEFAULT_ACCESS_KEY_ID}"
secret_access_key = "{DEFAULT_SECRET_ACCESS_KEY}"

[run]
timezone = "{ZONE}"
concurrency = {concurrency}
report_dir = "{tmp_path / "reports"}"
progress_interval_seconds = 60.0

[schedule]
cron = "{cron}"
timezone = "{ZONE}"
misfire_grace_seconds = {misfire_grace_seconds}
""",
        encoding="utf-8",
    )
    return path


def _settings(tmp_path: Path, **kwargs: Any) -> Settings:
    return load_settings(_write_config(tmp_path, **kwargs))


def _query(dsn: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_dsn(dsn)) as conn:
        return conn.execute(sql, params or []).fetchall()


class _Recorder:
    """Collects APScheduler events of the nightly job."""

    def __init__(self, scheduler: BlockingScheduler) -> None:
        self.events: list[JobEvent] = []
        self.done = threading.Event()
        scheduler.add_listener(
            self._on_event, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_ERROR
        )

    def _on_event(self, event: JobEvent) -> None:
        self.events.append(event)
        if event.code in (EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, EVENT_JOB_ERROR):
            self.done.set()

    def codes(self) -> list[int]:
        return [e.code for e in self.events]


@pytest.fixture
def start_scheduler() -> Iterator[Callable[..., BlockingScheduler]]:
    """Start a BlockingScheduler in a thread; shut it down (waiting for its job) after the test."""
    started: list[tuple[BlockingScheduler, threading.Thread]] = []

    def start(scheduler: BlockingScheduler, *, paused: bool = False) -> BlockingScheduler:
        thread = threading.Thread(target=lambda: scheduler.start(paused=paused), daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while not scheduler.running and time.monotonic() < deadline:
            time.sleep(0.01)
        started.append((scheduler, thread))
        return scheduler

    yield start
    for scheduler, thread in started:
        if scheduler.running:
            scheduler.shutdown(wait=True)
        thread.join(timeout=30)


def test_job_uses_the_configured_misfire_coalesce_and_single_instance(tmp_path: Path) -> None:
    """build_scheduler registers one job with the configured grace time, coalescing and max one instance."""
    settings = _settings(tmp_path, misfire_grace_seconds=900)
    scheduler = build_scheduler(settings, threading.Event(), job=lambda: None)
    (job,) = scheduler.get_jobs()
    assert job.id == "nightly-payout-run"
    assert job.misfire_grace_time == 900
    assert job.coalesce is True
    assert job.max_instances == 1
    assert str(scheduler.timezone) == ZONE


def test_five_and_six_field_cron_expressions(tmp_path: Path) -> None:
    """schedule.cron takes a crontab line, or six fields with seconds first; anything else is a config error."""
    five = make_trigger(_settings(tmp_path, cron="30 1 * * *"))
    after = datetime(2026, 3, 1, 2, 0, tzinfo=ZoneInfo(ZONE))
    assert five.get_next_fire_time(None, after) == datetime(2026, 3, 2, 1, 30, tzinfo=ZoneInfo(ZONE))
    six = make_trigger(_settings(tmp_path, cron="*/15 * * * * *"))
    assert six.get_next_fire_time(None, after + timedelta(seconds=1)) == after + timedelta(seconds=15)
    with pytest.raises(ConfigError, match=r"invalid schedule\.cron"):
        make_trigger(_settings(tmp_path, cron="61 * * * *"))


def test_missed_firings_coalesce_into_one_run(tmp_path: Path, start_scheduler: Callable[..., Any]) -> None:
    """Firings missed while the scheduler could not run them (here: paused) run once, not once each."""
    calls: list[float] = []
    scheduler = build_scheduler(_settings(tmp_path, cron="* * * * * *"), threading.Event(), job=lambda: calls.append(1))
    recorder = _Recorder(scheduler)
    start_scheduler(scheduler, paused=True)
    time.sleep(3.3)  # three or four firings go by
    scheduler.resume()
    assert recorder.done.wait(5)
    time.sleep(0.2)  # the submission event is dispatched after the job was handed to the executor
    first = next(e for e in recorder.events if e.code == EVENT_JOB_SUBMITTED)
    assert len(first.scheduled_run_times) == 1  # coalesced
    assert calls[:1] == [1]
    assert EVENT_JOB_MISSED not in recorder.codes()


def test_a_firing_missed_beyond_the_grace_time_is_skipped(tmp_path: Path, start_scheduler: Callable[..., Any]) -> None:
    """A firing older than schedule.misfire_grace_seconds is reported missed and the job does not run."""
    calls: list[float] = []
    settings = _settings(tmp_path, cron=_cron_in(1.5), misfire_grace_seconds=1)
    scheduler = build_scheduler(settings, threading.Event(), job=lambda: calls.append(1))
    recorder = _Recorder(scheduler)
    start_scheduler(scheduler, paused=True)
    time.sleep(4.0)  # the firing is now ~2.5 s late, beyond the 1 s grace
    scheduler.resume()
    assert recorder.done.wait(5)
    assert EVENT_JOB_MISSED in recorder.codes()
    assert EVENT_JOB_EXECUTED not in recorder.codes()
    assert calls == []


def test_a_run_never_overlaps_itself(tmp_path: Path, start_scheduler: Callable[..., Any]) -> None:
    """With a firing every second and a job taking 1.5 s, at most one instance runs at a time."""
    lock = threading.Lock()
    running, peak, finished = [0], [0], [0]

    def slow_job() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(1.5)
        with lock:
            running[0] -= 1
            finished[0] += 1

    scheduler = build_scheduler(_settings(tmp_path, cron="* * * * * *"), threading.Event(), job=slow_job)
    start_scheduler(scheduler)
    time.sleep(4.2)
    scheduler.shutdown(wait=True)
    assert finished[0] >= 2
    assert peak[0] == 1


def test_scheduled_firing_runs_the_nightly_job(
    tmp_path: Path, dsns: Dsns, sandbox: RunningSandbox, start_scheduler: Callable[..., Any]
) -> None:
    """A firing calls the same run service as `batch run`: a finished run with trigger 'scheduler' pays out."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=40, rng_seed=3)
    settings = _settings(tmp_path, dsns=dsns, base_url=sandbox.base_url, cron="*/2 * * * * *")
    stop = threading.Event()
    scheduler = build_scheduler(settings, stop)  # the real job: scheduled_run
    recorder = _Recorder(scheduler)
    scheduler.add_listener(lambda _event: stop.set(), EVENT_JOB_EXECUTED)  # later firings do nothing
    start_scheduler(scheduler)
    assert recorder.done.wait(240), "the scheduled run did not finish"
    executed = [e for e in recorder.events if e.code == EVENT_JOB_EXECUTED]
    result = executed[0].retval
    assert isinstance(result, RunResult)
    rows = _query(dsns.journal, "SELECT id, trigger, operator, status, exit_code FROM batch.runs")
    assert rows == [(result.run_id, "scheduler", "scheduler", result.status, int(result.exit_code))]
    assert result.status in ("SUCCEEDED", "SUCCEEDED_WITH_EXCEPTIONS")
    pay = _query(dsns.journal, "SELECT count(*) FROM batch.decisions WHERE decision = 'PAY'")[0][0]
    completed = _query(dsns.journal, "SELECT count(*) FROM batch.payouts WHERE state = 'COMPLETED'")[0][0]
    assert pay > 0
    assert completed == pay
    assert (Path(tmp_path / "reports")).is_dir()


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigterm_stops_batch_schedule_gracefully(tmp_path: Path, dsns: Dsns, sandbox: RunningSandbox) -> None:
    """SIGTERM during a scheduled run: exit 0, the run is recorded finished, every started step has its outcome."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=70, rng_seed=5)
    sandbox.admin.set_faults(latency_ms=200)
    # every 3 s: the first firing after start-up runs; later ones find the run in flight (max one instance)
    config = _write_config(tmp_path, dsns, sandbox.base_url, cron="*/3 * * * * *", concurrency=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    log_path = tmp_path / "schedule.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "batch", "--config", str(config), "schedule"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        try:

            def some_payouts_past_the_ledger() -> bool:
                sql = "SELECT count(*) FROM batch.payouts WHERE state NOT IN ('PLANNED', 'HELD')"
                return process.poll() is None and _query(dsns.journal, sql)[0][0] >= 3

            _wait_for(some_payouts_past_the_ledger, 240, "payouts in flight")
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=180)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text(encoding="utf-8", errors="replace")
    assert code == 0, output
    assert "schedule.stopping" in output and "SIGTERM" in output
    ((status, exit_code, finished_at, trigger),) = _query(
        dsns.journal, "SELECT status, exit_code, finished_at, trigger FROM batch.runs"
    )
    assert trigger == "scheduler"
    assert status != "RUNNING" and finished_at is not None
    states = dict(_query(dsns.journal, "SELECT state, count(*) FROM batch.payouts GROUP BY state"))
    pay = _query(dsns.journal, "SELECT count(*) FROM batch.decisions WHERE decision = 'PAY'")[0][0]
    assert pay >= 40
    assert states.get("COMPLETED", 0) < pay, f"the run finished before SIGTERM: {states}"
    # the stop left work for the next run, so the run says so: interrupted, not a success
    assert (status, exit_code) == ("INTERRUPTED", 3), states
    # every step that was started has its outcome recorded, and nobody holds a lease any more
    assert _query(dsns.journal, "SELECT count(*) FROM batch.step_attempts WHERE outcome IS NULL")[0][0] == 0
    assert _query(dsns.journal, "SELECT count(*) FROM batch.payouts WHERE lease_owner IS NOT NULL")[0][0] == 0
    assert "NEEDS_ATTENTION" not in states
    # each payout that reached the ledger has exactly one transfer there
    posted = _query(dsns.journal, "SELECT id::text FROM batch.payouts WHERE ledger_reference IS NOT NULL")
    keys = [r[0] for r in posted]
    transfers = _query(
        dsns.ledger,
        "SELECT idempotency_key, count(*) FROM ledger.transfers WHERE idempotency_key = ANY(%s) GROUP BY 1",
        [keys],
    )
    assert sorted(transfers) == sorted((k, 1) for k in keys)
