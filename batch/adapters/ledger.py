"""The core banking ledger, as the job sees it: available balances, idempotent payout posts, read-back.

This module is the only code that touches the ledger database (schema ``ledger``, see
``sql/ledger/``). A payout is one double-entry transfer: debit the customer's investment cash
account, credit the payout clearing account of the currency (cash on its way to the customer's
counter account). Every post carries the payout's idempotency key, so a retried or concurrent post
of the same payout never moves money twice.

Driver errors are translated into the job's error tree (``batch.errors``):

- connection, timeout, deadlock and other operational errors -> ``LedgerUnavailableError`` (transient);
- an available balance short at posting time (checked here under a row lock, and again by the
  database trigger) -> ``InsufficientFundsError``;
- an idempotency key already used for a different payout -> ``LedgerConflictError``;
- a customer account that is missing, not an investment cash account, or in another currency than
  the payout -> ``LedgerAccountError`` (permanent: the planner should have held it, a human must look);
- a missing or misconfigured payout clearing account -> ``ConfigError``.

Logs never carry a full account number or IBAN, only ``mask_account`` of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import URL, Connection, Engine

from batch.adapters.postgres import dsn_location, unavailable_as
from batch.domain.model import LedgerView, mask_account
from batch.errors import (
    ConfigError,
    InsufficientFundsError,
    InvalidAmountError,
    LedgerAccountError,
    LedgerConflictError,
    LedgerUnavailableError,
    UnknownCurrencyError,
)
from batch.settings import LedgerSettings

log = structlog.get_logger(__name__)

CUSTOMER_KIND = "CUSTOMER_INVESTMENT_CASH"
HOUSE_KIND = "BANK_HOUSE"
CLEARING_KIND = "PAYOUT_CLEARING"
ACCOUNT_KINDS = (CUSTOMER_KIND, HOUSE_KIND, CLEARING_KIND, "INCOMING_FUNDS")

#: the ledger stores amounts as numeric(38, 8)
_LEDGER_EXPONENT = -8
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_INSUFFICIENT_CONSTRAINTS = frozenset({"insufficient_available_balance", "customer_balance_not_negative"})
_LEDGER = "core banking ledger"  # how messages name it


@dataclass(frozen=True)
class Transfer:
    """One posted ledger transfer (a payout: debit the customer account, credit clearing)."""

    reference: str
    idempotency_key: str
    account_reference: str
    counter_account_reference: str
    amount: Decimal
    currency: str
    value_date: date
    counterparty: str
    created_at: datetime


_TRANSFER_COLUMNS = """
    t.reference, t.idempotency_key, d.reference AS account_reference,
    c.reference AS counter_account_reference, t.amount, t.currency, t.value_date,
    t.counterparty, t.created_at
"""
_TRANSFER_FROM = """
    FROM ledger.transfers t
    JOIN ledger.accounts d ON d.id = t.debit_account_id
    JOIN ledger.accounts c ON c.id = t.credit_account_id
"""
_SELECT_TRANSFER_BY_KEY = sa.text(f"SELECT {_TRANSFER_COLUMNS} {_TRANSFER_FROM} WHERE t.idempotency_key = :key")
_SELECT_TRANSFERS_BY_KEYS = sa.text(f"SELECT {_TRANSFER_COLUMNS} {_TRANSFER_FROM} WHERE t.idempotency_key = ANY(:keys)")
# built once: a payout's post runs both (a text clause built per call showed in the profile, issue 27)
_SELECT_ACCOUNT = sa.text("SELECT id, currency, kind FROM ledger.accounts WHERE reference = :ref")
_INSERT_PAYOUT_TRANSFER = sa.text(
    """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id,
               amount, currency, value_date, counterparty, description)
       VALUES (:key, :debit, :credit, :amount, :currency, :value_date, :counterparty,
               :description)
       ON CONFLICT (idempotency_key) DO NOTHING
       RETURNING reference, idempotency_key, amount, currency, value_date, counterparty,
                 created_at"""
)


def _transfer(row: Any) -> Transfer:
    return Transfer(
        reference=row.reference,
        idempotency_key=row.idempotency_key,
        account_reference=row.account_reference,
        counter_account_reference=row.counter_account_reference,
        amount=row.amount,
        currency=row.currency.strip(),
        value_date=row.value_date,
        counterparty=row.counterparty,
        created_at=row.created_at,
    )


def _check_amount(amount: Decimal) -> None:
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
        raise InvalidAmountError(f"a ledger amount must be a positive finite Decimal, got {amount!r}")
    exponent = amount.as_tuple().exponent
    if (
        isinstance(exponent, int)
        and exponent < _LEDGER_EXPONENT
        and amount != amount.quantize(Decimal(1).scaleb(_LEDGER_EXPONENT))
    ):
        raise InvalidAmountError(f"the ledger keeps 8 decimals at most, got {amount}")


def _check_currency(currency: str) -> None:
    if not _CURRENCY_RE.match(currency):
        raise UnknownCurrencyError(f"not an ISO 4217 currency code: {currency!r}")


@contextmanager
def translated(where: URL) -> Iterator[None]:
    """Turn driver errors into the job's error tree; messages name host:port/dbname and the cause."""
    try:
        with unavailable_as(_LEDGER, where, LedgerUnavailableError):
            yield
    except sa.exc.TimeoutError as exc:  # no pooled connection free in time
        raise LedgerUnavailableError(f"{_LEDGER} at {dsn_location(where)}: connection pool exhausted") from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise LedgerUnavailableError(f"{_LEDGER} at {dsn_location(where)}: connection lost") from exc
        raise


