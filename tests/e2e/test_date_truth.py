"""One business date, one truth (issue 21): the date's report and reconciliation are the date's money.

Acceptance: one date, the first runs SIGKILLed under 503s and lost responses (the chaos harness), then
customers of already-paid portfolios ask again and deposits are announced for paid portfolios, the
date runs again, and once more a customer asks through the listener's bus handler. Then, per currency,
ledger payout transfers of the value date = the date report's paid = InvestSuite withdrawals = withdraw
events, and ``batch reconcile --date`` exits 0 with 0 breaks against the sandbox serving the docs'
example values (transaction ``status`` "COMPLETED").
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import pytest

from batch.adapters.ledger_deposits import IncomingFundsAdmin
from batch.adapters.postgres import Dsns, make_engine
from batch.domain.money import quantum
from batch.service.run import business_today
from batch.settings import LedgerSettings
from tests.e2e.chaos_support import ChaosHarness, ChaosOptions, ChaosResult
from tests.e2e.helpers import Cli, explain, fetch
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.bus_support import listener_handler, withdrawal
from tests.integration.payout_support import app_for, make_settings, set_portfolio_doc

TIMEZONE = "Europe/Brussels"  # the harness's [run] timezone: the listener's business date is today there


def _ask_again(store: SandboxState, portfolio_id: str, share: Decimal = Decimal(4)) -> Decimal | None:
    """The customer asks again: divest = a quarter of the cash now (None when too little cash is left)."""
    doc = store.portfolio(portfolio_id)
    assert doc is not None
    currency = str(doc["base_currency"])
    amount = (Decimal(doc["portfolio"].get(f"${currency}", 0)) / share).quantize(quantum(currency), ROUND_DOWN)
    if amount < 1:
        return None

    def change(d: dict[str, Any]) -> None:
        d["config"]["manager_settings"]["divest_amount"] = amount

    set_portfolio_doc(store, portfolio_id, change)
    return amount


def _paid_portfolios(dsns: Dsns) -> list[dict[str, Any]]:
    return fetch(
        dsns.journal,
        """SELECT DISTINCT ON (portfolio_id) portfolio_id, currency, ledger_account FROM batch.payouts
            WHERE flow = 'WITHDRAWAL' AND state = 'COMPLETED' AND currency IN ('EUR', 'USD')
            ORDER BY portfolio_id, created_at""",
    )


def _sum(rows: list[dict[str, Any]], key: str = "amount") -> dict[str, Decimal]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        sums[str(row["currency"]).strip()] += Decimal(row[key])
    return dict(sums)


@pytest.mark.slow
def test_one_date_crashed_asked_again_and_listened_is_one_truth(
    dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Kills, lost answers, customers asking again, deposits and a bus event: the date report is the date's money."""
    today = business_today(TIMEZONE)
    harness = ChaosHarness(
        dsns,
        sandbox.base_url,
        tmp_path / "chaos",
        ChaosOptions(size=40, kills=4, business_date=today, deposits=False, deadline_seconds=600, concurrency=4),
        say=print,
    )
    harness.seed()
    chaos = ChaosResult()
    harness.crash_until_converged(chaos)  # 5 % 503s and 5 % lost responses on writes, SIGKILLs at crash points
    assert chaos.kills >= 1, chaos.table()
    sandbox.admin.set_faults()
    cli = Cli(config=harness.config, report_dir=tmp_path / "chaos" / "reports", dsns=dsns)
    store = SandboxState(dsns.sandbox)

    # customers of paid portfolios ask again; deposits are announced for other paid portfolios
    paid = _paid_portfolios(dsns)
    asked = [p["portfolio_id"] for p in paid[:6] if _ask_again(store, p["portfolio_id"]) is not None]
    assert len(asked) >= 3, paid
    credited = paid[6:9]
    engine = make_engine(dsns.ledger, pool_size=1, application_name="e2e-deposit")
    try:
        admin = IncomingFundsAdmin(engine, LedgerSettings())
        for n, p in enumerate(credited):
            admin.receive_credit(
                p["ledger_account"], Decimal("123.45"), p["currency"].strip(), today, f"e2e-credit-{n}"
            )
    finally:
        engine.dispose()
    again = cli("run", "--date", today.isoformat(), "--trigger", "test")
    assert again.returncode in (0, 3), explain(again)
    announced = fetch(
        dsns.journal, "SELECT portfolio_id FROM batch.payouts WHERE flow <> 'WITHDRAWAL' AND state = 'COMPLETED'"
    )
    assert len(announced) == len(credited) == 3, announced  # InvestSuite raised those paid portfolios' cash

    # once more through the listener's bus handler (a listener run of the same date)
    listened = [p for p in asked[:2] if _ask_again(store, p, Decimal(5)) is not None]
    settings = make_settings(sandbox.base_url, tmp_path / "listener")
    with app_for(settings, dsns) as app, listener_handler(app) as wired:
        for n, portfolio_id in enumerate(listened):
            doc = store.portfolio(portfolio_id)
            assert doc is not None
            amount = doc["config"]["manager_settings"]["divest_amount"]
            handled = wired.handler.handle(withdrawal(doc, str(amount), event_id=f"ask-again-{n}"))
            assert handled.status == "HANDLED", handled

    paid_twice = fetch(
        dsns.journal,
        """SELECT portfolio_id FROM batch.payouts WHERE flow = 'WITHDRAWAL' AND state = 'COMPLETED'
            GROUP BY portfolio_id HAVING count(*) >= 2""",
    )
    assert len(paid_twice) >= 3, paid_twice

    reconciled = cli("reconcile", "--date", today.isoformat())
    assert reconciled.returncode == 0, explain(reconciled)
    assert reconciled.stdout.splitlines()[0].endswith(", 0 breaks"), reconciled.stdout

    done = cli("report", "--date", today.isoformat(), "--format", "json")
    assert done.returncode == 0, explain(done)
    report = json.loads(done.stdout)
    assert report["schema_version"].startswith("3."), report["schema_version"]
    report_paid: dict[str, Decimal] = defaultdict(Decimal)
    for line in report["lines"]:
        if line["outcome"] == "paid" and line["group"] in ("planned", "paid_earlier"):
            report_paid[line["currency"]] += Decimal(line["paid"])
    lines_of = defaultdict(list)
    for line in report["lines"]:
        if line["outcome"] == "paid":
            lines_of[line["portfolio_id"]].append(line)
    assert all(len(lines_of[p["portfolio_id"]]) >= 2 for p in paid_twice), "a portfolio paid twice shows both"

    ledger = _sum(
        fetch(
            dsns.ledger,
            """SELECT t.currency, t.amount FROM ledger.transfers t JOIN ledger.accounts c ON c.id = t.credit_account_id
                WHERE c.kind = 'PAYOUT_CLEARING' AND t.value_date = %s""",
            [today],
        )
    )
    investsuite = _sum(
        fetch(
            dsns.sandbox,
            """SELECT m ->> 'instrument_id' AS currency, -(m ->> 'quantity')::numeric AS amount
                 FROM sandbox.transactions t, json_array_elements(t.doc -> 'movements') m
                WHERE m ->> 'type' = 'CASH_WITHDRAWAL'""",
        )
    )
    investsuite = {ccy.removeprefix("$"): amount for ccy, amount in investsuite.items()}
    events = _sum(
        [
            {"currency": e["data"]["currency"], "amount": e["data"]["amount"]}
            for e in store.events()
            if e.get("type") == "withdraw"
        ]
    )
    assert ledger, "money moved"
    for ccy in sorted(set(ledger) | set(report_paid) | set(investsuite) | set(events)):
        figures = (ledger.get(ccy), report_paid.get(ccy), investsuite.get(ccy), events.get(ccy))
        assert len(set(figures)) == 1, f"{ccy}: ledger, report paid, InvestSuite, events = {figures}"
    failing = [c for c in report["checks"] if not c["ok"]]
    assert not failing, failing
