"""The ledger adapter against a real ledger database: set-wise balances, idempotent and safe payout posts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from structlog.testing import capture_logs

from batch.adapters.ledger import Ledger, LedgerAdmin, Transfer
from batch.adapters.postgres import make_engine
from batch.domain.model import mask_account
from batch.errors import (
    ConfigError,
    InsufficientFundsError,
    InvalidAmountError,
    LedgerAccountError,
    LedgerConflictError,
    LedgerUnavailableError,
)
from batch.settings import LedgerSettings

VALUE_DATE = date(2026, 1, 15)
ACCOUNT = "BE71096123456769"
IBAN = "NL91ABNA0417164300"


@pytest.fixture
def admin(ledger_engine: Engine) -> LedgerAdmin:
    admin = LedgerAdmin(ledger_engine, LedgerSettings())
    admin.ensure_clearing_account("EUR")
    admin.open_account(ACCOUNT, "EUR", "Alice")
    admin.fund(ACCOUNT, Decimal("100.00"), VALUE_DATE, "fund-alice")
    return admin


@pytest.fixture
def ledger(ledger_engine: Engine, admin: LedgerAdmin) -> Ledger:
    return Ledger(ledger_engine, LedgerSettings())


def _pay(ledger: Ledger, key: str, amount: str, account: str = ACCOUNT, currency: str = "EUR") -> Transfer:
    return ledger.post_payout(
        idempotency_key=key,
        account_reference=account,
        amount=Decimal(amount),
        currency=currency,
        value_date=VALUE_DATE,
        counterparty=IBAN,
        description="withdrawal",
    )


def _available(ledger: Ledger, account: str = ACCOUNT) -> Decimal:
    return ledger.available_balances([account])[account].available


def _payout_count(engine: Engine) -> int:
    with engine.connect() as conn:
        count: int = conn.execute(
            sa.text("SELECT count(*) FROM ledger.transfers WHERE description <> 'funding'")
        ).scalar_one()
    return count


@pytest.fixture
def statements(ledger_engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the test runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(ledger_engine, "before_cursor_execute", record)
    yield seen
    event.remove(ledger_engine, "before_cursor_execute", record)


def test_available_balances_reads_many_accounts_in_one_query(
    ledger: Ledger, admin: LedgerAdmin, statements: list[str]
) -> None:
    """Balances of many accounts come back from a single SQL statement; unknown and non-customer accounts are absent."""
    refs = [f"ACC-{i:04d}" for i in range(50)]
    for i, ref in enumerate(refs):
        admin.open_account(ref, "EUR", f"owner {i}")
        admin.fund(ref, Decimal(i + 1), VALUE_DATE, f"fund-{ref}")
    statements.clear()

    views = ledger.available_balances([*refs, "NO-SUCH-ACCOUNT", "CLEARING-EUR", "HOUSE-EUR", refs[0]])

    assert len(statements) == 1
    assert set(views) == set(refs)
    assert views["ACC-0009"].available == Decimal("10")
    assert views["ACC-0009"].currency == "EUR"
    assert views["ACC-0009"].account_reference == "ACC-0009"


def test_available_balances_of_nothing_asks_nothing(ledger: Ledger, statements: list[str]) -> None:
    """An empty list of accounts returns an empty map without touching the database."""
    assert ledger.available_balances([]) == {}
    assert statements == []


def test_holds_reduce_availability_until_released(ledger: Ledger, admin: LedgerAdmin) -> None:
    """Active holds are subtracted from the available cash; a released hold is not."""
    first = admin.place_hold(ACCOUNT, Decimal("30"), "card authorisation")
    admin.place_hold(ACCOUNT, Decimal("20.50"), "pledge")
    assert _available(ledger) == Decimal("49.50")
    admin.release_hold(first)
    assert _available(ledger) == Decimal("79.50")
    with pytest.raises(LedgerConflictError):
        admin.release_hold(first)


def test_post_payout_moves_cash_to_clearing(ledger: Ledger, ledger_engine: Engine) -> None:
    """A payout debits the customer account and credits the currency's clearing account."""
    transfer = _pay(ledger, "payout-1", "40.10")
    assert transfer.account_reference == ACCOUNT
    assert transfer.counter_account_reference == "CLEARING-EUR"
    assert transfer.amount == Decimal("40.10")
    assert transfer.currency == "EUR"
    assert transfer.value_date == VALUE_DATE
    assert transfer.counterparty == IBAN
    assert transfer.reference.startswith("LT")
    assert _available(ledger) == Decimal("59.90")
    with ledger_engine.connect() as conn:
        clearing = conn.execute(
            sa.text("SELECT balance FROM ledger.accounts WHERE reference = 'CLEARING-EUR'")
        ).scalar_one()
    assert clearing == Decimal("40.10")


