"""The job's journal database enforces its own rules: one test per rule, raw SQL."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

BUSINESS_DATE = "2026-01-15"


def _exec(engine: Engine, sql: str, **params: Any) -> list[Any]:
    """Run one statement in its own transaction; return its rows (empty when it returns none)."""
    with engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        return list(result.all()) if result.returns_rows else []


@pytest.fixture
def run_id(journal_engine: Engine) -> uuid.UUID:
    """A minimal RUNNING run the other rows can refer to."""
    run = uuid.uuid4()
    _exec(
        journal_engine,
        """INSERT INTO batch.runs (id, business_date, trigger, operator, status, software_version, config_digest,
                                   host, pid)
           VALUES (:id, DATE '2026-01-15', 'test', 'tester', 'RUNNING', '0.1.0', 'abc', 'localhost', 1)""",
        id=run,
    )
    return run


def _decision(
    engine: Engine, run_id: uuid.UUID, portfolio: str, decision: str = "PAY", pay_amount: str | None = "10"
) -> int:
    rows = _exec(
        engine,
        """INSERT INTO batch.decisions (run_id, business_date, portfolio_id, decision, reason, pay_amount)
           VALUES (:run, DATE '2026-01-15', :p, :d, 'PARTIAL', :a) RETURNING id""",
        run=run_id,
        p=portfolio,
        d=decision,
        a=Decimal(pay_amount) if pay_amount is not None else None,
    )
    decision_id: int = rows[0][0]
    return decision_id


def _payout(
    engine: Engine,
    run_id: uuid.UUID,
    portfolio: str,
    *,
    state: str = "PLANNED",
    amount: str = "10",
    ledger_reference: str | None = None,
    transaction_id: str | None = None,
) -> uuid.UUID:
    decision_id = _decision(engine, run_id, f"{portfolio}-{uuid.uuid4().hex[:6]}")
    payout = uuid.uuid4()
    _exec(
        engine,
        """INSERT INTO batch.payouts (id, portfolio_id, business_date, run_id, decision_id, state, currency, amount,
                                      full_withdrawal, ledger_account, counter_account, cash_snapshot,
                                      divest_snapshot, ledger_reference, transaction_id)
           VALUES (:id, :p, DATE '2026-01-15', :run, :dec, :state, 'EUR', :amount, false, 'ACC-1',
                   'BE68539007547034', 100, '10', :lref, :tx)""",
        id=payout,
        p=portfolio,
        run=run_id,
        dec=decision_id,
        state=state,
        amount=Decimal(amount),
        lref=ledger_reference,
        tx=transaction_id,
    )
    return payout


def _audit(engine: Engine, action: str, details: str = "{}", **extra: Any) -> None:
    _exec(
        engine,
        """INSERT INTO batch.audit_log (actor, action, run_id, portfolio_id, details)
           VALUES ('tester', :action, :run, :portfolio, :details)""",
        action=action,
        run=extra.get("run_id"),
        portfolio=extra.get("portfolio_id"),
        details=details,
    )


def test_minimal_run_decision_and_payout_are_accepted(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A run, a PAY decision with its amount and a PLANNED payout are valid rows."""
    _payout(journal_engine, run_id, "P1")
    assert _exec(journal_engine, "SELECT count(*) FROM batch.payouts")[0][0] == 1


