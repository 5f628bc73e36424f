"""Helpers for the payout integration tests: wire the real app, add portfolios with ledger accounts,
plan and execute one run through the service layer (so a test can act between the two), read the journal.

Everything is real: PostgreSQL (journal, ledger, sandbox databases) and the sandbox over HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from pydantic import SecretStr

from batch.adapters.journal import PayoutRecord
from batch.adapters.ledger import LedgerAdmin
from batch.adapters.postgres import Dsns, make_engine
from batch.bootstrap import App, build_app
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.seed import libpq_dsn
from batch.sandbox.store import dumps
from batch.service.engine.steps import Engine, ExecutionStats
from batch.service.planning.withdrawals import Planner, PlanStats
from batch.service.reports.build import Report, build_report
from batch.settings import InvestSuiteSettings, RunSettings, Settings
from tests.fixtures.sandbox import RunningSandbox, SandboxState

BUSINESS_DATE = date(2026, 3, 2)
ACTOR = "itest"


def make_settings(
    base_url: str,
    report_dir: Path,
    *,
    access_key_id: str = DEFAULT_ACCESS_KEY_ID,
    secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY,
    **investsuite: Any,
) -> Settings:
    """Settings for a test: the sandbox's URL and key, fast retries, reports under ``report_dir``."""
    values: dict[str, Any] = {
        "base_url": base_url,
        "access_key_id": access_key_id,
        "secret_access_key": SecretStr(secret_access_key),
        "connect_timeout_seconds": 2.0,
        "read_timeout_seconds": 10.0,
        "max_attempts": 3,
        "max_retry_seconds": 5.0,
    }
    values.update(investsuite)
    return Settings(
        investsuite=InvestSuiteSettings(**values),
        run=RunSettings(report_dir=report_dir, concurrency=2, max_step_attempts=4),
    )


@contextmanager
def app_for(settings: Settings, dsns: Dsns) -> Iterator[App]:
    """The real composition root on the test's databases, closed afterwards."""
    app = build_app(settings, dsns=dsns)
    try:
        yield app
    finally:
        app.close()


@contextmanager
def faults_cleared(sandbox: RunningSandbox) -> Iterator[RunningSandbox]:
    """A shared sandbox for one test: no faults and fresh statistics, faults off again afterwards."""
    sandbox.admin.set_faults()
    sandbox.admin.reset_stats()
    try:
        yield sandbox
    finally:
        sandbox.admin.set_faults()


def add_customer(
    store: SandboxState,
    dsns: Dsns,
    *,
    divest: Any = Decimal("100.00"),
    cash: Decimal = Decimal("1000.00"),
    ledger_balance: Decimal | None = None,
    currency: str = "EUR",
    ledger_currency: str | None = None,
    **portfolio: Any,
) -> dict[str, Any]:
    """A sandbox portfolio (and owner) plus its funded ledger account; returns the portfolio document."""
    portfolio.setdefault("external_id", f"CASH-{uuid.uuid4().hex[:12].upper()}")  # unique across stores
    doc = store.add_portfolio(currency=currency, cash=cash, divest_amount=divest, **portfolio)
    engine = make_engine(dsns.ledger, pool_size=1)
    try:
        admin = LedgerAdmin(engine)
        ccy = ledger_currency or currency
        if len(ccy) == 3 and ccy.isalpha() and ccy.isupper():
            admin.ensure_clearing_account(ccy)
            admin.open_account(doc["external_id"], ccy, doc["owned_by_user_id"])
            balance = cash if ledger_balance is None else ledger_balance
            if balance > 0:
                admin.fund(doc["external_id"], balance, BUSINESS_DATE, f"fund-{doc['id']}")
    finally:
        engine.dispose()
    return doc


def ledger_admin_call(dsns: Dsns, fn: Callable[[LedgerAdmin], Any]) -> Any:
    engine = make_engine(dsns.ledger, pool_size=1)
    try:
        return fn(LedgerAdmin(engine))
    finally:
        engine.dispose()