def test_post_payout_is_idempotent_by_key(ledger: Ledger, ledger_engine: Engine) -> None:
    """Posting the same payout twice returns the same transfer and debits the account once."""
    first = _pay(ledger, "payout-1", "30")
    second = _pay(ledger, "payout-1", "30.00")
    assert second == first
    assert _available(ledger) == Decimal("70")
    assert _payout_count(ledger_engine) == 1


@pytest.mark.parametrize(
    ("amount", "account", "currency"),
    [("31", ACCOUNT, "EUR"), ("30", "OTHER-ACCOUNT", "EUR"), ("30", ACCOUNT, "USD")],
    ids=["amount", "account", "currency"],
)
def test_same_key_for_a_different_payout_conflicts(
    ledger: Ledger, admin: LedgerAdmin, ledger_engine: Engine, amount: str, account: str, currency: str
) -> None:
    """Reusing an idempotency key with another amount, account or currency raises LedgerConflictError."""
    admin.open_account("OTHER-ACCOUNT", "EUR", "Bob")
    admin.fund("OTHER-ACCOUNT", Decimal("100"), VALUE_DATE, "fund-bob")
    _pay(ledger, "payout-1", "30")
    with pytest.raises(LedgerConflictError):
        _pay(ledger, "payout-1", amount, account=account, currency=currency)
    assert _payout_count(ledger_engine) == 1
    assert _available(ledger) == Decimal("70")


def test_insufficient_funds_posts_nothing(ledger: Ledger, ledger_engine: Engine) -> None:
    """A payout above the available cash raises InsufficientFundsError and posts nothing."""
    with pytest.raises(InsufficientFundsError) as caught:
        _pay(ledger, "payout-1", "100.01")
    assert caught.value.available == Decimal("100")
    assert caught.value.requested == Decimal("100.01")
    assert ledger.get_transfer("payout-1") is None
    assert _payout_count(ledger_engine) == 0
    assert _available(ledger) == Decimal("100")


def test_holds_count_against_a_payout(ledger: Ledger, admin: LedgerAdmin) -> None:
    """Cash under an active hold cannot be paid out."""
    admin.place_hold(ACCOUNT, Decimal("80"), "pledge")
    with pytest.raises(InsufficientFundsError) as caught:
        _pay(ledger, "payout-1", "21")
    assert caught.value.available == Decimal("20")
    assert _pay(ledger, "payout-2", "20").amount == Decimal("20")


def test_database_refusal_is_translated_to_insufficient_funds(ledger: Ledger, ledger_engine: Engine) -> None:
    """If the trigger's balance check refuses the insert, the caller gets InsufficientFundsError."""

    def inflate(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> tuple[str, Any]:
        if "INSERT INTO ledger.transfers" in statement:
            parameters = {**parameters, "amount": Decimal("1000")}
        return statement, parameters

    event.listen(ledger_engine, "before_cursor_execute", inflate, retval=True)
    try:
        with pytest.raises(InsufficientFundsError):
            _pay(ledger, "payout-1", "10")
    finally:
        event.remove(ledger_engine, "before_cursor_execute", inflate)
    assert ledger.get_transfer("payout-1") is None


def test_currency_mismatch_is_refused(ledger: Ledger, admin: LedgerAdmin) -> None:
    """A payout in another currency than the customer account raises LedgerAccountError."""
    admin.ensure_clearing_account("USD")
    with pytest.raises(LedgerAccountError, match="is in EUR"):
        _pay(ledger, "payout-1", "10", currency="USD")


@pytest.mark.parametrize("account", ["NO-SUCH-ACCOUNT", "HOUSE-EUR", "CLEARING-EUR"])
def test_payout_from_a_non_customer_account_is_refused(ledger: Ledger, account: str) -> None:
    """Only an existing customer investment cash account can be paid out from."""
    with pytest.raises(LedgerAccountError):
        _pay(ledger, "payout-1", "10", account=account)


def test_missing_clearing_account_is_a_config_error(ledger_engine: Engine, admin: LedgerAdmin) -> None:
    """Without the currency's payout clearing account the post fails with a ConfigError naming it."""
    ledger = Ledger(ledger_engine, LedgerSettings(clearing_account_template="PAYOUTS-{currency}"))
    with pytest.raises(ConfigError, match="PAYOUTS-EUR"):
        _pay(ledger, "payout-1", "10")
    assert ledger.get_transfer("payout-1") is None


@pytest.mark.parametrize("amount", ["0", "-1", "NaN", "1.000000001"])
def test_invalid_amounts_are_refused_before_the_database(ledger: Ledger, amount: str) -> None:
    """Zero, negative, NaN or over-precise amounts raise InvalidAmountError."""
    with pytest.raises(InvalidAmountError):
        _pay(ledger, "payout-1", amount)


def _race(workers: int, task: Callable[[int], Transfer]) -> list[Transfer | BaseException]:
    """Run ``task`` in ``workers`` threads released at the same moment; return results or errors."""
    barrier = threading.Barrier(workers)

    def run(i: int) -> Transfer | BaseException:
        barrier.wait()
        try:
            return task(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(workers)))


