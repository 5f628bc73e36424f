"""Concurrent ``batch run`` processes: the run lock lets exactly one proceed; the others only record a refusal."""

from __future__ import annotations

import json
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.seed import libpq_dsn, seed_scenario
from tests.e2e.chaos_support import EXIT_DONE, EXIT_LOCKED, batch_command, batch_env, write_config
from tests.fixtures.sandbox import RunningSandbox

pytestmark = pytest.mark.slow

DATE = date(2026, 11, 20)


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_dsn(dsn)) as conn:
        return conn.execute(sql).fetchall()


def _start_together(config: Path, cwd: Path, dates: list[date]) -> list[tuple[int, int, str]]:
    """Start one ``batch run`` per date back to back (no waiting in between); return (pid, exit code, stdout)."""
    processes = [
        subprocess.Popen(
            batch_command(config, "run", "--date", d.isoformat(), "--trigger", "test"),
            env=batch_env(),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for d in dates
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=180)
        results.append((process.pid, process.returncode, out.decode("utf-8", "replace")))
    return results


@pytest.fixture
def slow_job(dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path) -> Path:
    """A seeded sandbox answering every request after 50 ms (so the first run is still running), and a config."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=120, rng_seed=5)
    sandbox.admin.set_faults(latency_ms=50)
    return write_config(tmp_path / "job.toml", dsns, sandbox.base_url, tmp_path / "reports")


def _refusals(dsns: Dsns) -> list[dict[str, Any]]:
    rows = _rows(dsns.journal, "SELECT run_id, details FROM batch.audit_log WHERE action = 'run.refused' ORDER BY seq")
    assert all(run_id is None for run_id, _ in rows)
    return [json.loads(details) for _, details in rows]


def _assert_only_run_wrote(dsns: Dsns, winner_date: date) -> None:
    runs = _rows(dsns.journal, "SELECT id, business_date, status FROM batch.runs")
    assert len(runs) == 1, runs
    run_id, business_date, status = runs[0]
    assert business_date == winner_date
    assert status in ("SUCCEEDED", "SUCCEEDED_WITH_EXCEPTIONS")
    for table in ("decisions", "payouts", "step_attempts"):
        foreign = _rows(dsns.journal, f"SELECT count(*) FROM batch.{table} WHERE run_id IS DISTINCT FROM '{run_id}'")
        assert foreign[0][0] == 0, table
    assert _rows(dsns.journal, "SELECT count(*) FROM batch.decisions")[0][0] > 0
    actions = _rows(
        dsns.journal, f"SELECT DISTINCT action FROM batch.audit_log WHERE run_id IS DISTINCT FROM '{run_id}'"
    )
    assert {a for (a,) in actions} == {"run.refused"}


def test_three_runs_of_one_date_at_once_one_proceeds(slow_job: Path, dsns: Dsns, tmp_path: Path) -> None:
    """Three runs for the same date started at once: one runs, two exit 75 and only record their refusal."""
    results = _start_together(slow_job, tmp_path, [DATE, DATE, DATE])
    codes = sorted(code for _, code, _ in results)
    assert codes[0] in EXIT_DONE and codes[1:] == [EXIT_LOCKED, EXIT_LOCKED], results
    refused_pids = {pid for pid, code, _ in results if code == EXIT_LOCKED}
    refusals = _refusals(dsns)
    assert len(refusals) == 2
    assert {r["pid"] for r in refusals} == refused_pids
    assert {r["business_date"] for r in refusals} == {DATE.isoformat()}
    _assert_only_run_wrote(dsns, DATE)


def test_two_dates_at_once_the_lock_is_per_job(slow_job: Path, dsns: Dsns, tmp_path: Path) -> None:
    """Runs for two different business dates started at once: one proceeds, the other exits 75 (one lock per job)."""
    other = date(2026, 11, 21)
    results = _start_together(slow_job, tmp_path, [DATE, other])
    by_date = dict(zip([DATE, other], results, strict=True))
    winners = [d for d, (_, code, _) in by_date.items() if code in EXIT_DONE]
    losers = [d for d, (_, code, _) in by_date.items() if code == EXIT_LOCKED]
    assert len(winners) == 1 and len(losers) == 1, results
    refusals = _refusals(dsns)
    assert len(refusals) == 1
    assert refusals[0]["business_date"] == losers[0].isoformat()
    assert refusals[0]["pid"] == by_date[losers[0]][0]
    _assert_only_run_wrote(dsns, winners[0])