def set_portfolio_doc(store: SandboxState, portfolio_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit a portfolio document directly in the sandbox database (an InvestSuite-side change)."""
    doc = store.portfolio(portfolio_id)
    assert doc is not None
    change(doc)
    with psycopg.connect(store.dsn) as conn:
        conn.execute("UPDATE sandbox.portfolios SET doc = %s::json WHERE id = %s", [dumps(doc), portfolio_id])


def set_portfolio_raw(store: SandboxState, portfolio_id: str, text: str) -> None:
    """Store raw JSON text as the portfolio document (for payloads our own codec would not write)."""
    with psycopg.connect(store.dsn) as conn:
        conn.execute("UPDATE sandbox.portfolios SET doc = %s::json WHERE id = %s", [text, portfolio_id])


def delete_portfolio(store: SandboxState, portfolio_id: str) -> None:
    with psycopg.connect(store.dsn) as conn:
        conn.execute("DELETE FROM sandbox.portfolios WHERE id = %s", [portfolio_id])


def portfolio_version(store: SandboxState, portfolio_id: str) -> int:
    rows = store._fetch("SELECT version FROM sandbox.portfolios WHERE id = %s", [portfolio_id])
    return int(rows[0][0])


def route_count(sandbox: RunningSandbox, route: str) -> int:
    """How many requests the sandbox answered on ``route`` (e.g. ``PATCH /portfolios/{id}/``)."""
    return int(sandbox.admin.stats()["by_route"].get(route, 0))


PATCH_ROUTE = "PATCH /portfolios/{id}/"
POST_TX_ROUTE = "POST /portfolios/{id}/transactions/"
POST_EVENT_ROUTE = "POST /events/withdraw/"


@dataclass
class OneRun:
    """One run driven through the service layer: start, plan, (act), execute, finish."""

    app: App
    run_id: uuid.UUID = field(default_factory=uuid.uuid4)
    sleep: Callable[[float], None] | None = None
    plan_stats: PlanStats | None = None

    def __post_init__(self) -> None:
        settings = self.app.settings
        self.app.journal.start_run(
            run_id=self.run_id,
            business_date=BUSINESS_DATE,
            trigger="test",
            operator=ACTOR,
            dry_run=False,
            parameters={"role": "planner"},
            software_version="test",
            config_digest=settings.digest(),
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def plan(self, portfolio_ids: list[str] | None = None) -> PlanStats:
        settings = self.app.settings
        planner = Planner(
            journal=self.app.journal,
            ledger=self.app.ledger,
            client=self.app.client,
            policy=settings.policy.to_policy(),
            accounts=settings.policy.account_map(),
            run_id=self.run_id,
            business_date=BUSINESS_DATE,
            dry_run=False,
            actor=ACTOR,
        )
        self.plan_stats = planner.plan(portfolio_ids)
        return self.plan_stats

    def executor(self, *, max_step_attempts: int = 4) -> Engine:
        pause = self.sleep
        return Engine(
            journal=self.app.journal,
            ports=self.app.ports,
            flows=self.app.flows,
            run_id=self.run_id,
            actor=ACTOR,
            worker=f"itest:{self.run_id.hex[:8]}",
            concurrency=1,
            max_step_attempts=max_step_attempts,
            between_tries=None if pause is None else (lambda: pause(0.0)),
        )

    def execute(self, *, max_step_attempts: int = 4) -> ExecutionStats:
        return self.executor(max_step_attempts=max_step_attempts).execute()

    def finish(self) -> Report:
        report = build_report(self.app.journal_engine, run_id=self.run_id, as_of_now=True)
        self.app.journal.finish_run(
            self.run_id, status="SUCCEEDED", exit_code=0, summary=report.summary(), error=None, actor=ACTOR
        )
        return build_report(self.app.journal_engine, run_id=self.run_id)


def journal_rows(app: App, sql: str, **params: Any) -> list[dict[str, Any]]:
    with app.journal_engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def decision_of(app: App, portfolio_id: str) -> dict[str, Any]:
    rows = journal_rows(app, "SELECT * FROM batch.decisions WHERE portfolio_id = :p", p=portfolio_id)
    assert len(rows) == 1, rows
    return rows[0]


def decisions_of(app: App, portfolio_id: str) -> list[dict[str, Any]]:
    return journal_rows(app, "SELECT * FROM batch.decisions WHERE portfolio_id = :p ORDER BY id", p=portfolio_id)


def payouts_of(app: App, portfolio_id: str) -> list[PayoutRecord]:
    rows = journal_rows(app, "SELECT id FROM batch.payouts WHERE portfolio_id = :p", p=portfolio_id)
    found = [app.journal.get_payout(r["id"]) for r in rows]
    return [p for p in found if p is not None]


def the_payout(app: App, portfolio_id: str) -> PayoutRecord:
    payouts = payouts_of(app, portfolio_id)
    assert len(payouts) == 1, payouts
    return payouts[0]


def step_attempts(app: App, payout_id: uuid.UUID, step: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM batch.step_attempts WHERE payout_id = :p"
    if step is not None:
        sql += " AND step = :s"
    return journal_rows(app, sql + " ORDER BY id", p=payout_id, s=step)


def audit_details(app: App, payout_id: uuid.UUID, action: str) -> list[dict[str, Any]]:
    rows = journal_rows(
        app,
        "SELECT details FROM batch.audit_log WHERE payout_id = :p AND action = :a ORDER BY seq",
        p=payout_id,
        a=action,
    )
    return [json.loads(r["details"]) if isinstance(r["details"], str) else r["details"] for r in rows]


def ledger_payouts(dsns: Dsns, account_reference: str) -> list[dict[str, Any]]:
    """Transfers debiting the customer's account (payouts; fundings credit it)."""
    with psycopg.connect(libpq_dsn(dsns.ledger)) as conn:
        rows = conn.execute(
            "SELECT t.idempotency_key, t.amount, t.reference FROM ledger.transfers t"
            " JOIN ledger.accounts a ON a.id = t.debit_account_id WHERE a.reference = %s",
            [account_reference],
        ).fetchall()
    return [{"key": r[0], "amount": r[1], "reference": r[2]} for r in rows]


def holdings_cash(store: SandboxState, portfolio_id: str, currency: str = "EUR") -> Decimal:
    doc = store.portfolio(portfolio_id)
    assert doc is not None
    return Decimal(str(doc["portfolio"][f"${currency}"]))


def divest_of(store: SandboxState, portfolio_id: str) -> Any:
    doc = store.portfolio(portfolio_id)
    assert doc is not None
    return doc["config"]["manager_settings"]["divest_amount"]


def withdraw_events(store: SandboxState, portfolio_id: str) -> list[dict[str, Any]]:
    return [e for e in store.events() if e.get("data", {}).get("portfolio") == portfolio_id]