def test_concurrent_payouts_never_overdraw(ledger: Ledger, ledger_engine: Engine) -> None:
    """Ten concurrent payouts of 30 against 100 of cash: exactly three succeed, the rest are refused."""
    results = _race(10, lambda i: _pay(ledger, f"payout-{i}", "30"))
    posted = [r for r in results if isinstance(r, Transfer)]
    refused = [r for r in results if isinstance(r, InsufficientFundsError)]
    assert len(posted) == 3
    assert len(refused) == 7
    assert _available(ledger) == Decimal("10")
    assert _payout_count(ledger_engine) == 3


def test_concurrent_posts_of_the_same_payout_post_once(ledger: Ledger, ledger_engine: Engine) -> None:
    """Ten concurrent posts with the same key all return one and the same transfer."""
    results = _race(10, lambda i: _pay(ledger, "payout-1", "60"))
    assert all(isinstance(r, Transfer) for r in results), results
    assert len({r.reference for r in results if isinstance(r, Transfer)}) == 1
    assert _payout_count(ledger_engine) == 1
    assert _available(ledger) == Decimal("40")


def test_get_transfer_reads_back_by_key(ledger: Ledger) -> None:
    """A posted transfer can be read back by its idempotency key; an unknown key gives None."""
    posted = _pay(ledger, "payout-1", "12.34")
    assert ledger.get_transfer("payout-1") == posted
    assert ledger.get_transfer("payout-unknown") is None


def test_get_transfers_reads_many_in_one_query(ledger: Ledger, statements: list[str]) -> None:
    """Several transfers are read back in one statement; unknown keys are absent."""
    posted = {key: _pay(ledger, key, "10") for key in ("payout-1", "payout-2", "payout-3")}
    statements.clear()
    found = ledger.get_transfers(["payout-1", "payout-2", "payout-3", "payout-unknown"])
    assert found == posted
    assert len(statements) == 1
    assert ledger.get_transfers([]) == {}


def test_unreachable_ledger_raises_ledger_unavailable() -> None:
    """Every ledger call against an unreachable server raises LedgerUnavailableError naming host, port and cause."""
    engine = make_engine("postgresql://nobody:pw-Ledger-77@127.0.0.1:1/core_ledger", pool_size=1)
    ledger = Ledger(engine, LedgerSettings())
    try:
        with pytest.raises(LedgerUnavailableError) as caught:
            ledger.available_balances([ACCOUNT])
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
        assert str(caught.value) == "core banking ledger at 127.0.0.1:1/core_ledger unavailable: connection refused"
        with pytest.raises(LedgerUnavailableError):
            _pay(ledger, "payout-1", "10")
        with pytest.raises(LedgerUnavailableError):
            ledger.get_transfer("payout-1")
        with pytest.raises(LedgerUnavailableError):
            ledger.get_transfers(["payout-1"])
    finally:
        engine.dispose()


def test_logs_never_carry_a_full_account_number(ledger: Ledger) -> None:
    """Payout logs show only the last four characters of the account and the counter account."""
    with capture_logs() as logs:
        _pay(ledger, "payout-1", "10")
        _pay(ledger, "payout-1", "10")
        with pytest.raises(InsufficientFundsError):
            _pay(ledger, "payout-2", "1000")
    events = [entry["event"] for entry in logs]
    assert events == ["ledger.payout_posted", "ledger.payout_already_posted", "ledger.payout_refused"]
    text = repr(logs)
    assert ACCOUNT not in text
    assert IBAN not in text
    assert logs[0]["account"] == "****6769"
    assert logs[0]["counterparty"] == "****4300"


@pytest.mark.parametrize(
    ("value", "masked"),
    [("BE71 0961 2345 6769", "****6769"), ("1234", "****"), ("", "****"), ("AB12345", "****2345")],
)
def test_mask_account_keeps_only_the_last_four_characters(value: str, masked: str) -> None:
    """mask_account hides everything but the last four characters, and all of a short value."""
    assert mask_account(value) == masked
