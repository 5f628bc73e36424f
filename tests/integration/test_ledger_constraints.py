"""The reference core banking ledger enforces its money rules itself: one test per rule, raw SQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

_HOUSE = "HOUSE-EUR"


def _exec(engine: Engine, sql: str, **params: Any) -> list[Any]:
    """Run one statement in its own transaction; return its rows (empty when it returns none)."""
    with engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        return list(result.all()) if result.returns_rows else []


def _account(engine: Engine, reference: str, currency: str = "EUR", kind: str = "CUSTOMER_INVESTMENT_CASH") -> int:
    rows = _exec(
        engine,
        "INSERT INTO ledger.accounts (reference, currency, owner, kind) VALUES (:r, :c, 'owner', :k) RETURNING id",
        r=reference,
        c=currency,
        k=kind,
    )
    account_id: int = rows[0][0]
    return account_id


def _transfer(engine: Engine, key: str, debit: int, credit: int, amount: str, currency: str = "EUR") -> None:
    _exec(
        engine,
        """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount, currency,
                                         value_date, counterparty)
           VALUES (:k, :d, :c, :a, :cur, DATE '2026-01-15', 'BE68539007547034')""",
        k=key,
        d=debit,
        c=credit,
        a=Decimal(amount),
        cur=currency,
    )


def _balance(engine: Engine, account_id: int) -> Decimal:
    value: Decimal = _exec(engine, "SELECT balance FROM ledger.accounts WHERE id = :i", i=account_id)[0][0]
    return value


@pytest.fixture
def funded(ledger_engine: Engine) -> tuple[int, int, int]:
    """A house account, a customer account funded with 100 EUR, and the EUR clearing account."""
    house = _account(ledger_engine, _HOUSE, kind="BANK_HOUSE")
    customer = _account(ledger_engine, "CUST-1")
    clearing = _account(ledger_engine, "CLEARING-EUR", kind="PAYOUT_CLEARING")
    _transfer(ledger_engine, "fund-1", house, customer, "100")
    return house, customer, clearing


def test_valid_transfer_moves_both_balances_by_the_same_amount(
    ledger_engine: Engine, funded: tuple[int, int, int]
) -> None:
    """A valid transfer debits one account and credits the other by the same amount (sum stays zero)."""
    house, customer, clearing = funded
    _transfer(ledger_engine, "pay-1", customer, clearing, "30.25")
    assert _balance(ledger_engine, customer) == Decimal("69.75")
    assert _balance(ledger_engine, clearing) == Decimal("30.25")
    assert _balance(ledger_engine, house) == Decimal("-100")
    total = _exec(ledger_engine, "SELECT sum(balance) FROM ledger.accounts")[0][0]
    assert total == 0


@pytest.mark.parametrize("amount", ["0", "-5"])
def test_transfer_amount_must_be_positive(ledger_engine: Engine, funded: tuple[int, int, int], amount: str) -> None:
    """A transfer of zero or a negative amount is rejected."""
    _, customer, clearing = funded
    with pytest.raises(IntegrityError, match="check"):
        _transfer(ledger_engine, "pay-1", customer, clearing, amount)


def test_duplicate_idempotency_key_is_rejected(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """A second transfer with an idempotency key already used is rejected, and money moved once."""
    _, customer, clearing = funded
    _transfer(ledger_engine, "pay-1", customer, clearing, "10")
    with pytest.raises(IntegrityError, match="idempotency_key"):
        _transfer(ledger_engine, "pay-1", customer, clearing, "10")
    assert _balance(ledger_engine, customer) == Decimal("90")


def test_on_conflict_do_nothing_moves_no_money(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING with a used key leaves the balances untouched."""
    _, customer, clearing = funded
    _transfer(ledger_engine, "pay-1", customer, clearing, "10")
    _exec(
        ledger_engine,
        """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount, currency,
                                         value_date, counterparty)
           VALUES ('pay-1', :d, :c, 10, 'EUR', DATE '2026-01-15', 'BE68539007547034')
           ON CONFLICT (idempotency_key) DO NOTHING""",
        d=customer,
        c=clearing,
    )
    assert _balance(ledger_engine, customer) == Decimal("90")
    assert _balance(ledger_engine, clearing) == Decimal("10")