def test_pay_decision_needs_a_pay_amount(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A PAY decision without pay_amount is rejected."""
    with pytest.raises(IntegrityError, match="check"):
        _decision(journal_engine, run_id, "P1", "PAY", None)


def test_non_pay_decision_has_no_pay_amount(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A DEFER decision carrying a pay_amount is rejected."""
    with pytest.raises(IntegrityError, match="check"):
        _decision(journal_engine, run_id, "P1", "DEFER", "10")


def test_unknown_decision_is_rejected(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A decision outside PAY/DEFER/SKIP/HOLD is rejected."""
    with pytest.raises(IntegrityError, match="check"):
        _decision(journal_engine, run_id, "P1", "MAYBE", None)


def test_one_decision_per_portfolio_per_run(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A second decision for the same portfolio in the same run is rejected."""
    _decision(journal_engine, run_id, "P1")
    with pytest.raises(IntegrityError, match="unique"):
        _decision(journal_engine, run_id, "P1")


@pytest.mark.parametrize("amount", ["0", "-0.01"])
def test_payout_amount_must_be_positive(journal_engine: Engine, run_id: uuid.UUID, amount: str) -> None:
    """A payout of zero or a negative amount is rejected."""
    with pytest.raises(IntegrityError, match="check"):
        _payout(journal_engine, run_id, "P1", amount=amount)


def test_unknown_payout_state_is_rejected(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A payout state outside the state machine is rejected."""
    with pytest.raises(IntegrityError, match="check"):
        _payout(journal_engine, run_id, "P1", state="PAID")


def test_two_open_payouts_for_one_portfolio_are_rejected(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """At most one open payout per portfolio: a second open one is rejected."""
    _payout(journal_engine, run_id, "P1", state="PLANNED")
    with pytest.raises(IntegrityError, match="payouts_one_open_withdrawal_per_portfolio"):
        _payout(journal_engine, run_id, "P1", state="NEEDS_ATTENTION")


def test_finished_payouts_do_not_block_a_new_open_one(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """COMPLETED and CANCELLED payouts plus one open payout for the same portfolio are fine."""
    _payout(journal_engine, run_id, "P1", state="COMPLETED", ledger_reference="LT1", transaction_id="T1")
    _payout(journal_engine, run_id, "P1", state="CANCELLED")
    _payout(journal_engine, run_id, "P1", state="PLANNED")
    assert _exec(journal_engine, "SELECT count(*) FROM batch.payouts WHERE portfolio_id = 'P1'")[0][0] == 3


def test_ledger_posted_payout_needs_a_ledger_reference(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A payout in LEDGER_POSTED (or later) without ledger_reference is rejected."""
    with pytest.raises(IntegrityError, match="check"):
        _payout(journal_engine, run_id, "P1", state="LEDGER_POSTED")


def test_transaction_recorded_payout_needs_a_transaction_id(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A payout in TRANSACTION_RECORDED (or later) without transaction_id is rejected."""
    with pytest.raises(IntegrityError, match="check"):
        _payout(journal_engine, run_id, "P1", state="TRANSACTION_RECORDED", ledger_reference="LT1")


def test_guarded_transition_loses_when_the_state_moved(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """UPDATE ... WHERE state = :expected changes nothing when another writer moved the payout first."""
    payout = _payout(journal_engine, run_id, "P1")
    move = """UPDATE batch.payouts SET state = 'LEDGER_POSTED', ledger_reference = 'LT1'
               WHERE id = :id AND state = 'PLANNED' RETURNING id"""
    assert len(_exec(journal_engine, move, id=payout)) == 1
    assert _exec(journal_engine, move, id=payout) == []


def test_audit_log_update_is_refused(journal_engine: Engine) -> None:
    """An audit record cannot be updated, even by the superuser."""
    _audit(journal_engine, "run.started")
    with pytest.raises(DBAPIError, match="append-only"):
        _exec(journal_engine, "UPDATE batch.audit_log SET details = 'forged'")


def test_audit_log_delete_is_refused(journal_engine: Engine) -> None:
    """An audit record cannot be deleted, even by the superuser."""
    _audit(journal_engine, "run.started")
    with pytest.raises(DBAPIError, match="append-only"):
        _exec(journal_engine, "DELETE FROM batch.audit_log")


def test_audit_log_truncate_is_refused(journal_engine: Engine) -> None:
    """The audit log cannot be truncated, even by the superuser."""
    _audit(journal_engine, "run.started")
    with pytest.raises(DBAPIError, match="append-only"):
        _exec(journal_engine, "TRUNCATE batch.audit_log")
    assert _exec(journal_engine, "SELECT count(*) FROM batch.audit_log")[0][0] == 1


def test_audit_insert_chains_seq_and_hashes(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """The insert trigger numbers records 1, 2, 3 and chains each prev_hash to the previous hash."""
    _audit(journal_engine, "run.started", run_id=run_id)
    _audit(journal_engine, "decision.recorded", '{"decision": "PAY"}', run_id=run_id, portfolio_id="P1")
    _audit(journal_engine, "run.finished", run_id=run_id)
    rows = _exec(journal_engine, "SELECT * FROM batch.audit_log ORDER BY seq")
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == "0" * 64
    assert rows[1].prev_hash == rows[0].hash
    assert rows[2].prev_hash == rows[1].hash
    for row in rows:
        # The chain can be re-verified outside the database from the documented fields (hash version 2).
        at = row.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        fields = [
            row.prev_hash,
            str(row.seq),
            at,
            row.actor,
            row.application_name,
            row.display_name,
            row.action,
            str(row.run_id) if row.run_id else None,
            str(row.payout_id) if row.payout_id else None,
            row.portfolio_id,
            row.details,
        ]
        text = "v2|" + "|".join("~" if f is None else f"{len(f)}:{f}" for f in fields)
        assert row.hash_version == 2
        assert hashlib.sha256(text.encode()).hexdigest() == row.hash


def test_audit_seq_and_hash_cannot_be_chosen_by_the_writer(journal_engine: Engine) -> None:
    """Values a writer supplies for seq, prev_hash and hash are replaced by the trigger's."""
    _exec(
        journal_engine,
        """INSERT INTO batch.audit_log (seq, at, actor, action, details, prev_hash, hash)
           VALUES (42, now(), 'tester', 'run.forged', '{}', repeat('a', 64), repeat('b', 64))""",
    )
    row = _exec(journal_engine, "SELECT seq, prev_hash, hash FROM batch.audit_log")[0]
    assert row.seq == 1
    assert row.prev_hash == "0" * 64
    assert row.hash != "b" * 64


@pytest.mark.parametrize(
    ("privilege", "granted"),
    [("SELECT", True), ("INSERT", False), ("UPDATE", False), ("DELETE", False), ("TRUNCATE", False)],
)
def test_job_role_may_read_but_not_write_the_audit_log_directly(
    journal_engine: Engine, privilege: str, granted: bool
) -> None:
    """batch_job reads audit records and appends only through batch.audit_append: no INSERT, UPDATE, DELETE."""
    rows = _exec(
        journal_engine,
        "SELECT has_table_privilege('batch_job', 'batch.audit_log', :p)",
        p=privilege,
    )
    assert rows[0][0] is granted


def test_job_role_update_of_the_audit_log_is_denied(journal_engine: Engine) -> None:
    """Acting as batch_job, an UPDATE of the audit log fails with permission denied (before any trigger)."""
    _audit(journal_engine, "run.started")
    with pytest.raises(DBAPIError, match="permission denied"), journal_engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL ROLE batch_job"))
        conn.execute(sa.text("UPDATE batch.audit_log SET details = 'forged'"))
