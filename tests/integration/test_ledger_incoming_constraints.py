"""The reference ledger's deposit rules (migration 0002) are enforced by the database: one test per rule, raw SQL."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from batch.adapters.ledger_deposits import Q
from tests.integration.test_ledger_constraints import _account, _balance, _exec


def _credit(
    engine: Engine, key: str, debit: int, credit: int, amount: str, beneficiary: str | None, currency: str = "EUR"
) -> None:
    _exec(
        engine,
        """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount, currency,
                                         value_date, counterparty, beneficiary_reference)
           VALUES (:k, :d, :c, :a, :cur, DATE '2026-01-15', 'BE68539007547034', :b)""",
        k=key,
        d=debit,
        c=credit,
        a=Decimal(amount),
        cur=currency,
        b=beneficiary,
    )


@pytest.fixture
def incoming(ledger_engine: Engine) -> tuple[int, int, int]:
    """A nostro house account, INCOMING-EUR holding a 100 EUR credit for CUST-1, and CUST-1's account."""
    nostro = _account(ledger_engine, "NOSTRO-EUR", kind="BANK_HOUSE")
    incoming = _account(ledger_engine, "INCOMING-EUR", kind="INCOMING_FUNDS")
    customer = _account(ledger_engine, "CUST-1")
    _credit(ledger_engine, "credit-1", nostro, incoming, "100", "CUST-1")
    return nostro, incoming, customer


def test_credit_into_an_incoming_account_keeps_its_beneficiary(
    ledger_engine: Engine, incoming: tuple[int, int, int]
) -> None:
    """A credit into an INCOMING_FUNDS account records the beneficiary and moves both balances."""
    nostro, account, _ = incoming
    rows = _exec(ledger_engine, "SELECT beneficiary_reference FROM ledger.transfers WHERE idempotency_key = 'credit-1'")
    assert rows[0][0] == "CUST-1"
    assert (_balance(ledger_engine, nostro), _balance(ledger_engine, account)) == (Decimal(-100), Decimal(100))


def test_credit_into_an_incoming_account_may_name_no_beneficiary(
    ledger_engine: Engine, incoming: tuple[int, int, int]
) -> None:
    """A payment the payment system could not match is booked with a null beneficiary, never refused."""
    nostro, account, _ = incoming
    _credit(ledger_engine, "credit-2", nostro, account, "5", None)
    assert _balance(ledger_engine, account) == Decimal(105)


@pytest.mark.parametrize("kind", ["CUSTOMER_INVESTMENT_CASH", "BANK_HOUSE", "PAYOUT_CLEARING"])
def test_beneficiary_is_refused_on_a_credit_into_any_other_account(
    ledger_engine: Engine, incoming: tuple[int, int, int], kind: str
) -> None:
    """A beneficiary on a credit into an account that is not INCOMING_FUNDS is refused and nothing moves."""
    nostro, _, _ = incoming
    other = _account(ledger_engine, "OTHER-1", kind=kind)
    with pytest.raises(IntegrityError, match="beneficiary is recorded only on a credit into an INCOMING_FUNDS"):
        _credit(ledger_engine, "credit-x", nostro, other, "10", "CUST-1")
    assert _balance(ledger_engine, other) == Decimal(0)


@pytest.mark.parametrize("beneficiary", ["", "X" * 65])
def test_beneficiary_reference_must_look_like_an_account_reference(
    ledger_engine: Engine, incoming: tuple[int, int, int], beneficiary: str
) -> None:
    """An empty beneficiary or one longer than an account reference (64) is refused."""
    nostro, account, _ = incoming
    with pytest.raises(IntegrityError, match="beneficiary_reference_shape"):
        _credit(ledger_engine, "credit-x", nostro, account, "10", beneficiary)


def test_move_to_the_customer_within_the_incoming_balance_is_accepted(
    ledger_engine: Engine, incoming: tuple[int, int, int]
) -> None:
    """Moving the whole credit from the incoming account to the customer's account empties the incoming account."""
    _, account, customer = incoming
    _credit(ledger_engine, "deposit:1", account, customer, "100", None)
    assert (_balance(ledger_engine, account), _balance(ledger_engine, customer)) == (Decimal(0), Decimal(100))


def test_incoming_account_may_not_be_debited_below_zero(ledger_engine: Engine, incoming: tuple[int, int, int]) -> None:
    """A move larger than the incoming account holds is refused (insufficient available balance), nothing moves."""
    _, account, customer = incoming
    with pytest.raises(IntegrityError, match="insufficient available balance on INCOMING-EUR"):
        _credit(ledger_engine, "deposit:1", account, customer, "100.01", None)
    assert (_balance(ledger_engine, account), _balance(ledger_engine, customer)) == (Decimal(100), Decimal(0))