def _is_insufficient(exc: sa.exc.IntegrityError) -> bool:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None) in _INSUFFICIENT_CONSTRAINTS


class Ledger:
    """The job's port to the core banking ledger."""

    def __init__(self, engine: Engine, settings: LedgerSettings) -> None:
        self._engine = engine
        self._settings = settings
        #: clearing account id per currency, once checked (accounts are never deleted)
        self._clearing_ids: dict[str, int] = {}
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def _available(self, account_reference: str) -> Decimal | None:
        """Balance minus active holds now (for the refusal's evidence; the trigger decided)."""
        with translated(self._engine.url), self._autocommit.connect() as conn:
            value = conn.execute(
                sa.text(
                    """SELECT a.balance - coalesce((SELECT sum(h.amount) FROM ledger.holds h
                                                     WHERE h.account_id = a.id AND h.released_at IS NULL), 0)
                         FROM ledger.accounts a WHERE a.reference = :ref"""
                ),
                {"ref": account_reference},
            ).scalar()
        return None if value is None else Decimal(value)

    def clearing_account_reference(self, currency: str) -> str:
        """The payout clearing account of ``currency`` (from ``ledger.clearing_account_template``)."""
        return self._settings.clearing_account_template.format(currency=currency)

    def available_balances(self, account_references: Sequence[str]) -> dict[str, LedgerView]:
        """Available cash (balance - active holds) of many customer accounts, in one query.

        Accounts that do not exist, or are not customer investment cash accounts, are absent.
        """
        refs = sorted(set(account_references))
        if not refs:
            return {}
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    """SELECT reference, currency, available FROM ledger.available_balances
                        WHERE reference = ANY(:refs) AND kind = :kind"""
                ),
                {"refs": refs, "kind": CUSTOMER_KIND},
            ).all()
        return {
            row.reference: LedgerView(
                account_reference=row.reference, currency=row.currency.strip(), available=row.available
            )
            for row in rows
        }

    def get_transfer(self, idempotency_key: str) -> Transfer | None:
        """The transfer posted under ``idempotency_key``, or None."""
        with translated(self._engine.url), self._engine.connect() as conn:
            row = conn.execute(_SELECT_TRANSFER_BY_KEY, {"key": idempotency_key}).first()
        return _transfer(row) if row is not None else None

    def get_transfers(self, idempotency_keys: Sequence[str]) -> dict[str, Transfer]:
        """The transfers posted under these keys (absent keys are simply missing), in one query."""
        keys = sorted(set(idempotency_keys))
        if not keys:
            return {}
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(_SELECT_TRANSFERS_BY_KEYS, {"keys": keys}).all()
        return {row.idempotency_key: _transfer(row) for row in rows}

    def post_payout(
        self,
        *,
        idempotency_key: str,
        account_reference: str,
        amount: Decimal,
        currency: str,
        value_date: date,
        counterparty: str,
        description: str = "",
    ) -> Transfer:
        """Post a payout once per ``idempotency_key``; a repeat returns the transfer already posted.

        Read the account (kind, currency), then one INSERT in its own transaction: the ledger's
        trigger locks both accounts, refuses a debit beyond the available cash (balance - active
        holds) and moves the balances. A repeat of the key inserts nothing and returns what was posted.

        ``LedgerUnavailableError`` may leave the outcome unknown (the connection can drop around the
        commit): read back with ``get_transfer`` before deciding, or simply post again with the
        same key.
        """
        _check_amount(amount)
        _check_currency(currency)
        if not counterparty.strip():
            raise LedgerAccountError("a payout needs the customer's counter account")
        masked = mask_account(account_reference)
        try:
            # autocommit: each statement is its own transaction. The INSERT is the posting: its trigger
            # locks both accounts, re-checks currency and available cash (balance - active holds) and
            # moves the balances, all committed before the call returns, so no lock is ever held while
            # this process does anything else (the clearing account is shared by every payout).
            with translated(self._engine.url), self._autocommit.connect() as conn:
                account = conn.execute(
                    _SELECT_ACCOUNT,
                    {"ref": account_reference},
                ).first()
                wrong_account = account is None or account.kind != CUSTOMER_KIND
                if account is None or wrong_account or account.currency.strip() != currency:
                    # a key used before (for this payout, or for another: a conflict) answers first
                    existing = self._existing(conn, idempotency_key, account_reference, amount, currency)
                    if existing is not None:
                        return existing
                if account is None or wrong_account:
                    raise LedgerAccountError(f"no customer investment cash account {masked} in the ledger")
                if account.currency.strip() != currency:
                    raise LedgerAccountError(
                        f"ledger account {masked} is in {account.currency.strip()}, the payout in {currency}"
                    )
                clearing_id = self._clearing_account_id(conn, currency)
                inserted = conn.execute(
                    _INSERT_PAYOUT_TRANSFER,
                    {
                        "key": idempotency_key,
                        "debit": account.id,
                        "credit": clearing_id,
                        "amount": amount,
                        "currency": currency,
                        "value_date": value_date,
                        "counterparty": counterparty,
                        "description": description,
                    },
                ).first()
                if inserted is None:
                    # Posted before under this key (a retry, or a concurrent post): the same payout or a conflict.
                    existing = self._existing(conn, idempotency_key, account_reference, amount, currency)
                    if existing is None:  # pragma: no cover - ON CONFLICT only skips a committed row
                        raise LedgerUnavailableError("ledger transfer vanished after an idempotency conflict")
                    return existing
                transfer = Transfer(
                    reference=inserted.reference,
                    idempotency_key=inserted.idempotency_key,
                    account_reference=account_reference,
                    counter_account_reference=self.clearing_account_reference(currency),
                    amount=inserted.amount,
                    currency=inserted.currency.strip(),
                    value_date=inserted.value_date,
                    counterparty=inserted.counterparty,
                    created_at=inserted.created_at,
                )
        except sa.exc.IntegrityError as exc:
            if not _is_insufficient(exc):
                raise
            available = self._available(account_reference)
            log.debug(
                "ledger.payout_refused",
                account=masked,
                idempotency_key=idempotency_key,
                amount=str(amount),
                available=str(available),
                currency=currency,
                reason="INSUFFICIENT_FUNDS",
            )
            raise InsufficientFundsError(
                f"ledger account {masked}: available {available} < requested {amount} {currency}",
                available=available,
                requested=amount,
            ) from exc
        log.debug(
            "ledger.payout_posted",
            account=masked,
            counterparty=mask_account(counterparty),
            idempotency_key=idempotency_key,
            reference=transfer.reference,
            amount=str(amount),
            currency=currency,
            value_date=value_date.isoformat(),
        )
        return transfer

    def _existing(
        self, conn: Connection, key: str, account_reference: str, amount: Decimal, currency: str
    ) -> Transfer | None:
        """The transfer already posted under ``key``, if it is this payout; a different payout conflicts."""
        row = conn.execute(_SELECT_TRANSFER_BY_KEY, {"key": key}).first()
        if row is None:
            return None
        transfer = _transfer(row)
        if (transfer.account_reference, transfer.amount, transfer.currency) != (
            account_reference,
            amount,
            currency,
        ):
            log.warning(
                "ledger.idempotency_conflict",
                idempotency_key=key,
                account=mask_account(account_reference),
                posted_account=mask_account(transfer.account_reference),
                amount=str(amount),
                posted_amount=str(transfer.amount),
                currency=currency,
                posted_currency=transfer.currency,
            )
            raise LedgerConflictError(
                f"ledger idempotency key {key} was already used for another payout "
                f"({mask_account(transfer.account_reference)}, {transfer.amount} {transfer.currency})"
            )
        log.debug(
            "ledger.payout_already_posted",
            idempotency_key=key,
            account=mask_account(account_reference),
            reference=transfer.reference,
        )
        return transfer

    def _clearing_account_id(self, conn: Connection, currency: str) -> int:
        cached = self._clearing_ids.get(currency)
        if cached is not None:
            return cached
        reference = self.clearing_account_reference(currency)
        row = conn.execute(
            _SELECT_ACCOUNT,
            {"ref": reference},
        ).first()
        if row is None:
            raise ConfigError(
                f"payout clearing account {reference!r} for {currency} does not exist in the ledger "
                "(see ledger.clearing_account_template)"
            )
        if row.kind != CLEARING_KIND or row.currency.strip() != currency:
            raise ConfigError(
                f"ledger account {reference!r} is a {row.kind} account in {row.currency.strip()}, "
                f"not a {CLEARING_KIND} account in {currency} (see ledger.clearing_account_template)"
            )
        self._clearing_ids[currency] = int(row.id)
        return self._clearing_ids[currency]


