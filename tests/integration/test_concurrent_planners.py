"""Two planners deciding the same portfolio at once (the listener and the nightly run): one payout, no error."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal

from sqlalchemy.engine import Engine

from batch.adapters.journal import DecisionRow, Journal, NewPayout
from batch.domain.payout import PayoutState

DAY = date(2026, 11, 30)


def _start(journal: Journal) -> uuid.UUID:
    run_id = uuid.uuid4()
    journal.start_run(
        run_id=run_id,
        business_date=DAY,
        trigger="test",
        operator="tester",
        dry_run=False,
        parameters={},
        software_version="test",
        config_digest="test",
        host="h",
        pid=1,
    )
    return run_id


def _pay(portfolio_id: str) -> tuple[DecisionRow, NewPayout]:
    amount = Decimal("100.00")
    row = DecisionRow(
        portfolio_id, "PAY", "PARTIAL", "EUR", "100.00", amount, False, "CASH-1", amount, amount, amount, False, {}
    )
    payout = NewPayout(
        uuid.uuid4(),
        portfolio_id,
        PayoutState.PLANNED,
        "EUR",
        amount,
        False,
        "CASH-1",
        "BE71096123456769",
        amount,
        "100.00",
    )
    return row, payout


def test_a_planner_that_loses_the_race_for_a_portfolio_defers_to_the_open_payout(journal_engine: Engine) -> None:
    """The second planner's PAY becomes DEFER PAYOUT_IN_PROGRESS on the same page write; one open payout."""
    journal = Journal(journal_engine)
    first, second = _start(journal), _start(journal)
    other = _pay("P-OTHER")
    assert (
        journal.record_decisions(run_id=first, business_date=DAY, dry_run=False, actor="a", decisions=[_pay("P-1")])
        == 1
    )
    assert (
        journal.record_decisions(
            run_id=second, business_date=DAY, dry_run=False, actor="b", decisions=[_pay("P-1"), other]
        )
        == 2
    )

    open_payouts = journal.open_payout_portfolios(["P-1", "P-OTHER"])
    assert set(open_payouts) == {"P-1", "P-OTHER"}
    with journal_engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT run_id, portfolio_id, decision, reason, payout_id FROM batch.decisions ORDER BY id"
        ).all()
    lost = [r for r in rows if r.run_id == second and r.portfolio_id == "P-1"]
    assert [(r.decision, r.reason, r.payout_id) for r in lost] == [("DEFER", "PAYOUT_IN_PROGRESS", None)]
    assert [r.decision for r in rows if r.portfolio_id == "P-OTHER"] == ["PAY"]