def test_incoming_account_holds_count_against_a_move(ledger_engine: Engine, incoming: tuple[int, int, int]) -> None:
    """With 100 in the incoming account and 30 held, moving 80 is refused and moving 70 is accepted."""
    _, account, customer = incoming
    _exec(ledger_engine, "INSERT INTO ledger.holds (account_id, amount, reason) VALUES (:i, 30, 'recall')", i=account)
    with pytest.raises(IntegrityError, match="insufficient available balance"):
        _credit(ledger_engine, "deposit:1", account, customer, "80", None)
    _credit(ledger_engine, "deposit:2", account, customer, "70", None)
    assert _balance(ledger_engine, customer) == Decimal(70)


def test_incoming_balance_check_is_a_backstop_even_without_the_guard_trigger(
    ledger_engine: Engine, incoming: tuple[int, int, int]
) -> None:
    """The incoming_balance_not_negative CHECK rejects a negative incoming balance even if triggers are off."""
    _, account, _ = incoming
    with pytest.raises(IntegrityError, match="incoming_balance_not_negative"), ledger_engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE ledger.accounts DISABLE TRIGGER accounts_guard_balance"))
        conn.execute(sa.text("UPDATE ledger.accounts SET balance = -1 WHERE id = :i"), {"i": account})


def test_nostro_house_account_may_go_negative(ledger_engine: Engine, incoming: tuple[int, int, int]) -> None:
    """The BANK_HOUSE account incoming payments come from is not limited by its balance (it was -100 already)."""
    nostro, account, _ = incoming
    _credit(ledger_engine, "credit-2", nostro, account, "1000", "CUST-2")
    assert _balance(ledger_engine, nostro) == Decimal(-1100)


def test_credit_into_an_incoming_account_cannot_be_edited(
    ledger_engine: Engine, incoming: tuple[int, int, int]
) -> None:
    """A booked credit's beneficiary cannot be changed afterwards (transfers are immutable)."""
    with pytest.raises(DBAPIError, match="immutable"):
        _exec(ledger_engine, "UPDATE ledger.transfers SET beneficiary_reference = 'CUST-9'")


def test_incoming_account_kind_is_fixed(ledger_engine: Engine, incoming: tuple[int, int, int]) -> None:
    """An incoming funds account cannot be turned into a house account (which may go negative)."""
    _, account, _ = incoming
    with pytest.raises(DBAPIError, match="fixed"):
        _exec(ledger_engine, "UPDATE ledger.accounts SET kind = 'BANK_HOUSE' WHERE id = :i", i=account)


def test_credits_into_incoming_accounts_are_found_by_index(
    ledger_engine: Engine, incoming: tuple[int, int, int]
) -> None:
    """The incoming-credits query reads the transfers_by_credit index, not the whole transfers table."""
    params: dict[str, Any] = {"after_id": 0, "limit": 100}
    with ledger_engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = conn.execute(sa.text("EXPLAIN " + Q.incoming_credits.sql), params).scalars().all()
    assert "transfers_by_credit" in " ".join(plan)


def test_incoming_credits_become_visible_in_id_order(ledger_engine: Engine, incoming: tuple[int, int, int]) -> None:
    """A credit (even in another currency) booked while an earlier one is uncommitted waits: none shows above a gap."""
    nostro, account, _ = incoming
    nostro_usd = _account(ledger_engine, "NOSTRO-USD", currency="USD", kind="BANK_HOUSE")
    incoming_usd = _account(ledger_engine, "INCOMING-USD", currency="USD", kind="INCOMING_FUNDS")
    with ledger_engine.connect() as first:
        first.execute(
            sa.text(
                """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount,
                                                 currency, value_date, counterparty)
                   VALUES ('early', :d, :c, 1, 'EUR', current_date, 'x')"""
            ),
            {"d": nostro, "c": account},
        )
        with ThreadPoolExecutor(max_workers=1) as pool:
            later = pool.submit(_credit, ledger_engine, "late", nostro_usd, incoming_usd, "2", None, "USD")
            waiting = _wait_for_lock(ledger_engine)
            visible = _exec(ledger_engine, "SELECT idempotency_key FROM ledger.transfers WHERE amount < 3")
            first.commit()
            later.result(timeout=30)
    assert waiting == ("Lock", "advisory")
    assert visible == []
    ids = dict(_exec(ledger_engine, "SELECT idempotency_key, id FROM ledger.transfers WHERE amount < 3"))
    assert ids["late"] > ids["early"]


def _wait_for_lock(engine: Engine) -> tuple[str, str] | None:
    """The wait event of another session blocked on a lock, polled until one shows (or None after 30 s)."""
    for _ in range(300):
        rows = _exec(
            engine,
            """SELECT wait_event_type, wait_event FROM pg_stat_activity
                WHERE datname = current_database() AND wait_event_type = 'Lock'""",
        )
        if rows:
            return (rows[0][0], rows[0][1])
        time.sleep(0.1)
    return None
