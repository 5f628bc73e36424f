"""The deposit side of the ledger adapter against a real ledger: incoming credits, idempotent and safe moves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from structlog.testing import capture_logs

from batch.adapters.ledger import Ledger, Transfer
from batch.adapters.ledger_deposits import DepositLedger, IncomingCredit, IncomingCreditError, IncomingFundsAdmin
from batch.adapters.postgres import Dsns, make_engine, sqlalchemy_url
from batch.errors import (
    ConfigError,
    InsufficientFundsError,
    InvalidAmountError,
    LedgerAccountError,
    LedgerConflictError,
)
from batch.settings import LedgerSettings
from tests.integration.test_ledger_adapter import _race
from tests.integration.test_ledger_contract import _grants_block

VALUE_DATE = date(2026, 11, 30)
ALICE = "BE71096123456769"
BOB = "BE62510007547061"
PAYER = "NL91ABNA0417164300"


@pytest.fixture
def admin(ledger_engine: Engine) -> IncomingFundsAdmin:
    """Alice's and Bob's EUR accounts (empty) and the EUR clearing account."""
    admin = IncomingFundsAdmin(ledger_engine, LedgerSettings())
    admin.ensure_clearing_account("EUR")
    admin.open_account(ALICE, "EUR", "Alice")
    admin.open_account(BOB, "EUR", "Bob")
    return admin


@pytest.fixture
def deposits(ledger_engine: Engine, admin: IncomingFundsAdmin) -> DepositLedger:
    return DepositLedger(ledger_engine, LedgerSettings())


@pytest.fixture
def statements(ledger_engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the test runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(ledger_engine, "before_cursor_execute", record)
    yield seen
    event.remove(ledger_engine, "before_cursor_execute", record)


def _receive(
    admin: IncomingFundsAdmin, key: str, amount: str, beneficiary: str | None = ALICE, ccy: str = "EUR"
) -> str:
    return admin.receive_credit(beneficiary, Decimal(amount), ccy, VALUE_DATE, key, counterparty=PAYER).reference


def _move(
    deposits: DepositLedger, credit: str, amount: str, account: str = ALICE, currency: str = "EUR", key: str = ""
) -> Transfer:
    return deposits.move_deposit(
        idempotency_key=key or f"deposit:{credit}",
        credit_reference=credit,
        account_reference=account,
        amount=Decimal(amount),
        currency=currency,
        value_date=VALUE_DATE,
    )


def _balance(engine: Engine, reference: str) -> Decimal:
    with engine.connect() as conn:
        value: Decimal = conn.execute(
            sa.text("SELECT balance FROM ledger.accounts WHERE reference = :r"), {"r": reference}
        ).scalar_one()
    return value


def _moves(engine: Engine) -> int:
    with engine.connect() as conn:
        count: int = conn.execute(
            sa.text("SELECT count(*) FROM ledger.transfers WHERE idempotency_key LIKE 'deposit:%'")
        ).scalar_one()
    return count


def test_receive_credit_books_the_payment_into_the_incoming_account(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """A received payment is a credit NOSTRO-EUR -> INCOMING-EUR naming its beneficiary; a repeat books nothing."""
    first = admin.receive_credit(ALICE, Decimal("1500.00"), "EUR", VALUE_DATE, "pay-1", counterparty=PAYER)
    again = admin.receive_credit(ALICE, Decimal("1500.00"), "EUR", VALUE_DATE, "pay-1", counterparty=PAYER)
    assert again == first
    assert (first.account_reference, first.counter_account_reference) == ("NOSTRO-EUR", "INCOMING-EUR")
    assert _balance(ledger_engine, "INCOMING-EUR") == Decimal("1500.00")
    credit = deposits.credits_by_reference([first.reference])[first.reference]
    assert (credit.beneficiary, credit.amount, credit.currency, credit.counterparty) == (
        ALICE,
        Decimal("1500.00"),
        "EUR",
        PAYER,
    )


@pytest.mark.parametrize(
    ("beneficiary", "amount"), [(BOB, "1500.00"), (None, "1500.00"), (ALICE, "1500.01")], ids=["who", "none", "amount"]
)
def test_receive_credit_key_reused_for_another_payment_conflicts(
    admin: IncomingFundsAdmin, ledger_engine: Engine, beneficiary: str | None, amount: str
) -> None:
    """Booking another beneficiary or amount under a used key is a LedgerConflictError and books nothing more."""
    _receive(admin, "pay-1", "1500.00")
    with pytest.raises(LedgerConflictError):
        _receive(admin, "pay-1", amount, beneficiary)
    assert _balance(ledger_engine, "INCOMING-EUR") == Decimal("1500.00")


def test_incoming_credits_pages_in_id_order_one_query_per_page(
    admin: IncomingFundsAdmin, deposits: DepositLedger, statements: list[str]
) -> None:
    """Credits of every currency come back in id order, 4 per page, one query each; nothing else is listed."""
    admin.ensure_clearing_account("USD")
    admin.open_account("US-CASH-1", "USD", "Carol")
    admin.fund(ALICE, Decimal("50"), VALUE_DATE, "opening-alice")  # a transfer into a customer account, not incoming
    refs = [
        _receive(admin, f"pay-{i}", f"{i + 1}.00", *(("US-CASH-1", "USD") if i % 3 == 0 else (ALICE, "EUR")))
        for i in range(10)
    ]
    _move(deposits, refs[1], "2.00")  # a move out of an incoming account is no incoming credit
    statements.clear()

    pages: list[list[IncomingCredit]] = []
    after = 0
    while page := deposits.incoming_credits(after, 4):
        pages.append(page)
        after = page[-1].id

    assert [len(page) for page in pages] == [4, 4, 2]
    assert len(statements) == 4  # three pages and the empty one that ends the paging
    listed = [credit for page in pages for credit in page]
    assert [credit.reference for credit in listed] == refs
    assert [credit.id for credit in listed] == sorted(credit.id for credit in listed)
    assert {credit.currency for credit in listed} == {"EUR", "USD"}
    assert listed[3].amount == Decimal("4.00") and listed[3].beneficiary == "US-CASH-1"


def test_incoming_credits_after_the_last_id_finds_only_new_ones(
    admin: IncomingFundsAdmin, deposits: DepositLedger
) -> None:
    """Paging on from the last id seen returns only credits booked since, never one already seen."""
    _receive(admin, "pay-1", "10.00")
    seen = deposits.incoming_credits(0, 100)
    fresh = _receive(admin, "pay-2", "20.00", None)
    assert [credit.reference for credit in deposits.incoming_credits(seen[-1].id, 100)] == [fresh]
    assert deposits.incoming_credits(0, 100)[1].beneficiary is None


def test_credits_by_reference_reads_many_in_one_query(
    admin: IncomingFundsAdmin, deposits: DepositLedger, statements: list[str]
) -> None:
    """Several credits come back from one statement; references of other transfers and unknown ones are absent."""
    refs = [_receive(admin, f"pay-{i}", "10.00") for i in range(3)]
    funding = admin.fund(BOB, Decimal("5"), VALUE_DATE, "opening-bob").reference
    statements.clear()
    found = deposits.credits_by_reference([*refs, funding, "LT-NO-SUCH"])
    assert sorted(found) == sorted(refs)
    assert len(statements) == 1
    assert deposits.credits_by_reference([]) == {}


def test_move_deposit_moves_the_credit_to_the_customer(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """A move debits the incoming account and credits the customer's account by the credit's amount."""
    credit = _receive(admin, "pay-1", "1500.00")
    moved = _move(deposits, credit, "1500.00")
    assert (moved.account_reference, moved.counter_account_reference) == ("INCOMING-EUR", ALICE)
    assert (moved.idempotency_key, moved.amount, moved.currency) == (f"deposit:{credit}", Decimal("1500.00"), "EUR")
    assert (moved.value_date, moved.counterparty) == (VALUE_DATE, PAYER)
    assert _balance(ledger_engine, ALICE) == Decimal("1500.00")
    assert _balance(ledger_engine, "INCOMING-EUR") == Decimal(0)
    assert deposits.get_transfer(f"deposit:{credit}") == moved
    assert Ledger(ledger_engine, LedgerSettings()).get_transfer(f"deposit:{credit}") == moved


def test_move_deposit_is_idempotent_by_key(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """Moving the same credit twice with the same key returns the same transfer and moves the money once."""
    credit = _receive(admin, "pay-1", "100.00")
    _receive(admin, "pay-2", "900.00")  # money in the incoming account a second move could take
    first = _move(deposits, credit, "100.00")
    assert _move(deposits, credit, "100.0") == first
    assert _moves(ledger_engine) == 1
    assert _balance(ledger_engine, ALICE) == Decimal("100.00")


def test_move_deposit_repeat_returns_the_move_even_after_the_money_is_gone(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """A repeat of a committed move returns it even when the incoming account has been emptied since."""
    credit = _receive(admin, "pay-1", "100.00")
    first = _move(deposits, credit, "100.00")
    admin.place_hold("INCOMING-EUR", Decimal("0.01"), "recall")  # nothing left to move, and a hold on top
    assert _move(deposits, credit, "100.00") == first


@pytest.mark.parametrize(
    ("account", "amount"), [(BOB, "100.00"), (ALICE, "99.99")], ids=["other-account", "other-amount"]
)
def test_same_key_for_another_move_conflicts(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine, account: str, amount: str
) -> None:
    """Reusing a move's key for another account or amount raises LedgerConflictError and moves nothing more."""
    credit = _receive(admin, "pay-1", "100.00")
    other = _receive(admin, "pay-2", "99.99")
    _move(deposits, credit, "100.00")
    with pytest.raises(LedgerConflictError):
        _move(deposits, other if amount == "99.99" else credit, amount, account=account, key=f"deposit:{credit}")
    assert _moves(ledger_engine) == 1
    assert _balance(ledger_engine, "INCOMING-EUR") == Decimal("99.99")


