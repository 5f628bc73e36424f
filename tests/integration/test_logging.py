"""Structured logs: JSON lines with the run's context bound, one summary per run, never a secret or an IBAN."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from pydantic import SecretStr

from batch.adapters.postgres import Dsns
from batch.bootstrap import build_app
from batch.logs import configure_logging, reset_logging
from batch.sandbox.seed import libpq_dsn, seed_scenario
from batch.sandbox.server import SandboxProcess
from batch.service.nightly.run import ExitCode, RunRequest, RunResult, run_job
from batch.settings import DatabaseSettings, InvestSuiteSettings, RunSettings, Settings

ACCESS_KEY_ID = "log-test-access-key-id"
SECRET_ACCESS_KEY = "Sx9-log-test-secret-access-key-7Qp"
LEDGER_PASSWORD = "Lp4-ledger-password-Zz"
IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}[A-Z0-9]{12,30}\b")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """configure_logging in JSON mode into a StringIO (restored to the CLI's default afterwards)."""
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    yield stream
    reset_logging()


@pytest.fixture
def debug_stream() -> Iterator[io.StringIO]:
    """The same at DEBUG: the per-payout events too."""
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    yield stream
    reset_logging()


def _events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _settings(base_url: str, tmp_path: Path, **database: Any) -> Settings:
    return Settings(
        database=DatabaseSettings(**database),
        investsuite=InvestSuiteSettings(
            base_url=base_url,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SecretStr(SECRET_ACCESS_KEY),
            max_attempts=2,
            max_retry_seconds=2.0,
        ),
        run=RunSettings(report_dir=tmp_path / "reports", concurrency=4),
    )


@pytest.fixture
def keyed_sandbox(dsns: Dsns) -> Iterator[SandboxProcess]:
    """A sandbox whose API key is this module's test secret."""
    with SandboxProcess(dsns.sandbox, access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY) as process:
        yield process


def _ibans(dsns: Dsns) -> list[str]:
    with psycopg.connect(libpq_dsn(dsns.sandbox)) as conn:
        rows = conn.execute(
            "SELECT doc->'counter_account'->>'bank_account_number' FROM sandbox.users"
            " WHERE doc->'counter_account'->>'bank_account_number' IS NOT NULL"
        ).fetchall()
    return [r[0] for r in rows]


def _seeded_run(tmp_path: Path, dsns: Dsns, sandbox: SandboxProcess) -> RunResult:
    """The same seeded book of 30, paid by one run."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=30, rng_seed=21)
    app = build_app(_settings(sandbox.base_url, tmp_path), dsns=dsns)
    try:
        return run_job(app, RunRequest(trigger="test", operator="log-test"))
    finally:
        app.close()


def test_a_run_logs_json_events_with_context_and_no_secrets(
    tmp_path: Path, dsns: Dsns, keyed_sandbox: SandboxProcess, log_stream: io.StringIO
) -> None:
    """At INFO every line is JSON with the run's context, no per-payout line, no secret, no IBAN."""
    result = _seeded_run(tmp_path, dsns, keyed_sandbox)
    assert result.exit_code in (ExitCode.OK, ExitCode.ATTENTION)
    assert result.report is not None and result.report.log_totals()["paid"] > 0
    events = _events(log_stream)  # raises if a line is not JSON
    run_id, business_date = str(result.run_id), str(result.business_date)

    names = [e["event"] for e in events]
    assert names[0] == "run.started"
    assert names.count("run.finished") == 1
    for event in events:
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", event["event"]), event["event"]
        assert {"level", "timestamp"} <= event.keys()
        assert (event.get("run_id"), event.get("business_date")) == (run_id, business_date), event
    per_payout = {"ledger.payout_posted", "payout.step_retry", "payout.cancelled_before_money_moved"}
    assert not per_payout & set(names), names  # per-payout lines are DEBUG

    text = log_stream.getvalue()
    assert SECRET_ACCESS_KEY not in text
    ibans = _ibans(dsns)
    assert ibans
    assert not [iban for iban in ibans if iban in text]
    assert not IBAN_RE.search(text)


def test_per_payout_events_at_debug_carry_the_payout_and_mask_accounts(
    tmp_path: Path, dsns: Dsns, keyed_sandbox: SandboxProcess, debug_stream: io.StringIO
) -> None:
    """At DEBUG every paid payout logs ledger.payout_posted with run, portfolio and payout ids; accounts masked."""
    result = _seeded_run(tmp_path, dsns, keyed_sandbox)
    events = _events(debug_stream)
    run_id = str(result.run_id)
    posted = [e for e in events if e["event"] == "ledger.payout_posted"]
    assert result.report is not None
    assert len(posted) == result.report.log_totals()["paid"] > 0
    for event in posted:
        assert (event["run_id"], event["level"]) == (run_id, "debug")
        assert event["portfolio_id"].startswith("P")
        assert event["payout_id"] == event["idempotency_key"]
        assert re.fullmatch(r"\*{4}[A-Z0-9]{4}", event["counterparty"])  # the counter account is masked
    text = debug_stream.getvalue()
    assert SECRET_ACCESS_KEY not in text
    assert not [iban for iban in _ibans(dsns) if iban in text]


def test_payout_events_carry_the_business_date(
    tmp_path: Path, dsns: Dsns, keyed_sandbox: SandboxProcess, debug_stream: io.StringIO
) -> None:
    """Events logged while driving a payout (in the executor's threads) carry the run's business_date too."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=25, rng_seed=24)
    app = build_app(_settings(keyed_sandbox.base_url, tmp_path), dsns=dsns)
    try:
        result = run_job(app, RunRequest(trigger="test", operator="log-test"))
    finally:
        app.close()
    posted = [e for e in _events(debug_stream) if e["event"] == "ledger.payout_posted"]
    assert posted
    assert {e.get("business_date") for e in posted} == {str(result.business_date)}


def test_one_summary_event_per_run_with_the_totals(
    tmp_path: Path, dsns: Dsns, keyed_sandbox: SandboxProcess, log_stream: io.StringIO
) -> None:
    """Two runs log two run.finished events, each with its own run_id, status, exit code and counts."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=30, rng_seed=22)
    app = build_app(_settings(keyed_sandbox.base_url, tmp_path), dsns=dsns)
    try:
        first = run_job(app, RunRequest(trigger="test", operator="log-test"))
        second = run_job(app, RunRequest(trigger="test", operator="log-test"))
    finally:
        app.close()
    summaries = [e for e in _events(log_stream) if e["event"] == "run.finished"]
    assert [s["run_id"] for s in summaries] == [str(first.run_id), str(second.run_id)]
    for summary, result in zip(summaries, (first, second), strict=True):
        assert summary["status"] == result.status
        assert summary["exit_code"] == int(result.exit_code)
        assert result.report is not None
        assert summary["candidates"] == result.report.candidates
        assert {"paid", "deferred", "skipped", "held", "in_progress"} <= summary.keys()
    assert summaries[0]["paid"] > 0
    assert summaries[1]["paid"] == 0  # nothing is paid twice


def test_a_failing_ledger_dsn_never_shows_its_password(
    tmp_path: Path, dsns: Dsns, keyed_sandbox: SandboxProcess, log_stream: io.StringIO
) -> None:
    """A run whose ledger cannot be reached fails with exit 1, and its logs never show the DSN's password."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=30, rng_seed=23)
    dead = Dsns(
        journal=dsns.journal,
        ledger=f"postgresql://payout_batch:{LEDGER_PASSWORD}@127.0.0.1:1/ledger?connect_timeout=1",
        sandbox=dsns.sandbox,
    )
    app = build_app(_settings(keyed_sandbox.base_url, tmp_path), dsns=dead)
    try:
        result = run_job(app, RunRequest(trigger="test", operator="log-test"))
    finally:
        app.close()
    assert result.exit_code == ExitCode.TECHNICAL_FAILURE
    assert LEDGER_PASSWORD not in (result.error or "")
    events = _events(log_stream)
    assert [e["status"] for e in events if e["event"] == "run.finished"] == ["FAILED"]
    assert LEDGER_PASSWORD not in log_stream.getvalue()


def test_redaction_masks_secret_keys_dsn_passwords_and_ibans(log_stream: io.StringIO) -> None:
    """Keys naming secrets are masked whole; DSN passwords and IBANs inside free text are masked."""
    log = structlog.get_logger("test")
    with structlog.contextvars.bound_contextvars(run_id="r-1", portfolio_id="P1"):
        log.warning(
            "test.leaky",
            secret_access_key=SECRET_ACCESS_KEY,
            journal_dsn="postgresql://u@h/db",
            authorization="Bearer abc.def",
            error=f"cannot connect to postgresql://payout_batch:{LEDGER_PASSWORD}@db.internal:5432/ledger",
            note="pay BE71096123456769 today",
        )
    (event,) = _events(log_stream)
    assert event["secret_access_key"] == event["journal_dsn"] == event["authorization"] == "***"
    assert event["error"] == "cannot connect to postgresql://payout_batch:***@db.internal:5432/ledger"
    assert "BE71096123456769" not in event["note"] and event["note"].startswith("pay BE71")
    assert (event["run_id"], event["portfolio_id"], event["level"]) == ("r-1", "P1", "warning")


_WRITER = """
import structlog
from batch.logs import configure_logging
configure_logging("INFO", "json")
log = structlog.get_logger("t")
for i in range(3000):
    log.info("test.line", writer={writer}, i=i, padding="x" * 300)
"""


def test_processes_sharing_stderr_write_whole_json_lines() -> None:
    """Several processes logging to one stderr pipe (a planner and its workers) never interleave inside a line."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader:
        processes = [
            subprocess.Popen([sys.executable, "-c", _WRITER.format(writer=n)], stderr=write_fd) for n in range(3)
        ]
        os.close(write_fd)
        data = reader.read().decode("utf-8")
    assert [p.wait(timeout=60) for p in processes] == [0, 0, 0]
    lines = data.splitlines()
    assert len(lines) == 9000
    assert Counter(json.loads(line)["writer"] for line in lines) == {0: 3000, 1: 3000, 2: 3000}