@pytest.mark.parametrize("currency", ["eur", "EURO", "E1R"])
def test_bad_currency_code_is_rejected(ledger_engine: Engine, currency: str) -> None:
    """An account currency that is not three upper-case letters is rejected."""
    with pytest.raises(DBAPIError):
        _account(ledger_engine, "CUST-X", currency=currency)


def test_bad_transfer_currency_code_is_rejected(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """A transfer currency that is not three upper-case letters is rejected."""
    _, customer, clearing = funded
    with pytest.raises(IntegrityError, match="currency_check"):
        _transfer(ledger_engine, "pay-1", customer, clearing, "10", currency="eur")


def test_transfer_currency_must_match_the_accounts(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """A transfer in another currency than its accounts is rejected."""
    _, customer, clearing = funded
    with pytest.raises(IntegrityError, match="does not match the accounts"):
        _transfer(ledger_engine, "pay-1", customer, clearing, "10", currency="USD")


def test_transfer_between_accounts_of_different_currencies_is_rejected(
    ledger_engine: Engine, funded: tuple[int, int, int]
) -> None:
    """A transfer from a EUR account to a USD account is rejected whatever its currency."""
    _, customer, _ = funded
    usd = _account(ledger_engine, "CLEARING-USD", currency="USD", kind="PAYOUT_CLEARING")
    with pytest.raises(IntegrityError, match="does not match the accounts"):
        _transfer(ledger_engine, "pay-1", customer, usd, "10")


def test_same_debit_and_credit_account_is_rejected(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """A transfer from an account to itself is rejected."""
    _, customer, _ = funded
    with pytest.raises(IntegrityError, match="check"):
        _transfer(ledger_engine, "pay-1", customer, customer, "10")


def test_transfer_may_not_take_a_customer_account_below_zero(
    ledger_engine: Engine, funded: tuple[int, int, int]
) -> None:
    """A transfer larger than a customer account's balance is rejected and nothing moves."""
    _, customer, clearing = funded
    with pytest.raises(IntegrityError, match="insufficient available balance"):
        _transfer(ledger_engine, "pay-1", customer, clearing, "100.01")
    assert _balance(ledger_engine, customer) == Decimal("100")
    assert _balance(ledger_engine, clearing) == Decimal("0")


def test_customer_balance_check_is_a_backstop_even_without_the_guard_trigger(
    ledger_engine: Engine, funded: tuple[int, int, int]
) -> None:
    """The customer_balance_not_negative CHECK rejects a negative customer balance even if triggers are off."""
    _, customer, _ = funded
    with pytest.raises(IntegrityError, match="customer_balance_not_negative"), ledger_engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE ledger.accounts DISABLE TRIGGER accounts_guard_balance"))
        conn.execute(sa.text("UPDATE ledger.accounts SET balance = -1 WHERE id = :i"), {"i": customer})


def test_transfer_may_not_exceed_balance_minus_active_holds(
    ledger_engine: Engine, funded: tuple[int, int, int]
) -> None:
    """With 100 on the account and 80 held, a transfer of 30 is rejected but 20 is accepted."""
    _, customer, clearing = funded
    _exec(ledger_engine, "INSERT INTO ledger.holds (account_id, amount, reason) VALUES (:i, 80, 'pledge')", i=customer)
    with pytest.raises(IntegrityError, match="insufficient available balance"):
        _transfer(ledger_engine, "pay-1", customer, clearing, "30")
    _transfer(ledger_engine, "pay-2", customer, clearing, "20")
    assert _balance(ledger_engine, customer) == Decimal("80")


def test_released_hold_no_longer_blocks_cash(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """Once a hold is released its amount is available again."""
    _, customer, clearing = funded
    rows = _exec(
        ledger_engine,
        "INSERT INTO ledger.holds (account_id, amount, reason) VALUES (:i, 80, 'pledge') RETURNING id",
        i=customer,
    )
    _exec(ledger_engine, "UPDATE ledger.holds SET released_at = now() WHERE id = :h", h=rows[0][0])
    _transfer(ledger_engine, "pay-1", customer, clearing, "100")
    assert _balance(ledger_engine, customer) == Decimal("0")


def test_update_of_a_transfer_is_refused(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """A posted transfer cannot be edited."""
    with pytest.raises(DBAPIError, match="immutable"):
        _exec(ledger_engine, "UPDATE ledger.transfers SET amount = 1 WHERE idempotency_key = 'fund-1'")


def test_delete_of_a_transfer_is_refused(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """A posted transfer cannot be deleted."""
    with pytest.raises(DBAPIError, match="immutable"):
        _exec(ledger_engine, "DELETE FROM ledger.transfers WHERE idempotency_key = 'fund-1'")


def test_truncate_of_transfers_is_refused(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """The transfers table cannot be truncated."""
    with pytest.raises(DBAPIError, match="immutable"):
        _exec(ledger_engine, "TRUNCATE ledger.transfers")


def test_direct_update_of_a_balance_is_refused(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """Balances change only through transfers: a direct UPDATE is refused."""
    _, customer, _ = funded
    with pytest.raises(DBAPIError, match=r"only through ledger\.transfers"):
        _exec(ledger_engine, "UPDATE ledger.accounts SET balance = balance + 1000 WHERE id = :i", i=customer)
    assert _balance(ledger_engine, customer) == Decimal("100")


@pytest.mark.parametrize("change", ["kind = 'BANK_HOUSE'", "currency = 'USD'"])
def test_account_kind_and_currency_are_fixed(ledger_engine: Engine, funded: tuple[int, int, int], change: str) -> None:
    """An account's kind and currency cannot be changed."""
    _, customer, _ = funded
    with pytest.raises(DBAPIError, match="fixed"):
        _exec(ledger_engine, f"UPDATE ledger.accounts SET {change} WHERE id = :i", i=customer)


def test_unknown_account_kind_is_rejected(ledger_engine: Engine) -> None:
    """An account kind outside the known list is rejected."""
    with pytest.raises(IntegrityError, match="check"):
        _account(ledger_engine, "CUST-X", kind="SAVINGS")


@pytest.mark.parametrize("amount", ["0", "-1"])
def test_hold_amount_must_be_positive(ledger_engine: Engine, funded: tuple[int, int, int], amount: str) -> None:
    """A hold of zero or a negative amount is rejected."""
    _, customer, _ = funded
    with pytest.raises(IntegrityError, match="check"):
        _exec(
            ledger_engine,
            "INSERT INTO ledger.holds (account_id, amount, reason) VALUES (:i, :a, 'pledge')",
            i=customer,
            a=Decimal(amount),
        )


def test_hold_cannot_be_deleted(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """A hold is released, never deleted."""
    _, customer, _ = funded
    _exec(ledger_engine, "INSERT INTO ledger.holds (account_id, amount, reason) VALUES (:i, 5, 'pledge')", i=customer)
    with pytest.raises(DBAPIError, match="not deleted"):
        _exec(ledger_engine, "DELETE FROM ledger.holds")


def test_hold_cannot_be_released_twice(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """A released hold cannot be released again (nor un-released)."""
    _, customer, _ = funded
    hold = _exec(
        ledger_engine,
        "INSERT INTO ledger.holds (account_id, amount, reason) VALUES (:i, 5, 'pledge') RETURNING id",
        i=customer,
    )[0][0]
    _exec(ledger_engine, "UPDATE ledger.holds SET released_at = now() WHERE id = :h", h=hold)
    with pytest.raises(DBAPIError, match="already released"):
        _exec(ledger_engine, "UPDATE ledger.holds SET released_at = now() WHERE id = :h", h=hold)
    with pytest.raises(DBAPIError, match="already released"):
        _exec(ledger_engine, "UPDATE ledger.holds SET released_at = NULL WHERE id = :h", h=hold)


def test_hold_amount_cannot_be_changed(ledger_engine: Engine, funded: tuple[int, int, int]) -> None:
    """An active hold's amount cannot be edited (release it and place a new one)."""
    _, customer, _ = funded
    _exec(ledger_engine, "INSERT INTO ledger.holds (account_id, amount, reason) VALUES (:i, 5, 'pledge')", i=customer)
    with pytest.raises(DBAPIError, match="can only be released"):
        _exec(ledger_engine, "UPDATE ledger.holds SET amount = 1")