def test_move_beyond_the_incoming_funds_is_refused(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """With part of the incoming account held, a move it cannot cover raises InsufficientFundsError, moves nothing."""
    credit = _receive(admin, "pay-1", "100.00")
    admin.place_hold("INCOMING-EUR", Decimal("30"), "recall")
    with pytest.raises(InsufficientFundsError) as caught:
        _move(deposits, credit, "100.00")
    assert (caught.value.available, caught.value.requested) == (Decimal(70), Decimal("100.00"))
    assert deposits.get_transfer(f"deposit:{credit}") is None
    assert _balance(ledger_engine, ALICE) == Decimal(0)


def test_same_credit_moved_under_a_second_key_is_refused_once_the_money_is_gone(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """A second move of one credit under another key finds the incoming account empty: refused, moved once."""
    credit = _receive(admin, "pay-1", "100.00")
    _move(deposits, credit, "100.00")
    with pytest.raises(InsufficientFundsError):
        _move(deposits, credit, "100.00", key="another-key")
    assert _balance(ledger_engine, ALICE) == Decimal("100.00")


@pytest.mark.parametrize(
    ("account", "currency", "match"),
    [
        ("NO-SUCH-ACCOUNT", "EUR", "no customer investment cash account"),
        ("CLEARING-EUR", "EUR", "no customer investment cash account"),
        ("INCOMING-EUR", "EUR", "no customer investment cash account"),
        ("NOSTRO-EUR", "EUR", "no customer investment cash account"),
        ("US-CASH-1", "EUR", "is in USD, the deposit in EUR"),
        (ALICE, "USD", "is in EUR, the deposit in USD"),
    ],
    ids=["missing", "clearing", "incoming", "nostro", "usd-account", "usd-deposit"],
)
def test_move_to_anything_but_a_customer_account_in_the_currency_is_refused(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine, account: str, currency: str, match: str
) -> None:
    """The move credits only an existing CUSTOMER_INVESTMENT_CASH account in the deposit's currency."""
    admin.open_account("US-CASH-1", "USD", "Carol")
    credit = _receive(admin, "pay-1", "100.00", account, currency)
    with pytest.raises(LedgerAccountError, match=match):
        _move(deposits, credit, "100.00", account=account, currency=currency)
    assert _moves(ledger_engine) == 0


@pytest.mark.parametrize(
    ("amount", "currency", "match"),
    [("99.00", "EUR", "is 100.00000000 EUR, the move 99.00 EUR"), ("100.00", "USD", "not a credit into")],
    ids=["amount", "currency"],
)
def test_move_must_match_the_credit(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine, amount: str, currency: str, match: str
) -> None:
    """A move of another amount than the credit, or of a credit that is not an incoming one, is refused."""
    admin.open_account("US-CASH-1", "USD", "Carol")
    admin.ensure_incoming_account("USD")
    credit = _receive(admin, "pay-1", "100.00")
    funding = admin.fund("US-CASH-1", Decimal("100.00"), VALUE_DATE, "opening-carol").reference
    with pytest.raises(IncomingCreditError, match=match):
        _move(
            deposits,
            credit if currency == "EUR" else funding,
            amount,
            "US-CASH-1" if currency == "USD" else ALICE,
            currency,
        )
    assert _moves(ledger_engine) == 0


def test_missing_incoming_account_is_a_config_error(admin: IncomingFundsAdmin, ledger_engine: Engine) -> None:
    """Without the currency's incoming funds account the move fails with a ConfigError naming the template's account."""
    credit = _receive(admin, "pay-1", "100.00")
    deposits = DepositLedger(ledger_engine, LedgerSettings(incoming_account_template="RECEIVED-{currency}"))
    assert deposits.incoming_account_reference("EUR") == "RECEIVED-EUR"
    with pytest.raises(ConfigError, match="RECEIVED-EUR"):
        _move(deposits, credit, "100.00")


@pytest.mark.parametrize("amount", ["0", "-1", "NaN", "1.000000001"])
def test_invalid_amounts_are_refused_before_the_database(deposits: DepositLedger, amount: str) -> None:
    """Zero, negative, NaN or over-precise amounts raise InvalidAmountError."""
    with pytest.raises(InvalidAmountError):
        _move(deposits, "LT-ANY", amount)


def test_concurrent_moves_of_one_credit_move_it_once(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """Ten concurrent moves with the same key all return one and the same transfer; the money moves once."""
    credit = _receive(admin, "pay-1", "60.00")
    _receive(admin, "pay-2", "1000.00")
    results = _race(10, lambda i: _move(deposits, credit, "60.00"))
    assert all(isinstance(r, Transfer) for r in results), results
    assert len({r.reference for r in results if isinstance(r, Transfer)}) == 1
    assert _moves(ledger_engine) == 1
    assert _balance(ledger_engine, ALICE) == Decimal("60.00")


def test_move_logs_never_carry_a_full_account_number(admin: IncomingFundsAdmin, deposits: DepositLedger) -> None:
    """Move logs show only the last four characters of the customer account, never the payer's account."""
    credit = _receive(admin, "pay-1", "10.00")
    with capture_logs() as logs:
        _move(deposits, credit, "10.00")
        _move(deposits, credit, "10.00")
    assert [entry["event"] for entry in logs] == ["ledger.deposit_moved", "ledger.deposit_already_moved"]
    assert logs[0]["account"] == "****6769"
    assert ALICE not in repr(logs) and PAYER not in repr(logs)


def test_batch_ledger_role_can_read_credits_and_move_them(dsns: Dsns, admin: IncomingFundsAdmin) -> None:
    """With only the documented batch_ledger grants the job lists credits and moves one, but cannot forge a credit."""
    credit = _receive(admin, "pay-1", "100.00")
    login = f"svc_deposit_{uuid.uuid4().hex[:10]}"
    owner = make_engine(dsns.ledger, pool_size=1)
    try:
        with owner.begin() as conn:
            conn.connection.cursor().execute(_grants_block())
            conn.execute(sa.text(f"CREATE ROLE {login} LOGIN"))
            conn.execute(sa.text(f"GRANT batch_ledger TO {login}"))
    finally:
        owner.dispose()
    url = make_url(sqlalchemy_url(dsns.ledger)).set(username=login, password=None)
    engine = make_engine(url.render_as_string(hide_password=False), pool_size=1)
    try:
        job = DepositLedger(engine, LedgerSettings())
        assert [c.reference for c in job.incoming_credits(0, 10)] == [credit]
        assert _move(job, credit, "100.00").counter_account_reference == ALICE
        with pytest.raises(sa.exc.DBAPIError, match="permission denied"), engine.begin() as conn:
            conn.execute(
                sa.text(
                    """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount,
                              currency, value_date, counterparty, beneficiary_reference)
                       SELECT 'forged', n.id, i.id, 1, 'EUR', current_date, 'x', 'me'
                         FROM ledger.accounts n, ledger.accounts i
                        WHERE n.reference = 'NOSTRO-EUR' AND i.reference = 'INCOMING-EUR'"""
                )
            )
    finally:
        engine.dispose()
