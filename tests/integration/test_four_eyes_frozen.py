"""Four-eyes frozen with the hold (migration 0014): a payout entering HELD records the approvals it needs and
the policy version they come from; a later policy can raise that for payouts already held, never lower it.

Real PostgreSQL; the policy is recorded through ``batch.set_approval_policy`` as the job does at each run.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine


def _exec(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        return list(result.all()) if result.returns_rows else []


def _policy(engine: Engine, thresholds: dict[str, str]) -> None:
    _exec(engine, "SELECT batch.set_approval_policy(CAST(:t AS jsonb), NULL, 'nightly')", t=json.dumps(thresholds))


def _held(engine: Engine, amount: str) -> uuid.UUID:
    """A HELD EUR payout of ``amount`` (with its run and decision)."""
    run, payout = uuid.uuid4(), uuid.uuid4()
    _exec(
        engine,
        """INSERT INTO batch.runs (id, business_date, trigger, operator, status, software_version, config_digest,
                                   host, pid)
           VALUES (:id, DATE '2026-01-15', 'test', 'tester', 'RUNNING', '0.1.0', 'abc', 'localhost', 1)""",
        id=run,
    )
    ((decision,),) = _exec(
        engine,
        """INSERT INTO batch.decisions (run_id, business_date, portfolio_id, decision, reason, pay_amount)
           VALUES (:run, DATE '2026-01-15', :p, 'PAY', 'PARTIAL', :a) RETURNING id""",
        run=run,
        p=f"P-{payout.hex[:8]}",
        a=Decimal(amount),
    )
    _exec(
        engine,
        """INSERT INTO batch.payouts (id, portfolio_id, business_date, run_id, decision_id, state, currency, amount,
                                      full_withdrawal, ledger_account, counter_account, cash_snapshot,
                                      divest_snapshot)
           VALUES (:id, :p, DATE '2026-01-15', :run, :dec, 'HELD', 'EUR', :amount, false, 'ACC-1',
                   'BE68539007547034', 100000, '10')""",
        id=payout,
        p=f"P-{payout.hex[:8]}",
        run=run,
        dec=decision,
        amount=Decimal(amount),
    )
    return payout


def _frozen(engine: Engine, payout: uuid.UUID) -> tuple[int, int]:
    ((required, version),) = _exec(
        engine, "SELECT approvals_required, approval_policy_version FROM batch.payouts WHERE id = :id", id=payout
    )
    return int(required), int(version)


def test_a_payout_held_before_any_policy_needs_two_approvals(journal_engine: Engine) -> None:
    """No policy recorded yet: the hold freezes 2 approvals under policy version 0."""
    assert _frozen(journal_engine, _held(journal_engine, "100")) == (2, 0)


def test_a_later_policy_without_a_threshold_does_not_lower_a_frozen_requirement(journal_engine: Engine) -> None:
    """Held at 3,000 EUR under a 2,000 threshold (2 approvals); a policy with no threshold leaves it at 2."""
    _policy(journal_engine, {"EUR": "2000"})
    payout = _held(journal_engine, "3000")
    assert _frozen(journal_engine, payout) == (2, 1)
    _policy(journal_engine, {})
    assert _frozen(journal_engine, payout) == (2, 1)
    with pytest.raises(sa.exc.DBAPIError, match="0 of 2 approvals recorded"):
        _exec(journal_engine, "UPDATE batch.payouts SET state = 'PLANNED' WHERE id = :id", id=payout)
    with pytest.raises(sa.exc.DBAPIError, match="may be raised, never lowered"):
        _exec(journal_engine, "UPDATE batch.payouts SET approvals_required = 1 WHERE id = :id", id=payout)


def test_a_stricter_policy_raises_payouts_already_held_and_a_laxer_one_does_not_undo_it(
    journal_engine: Engine,
) -> None:
    """Held at 1,500 under 2,000 (1 approval); a 1,000 threshold raises it to 2 (audited); back to 2,000: still 2."""
    _policy(journal_engine, {"EUR": "2000"})
    payout = _held(journal_engine, "1500")
    assert _frozen(journal_engine, payout) == (1, 1)
    _policy(journal_engine, {"EUR": "1000"})
    assert _frozen(journal_engine, payout) == (2, 2)
    _policy(journal_engine, {"EUR": "2000"})
    assert _frozen(journal_engine, payout) == (2, 2)
    audited = [
        json.loads(d)
        for (d,) in _exec(
            journal_engine,
            "SELECT details FROM batch.audit_log WHERE action = 'policy.four_eyes_threshold' ORDER BY seq",
        )
    ]
    assert [(a["version"], a["held_payouts_raised"]) for a in audited] == [(1, 0), (2, 1), (3, 0)]
