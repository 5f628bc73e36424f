"""docs/ledger-contract.md holds: its batch_ledger grants are enough for the adapter and refuse everything else."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from batch.adapters.ledger import Ledger, LedgerAdmin
from batch.adapters.postgres import make_engine, sqlalchemy_url
from batch.errors import InsufficientFundsError, LedgerConflictError
from batch.settings import LedgerSettings
from tests.fixtures.pg import fresh_dsns

DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger-contract.md"
ACCOUNT = "CASH-CONTRACT-0001"
TODAY = date(2026, 11, 30)


def _grants_block() -> str:
    """The ```sql block of the document that starts with the batch_ledger comment."""
    blocks: list[str] = re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    (block,) = [b for b in blocks if b.startswith("-- batch_ledger:")]
    return block


@pytest.fixture(scope="module")
def job_ledger(pg_admin_dsn: str, pg_templates: dict[str, str]) -> Iterator[Engine]:
    """An engine on a fresh ledger as a new login role holding only batch_ledger (granted by the document's SQL)."""
    dsns = fresh_dsns(pg_admin_dsn, pg_templates)
    login = f"svc_ledger_{uuid.uuid4().hex[:10]}"
    owner = make_engine(dsns.ledger, pool_size=1)
    try:
        with owner.begin() as conn:
            conn.connection.cursor().execute(_grants_block())  # verbatim, as an operator would paste it
            conn.execute(sa.text(f"CREATE ROLE {login} LOGIN"))
            conn.execute(sa.text(f"GRANT batch_ledger TO {login}"))
        admin = LedgerAdmin(owner)
        admin.open_account(ACCOUNT, "EUR", "customer-1")
        admin.ensure_clearing_account("EUR")
        admin.fund(ACCOUNT, Decimal("100.00"), TODAY, key="funding-1")
    finally:
        owner.dispose()
    url = make_url(sqlalchemy_url(dsns.ledger)).set(username=login, password=None)
    engine = make_engine(url.render_as_string(hide_password=False), pool_size=2)
    try:
        yield engine
    finally:
        engine.dispose()


def _post(ledger: Ledger, key: str, amount: str) -> object:
    return ledger.post_payout(
        idempotency_key=key,
        account_reference=ACCOUNT,
        amount=Decimal(amount),
        currency="EUR",
        value_date=TODAY,
        counterparty="BE71096123456769",
    )


def test_batch_ledger_role_can_do_everything_the_adapter_does(job_ledger: Engine) -> None:
    """With only batch_ledger: balances, a post, its idempotent repeat, a refusal, a conflict and read-back work."""
    with job_ledger.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar_one().startswith("svc_ledger_")
    ledger = Ledger(job_ledger, LedgerSettings())
    assert ledger.available_balances([ACCOUNT])[ACCOUNT].available == Decimal("100.00")
    first = _post(ledger, "payout-1", "60.00")
    assert _post(ledger, "payout-1", "60.00") == first
    with pytest.raises(InsufficientFundsError):
        _post(ledger, "payout-2", "50.00")
    with pytest.raises(LedgerConflictError):
        _post(ledger, "payout-1", "10.00")
    assert ledger.get_transfer("payout-1") == first
    assert ledger.get_transfers(["payout-1", "payout-2"]) == {"payout-1": first}
    assert ledger.available_balances([ACCOUNT])[ACCOUNT].available == Decimal("40.00")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger.accounts SET balance = balance + 1000 WHERE reference = 'CASH-CONTRACT-0001'",
        "UPDATE ledger.accounts SET kind = 'BANK_HOUSE' WHERE reference = 'CASH-CONTRACT-0001'",
        "INSERT INTO ledger.accounts (reference, currency, owner, kind) VALUES ('X-1', 'EUR', 'me', 'BANK_HOUSE')",
        "DELETE FROM ledger.transfers",
        "UPDATE ledger.transfers SET amount = 1",
        "TRUNCATE ledger.transfers",
        "INSERT INTO ledger.holds (account_id, amount, reason) SELECT id, 1, 'x' FROM ledger.accounts LIMIT 1",
        "INSERT INTO ledger.transfers (reference, idempotency_key, debit_account_id, credit_account_id, amount,"
        " currency, value_date, counterparty) SELECT 'LT-CHOSEN', 'k-9', a.id, c.id, 1, 'EUR', current_date, 'x'"
        " FROM ledger.accounts a, ledger.accounts c WHERE a.kind = 'CUSTOMER_INVESTMENT_CASH'"
        " AND c.kind = 'PAYOUT_CLEARING'",
        "CREATE TABLE ledger.mine (a int)",
    ],
    ids=[
        "balance",
        "account-kind",
        "open-account",
        "delete-transfer",
        "edit-transfer",
        "truncate",
        "place-hold",
        "choose-reference",
        "create-table",
    ],
)
def test_batch_ledger_role_is_refused_everything_else(job_ledger: Engine, statement: str) -> None:
    """Anything beyond reading and posting is refused to batch_ledger (by privileges or the ledger's triggers)."""
    with pytest.raises(sa.exc.DBAPIError) as refused, job_ledger.begin() as conn:
        conn.execute(sa.text(statement))
    message = str(refused.value.orig)
    assert re.search(r"permission denied for (table|schema) |balances change only through", message), message