class LedgerAdmin:
    """Opening accounts, funding and holds: for the demo, the tests, and banks without a ledger.

    Never used by the nightly job itself.
    """

    def __init__(self, engine: Engine, settings: LedgerSettings | None = None) -> None:
        self._engine = engine
        self._settings = settings or LedgerSettings()

    def open_account(self, reference: str, currency: str, owner: str, kind: str = CUSTOMER_KIND) -> int:
        """Open an account (balance 0); return its id. Opening an existing identical account is a no-op."""
        _check_currency(currency)
        if kind not in ACCOUNT_KINDS:
            raise ConfigError(f"unknown ledger account kind {kind!r}")
        with translated(self._engine.url), self._engine.begin() as conn:
            return self._open(conn, reference, currency, owner, kind)

    def _open(self, conn: Connection, reference: str, currency: str, owner: str, kind: str) -> int:
        conn.execute(
            sa.text(
                """INSERT INTO ledger.accounts (reference, currency, owner, kind)
                   VALUES (:ref, :currency, :owner, :kind) ON CONFLICT (reference) DO NOTHING"""
            ),
            {"ref": reference, "currency": currency, "owner": owner, "kind": kind},
        )
        row = conn.execute(
            _SELECT_ACCOUNT,
            {"ref": reference},
        ).one()
        if row.currency.strip() != currency or row.kind != kind:
            raise ConfigError(
                f"ledger account {mask_account(reference)} already exists as {row.kind} in {row.currency.strip()}"
            )
        return int(row.id)

    def ensure_clearing_account(self, currency: str) -> str:
        """Open the payout clearing account of ``currency`` if missing; return its reference."""
        reference = self._settings.clearing_account_template.format(currency=currency)
        self.open_account(reference, currency, "bank", CLEARING_KIND)
        return reference

    def fund(self, reference: str, amount: Decimal, value_date: date, key: str) -> Transfer:
        """Credit ``amount`` to an account from the house account ``HOUSE-{CCY}`` (idempotent by key)."""
        _check_amount(amount)
        with translated(self._engine.url), self._engine.begin() as conn:
            account = conn.execute(
                sa.text("SELECT id, currency FROM ledger.accounts WHERE reference = :ref"), {"ref": reference}
            ).first()
            if account is None:
                raise LedgerAccountError(f"no ledger account {mask_account(reference)}")
            currency = account.currency.strip()
            house = f"HOUSE-{currency}"
            house_id = self._open(conn, house, currency, "bank", HOUSE_KIND)
            conn.execute(
                sa.text(
                    """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id,
                               amount, currency, value_date, counterparty, description)
                       VALUES (:key, :debit, :credit, :amount, :currency, :value_date, :counterparty,
                               'funding')
                       ON CONFLICT (idempotency_key) DO NOTHING"""
                ),
                {
                    "key": key,
                    "debit": house_id,
                    "credit": account.id,
                    "amount": amount,
                    "currency": currency,
                    "value_date": value_date,
                    "counterparty": house,
                },
            )
            row = conn.execute(_SELECT_TRANSFER_BY_KEY, {"key": key}).one()
        transfer = _transfer(row)
        if transfer.counter_account_reference != reference or transfer.amount != amount:
            raise LedgerConflictError(f"funding key {key} was already used for another transfer")
        return transfer

    def place_hold(self, reference: str, amount: Decimal, reason: str) -> int:
        """Block ``amount`` of an account's cash; return the hold id."""
        _check_amount(amount)
        with translated(self._engine.url), self._engine.begin() as conn:
            hold_id = conn.execute(
                sa.text(
                    """INSERT INTO ledger.holds (account_id, amount, reason)
                       SELECT id, :amount, :reason FROM ledger.accounts WHERE reference = :ref
                       RETURNING id"""
                ),
                {"ref": reference, "amount": amount, "reason": reason},
            ).scalar_one_or_none()
        if hold_id is None:
            raise LedgerAccountError(f"no ledger account {mask_account(reference)}")
        return int(hold_id)

    def release_hold(self, hold_id: int) -> None:
        """Release an active hold (a released hold cannot be released again)."""
        with translated(self._engine.url), self._engine.begin() as conn:
            released = conn.execute(
                sa.text(
                    """UPDATE ledger.holds SET released_at = greatest(now(), created_at)
                        WHERE id = :id AND released_at IS NULL RETURNING id"""
                ),
                {"id": hold_id},
            ).first()
        if released is None:
            raise LedgerConflictError(f"hold {hold_id} does not exist or is already released")
