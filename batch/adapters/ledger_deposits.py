"""The deposit side of the core banking ledger: incoming credits, and moving one to the customer's account.

How money arrives (docs/ledger-contract.md "Deposits"): a customer pays into the bank; the bank's payment
system books the credit into a house account per currency, kind ``INCOMING_FUNDS`` (reference from
``ledger.incoming_account_template``, default ``INCOMING-{currency}``), and records on that transfer the
**beneficiary**, the reference of the customer's investment cash account it matched from the payment
reference (None when it matched nothing). With the broker integrated by the client the job moves the money
from the incoming account to the customer's account, one transfer per credit keyed
``deposit:<credit reference>``, then announces it to InvestSuite.

``DepositLedger`` is the job's port (it reads and posts; the ``batch_ledger`` role's grants suffice and
cannot set a beneficiary); ``IncomingFundsAdmin`` books incoming credits for the demo, the tests and the
benchmarks. Errors follow ``batch.adapters.ledger``: ``LedgerUnavailableError`` (transient, the outcome of a
move may be unknown: read back with ``get_transfer(key)``), ``InsufficientFundsError`` (the incoming
account does not hold the amount), ``LedgerConflictError`` (the key was used for another move),
``LedgerAccountError`` (the customer account is missing, of another kind or in another currency),
``IncomingCreditError`` (the credit named is not an incoming credit of that amount and currency) and
``ConfigError`` (no incoming account of the currency). Logs mask account references and counterparties.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from batch.adapters.ledger import (
    _SELECT_TRANSFER_BY_KEY,
    CUSTOMER_KIND,
    HOUSE_KIND,
    LedgerAdmin,
    Transfer,
    _check_amount,
    _check_currency,
    _transfer,
    translated,
)
from batch.adapters.sqlfiles import load_queries
from batch.domain.model import mask_account
from batch.errors import (
    ConfigError,
    InsufficientFundsError,
    LedgerAccountError,
    LedgerConflictError,
    LedgerUnavailableError,
    PermanentError,
)
from batch.settings import LedgerSettings

log = structlog.get_logger(__name__)

Q = load_queries("ledger_deposits")

INCOMING_KIND = "INCOMING_FUNDS"
#: the house account incoming payments come from in the reference ledger (may go negative)
NOSTRO_TEMPLATE = "NOSTRO-{currency}"
_INSUFFICIENT_CONSTRAINTS = frozenset({"insufficient_available_balance", "incoming_balance_not_negative"})


class IncomingCreditError(PermanentError):
    """The credit a move names is not a credit into an incoming account of that amount and currency."""


@dataclass(frozen=True)
class IncomingCredit:
    """One credit into an INCOMING_FUNDS account: a customer's payment waiting to be placed."""

    #: the ledger transfer id (credits are read in id order; the next page starts after the last id)
    id: int
    #: the ledger transfer reference (the key of the move is ``deposit:<reference>``)
    reference: str
    #: the customer investment cash account the payment system matched, or None
    beneficiary: str | None
    amount: Decimal
    currency: str
    value_date: date
    #: who paid (e.g. the payer's IBAN): mask it in logs
    counterparty: str
    created_at: datetime


def _credit(row: Any) -> IncomingCredit:
    return IncomingCredit(
        id=int(row.id),
        reference=row.reference,
        beneficiary=row.beneficiary,
        amount=row.amount,
        currency=row.currency.strip(),
        value_date=row.value_date,
        counterparty=row.counterparty,
        created_at=row.created_at,
    )


def _is_insufficient(exc: sa.exc.IntegrityError) -> bool:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None) in _INSUFFICIENT_CONSTRAINTS


def _account_error(row: Any, reference: str, currency: str) -> str | None:
    """Why ``row`` cannot receive a deposit in ``currency``, or None."""
    masked = mask_account(reference)
    if row is None or row.kind != CUSTOMER_KIND:
        return f"no customer investment cash account {masked} in the ledger"
    if row.currency.strip() != currency:
        return f"ledger account {masked} is in {row.currency.strip()}, the deposit in {currency}"
    return None


class DepositLedger:
    """The job's port to the deposit side of the core banking ledger."""

    def __init__(self, engine: Engine, settings: LedgerSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def incoming_account_reference(self, currency: str) -> str:
        """The incoming funds account of ``currency`` (from ``ledger.incoming_account_template``)."""
        return self._settings.incoming_account_template.format(currency=currency)

    def incoming_credits(self, after_id: int, limit: int) -> list[IncomingCredit]:
        """Credits into INCOMING_FUNDS accounts with id > ``after_id``, in id order, at most ``limit`` (one query).

        Page on by passing the last credit's id: ids only grow, so a credit booked while paging comes later.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(Q.incoming_credits.text, {"after_id": after_id, "limit": limit}).all()
        return [_credit(row) for row in rows]

    def credits_by_reference(self, references: Sequence[str]) -> dict[str, IncomingCredit]:
        """The incoming credits among these transfer references, in one query (others are absent)."""
        wanted = sorted(set(references))
        if not wanted:
            return {}
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(Q.credits_by_reference.text, {"references": wanted}).all()
        return {row.reference: _credit(row) for row in rows}

    def deposit_movements_on(self, value_date: date) -> Iterator[Transfer]:
        """Reconciliation: every incoming <-> customer transfer of the value date (moves and undos), streamed."""
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=1000).execute(
                Q.deposit_movements_on.text, {"value_date": value_date}
            )
            for row in rows:
                yield _transfer(row)

    def transfers_by_keys(self, keys: Sequence[str]) -> dict[str, Transfer]:
        """Reconciliation: the transfers posted under these idempotency keys, by key (one query)."""
        if not keys:
            return {}
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(Q.transfers_by_keys.text, {"keys": list(keys)}).all()
        return {row.idempotency_key: _transfer(row) for row in rows}

    def get_transfer(self, idempotency_key: str) -> Transfer | None:
        """The transfer posted under ``idempotency_key`` (a move's read-back), or None: ``Ledger.get_transfer``."""
        with translated(self._engine.url), self._engine.connect() as conn:
            row = conn.execute(_SELECT_TRANSFER_BY_KEY, {"key": idempotency_key}).first()
        return _transfer(row) if row is not None else None

    def move_deposit(
        self,
        *,
        idempotency_key: str,
        credit_reference: str,
        account_reference: str,
        amount: Decimal,
        currency: str,
        value_date: date,
    ) -> Transfer:
        """Move an incoming credit to the customer's account once per ``idempotency_key``.

        The move is one transfer: debit the incoming account of ``currency``, credit ``account_reference``
        (a CUSTOMER_INVESTMENT_CASH account in ``currency``), for the credit's whole amount; its
        counterparty is the credit's (the payer), its description names the credit. The returned
        ``Transfer`` has the incoming account as ``account_reference`` (debited) and the customer's as
        ``counter_account_reference`` (credited). A repeat of the key returns what was moved; the same key
        with another account, amount or currency is a ``LedgerConflictError``. The ledger's trigger refuses
        a debit beyond the incoming account's available cash (``InsufficientFundsError``).

        ``LedgerUnavailableError`` may leave the outcome unknown: read back with ``get_transfer(key)`` or move
        again with the same key.
        """
        _check_amount(amount)
        _check_currency(currency)
        incoming = self.incoming_account_reference(currency)
        try:
            with translated(self._engine.url), self._autocommit.connect() as conn:
                accounts = {
                    row.reference: row
                    for row in conn.execute(
                        Q.accounts_by_reference.text, {"references": [incoming, account_reference]}
                    ).all()
                }
                credit = conn.execute(Q.credits_by_reference.text, {"references": [credit_reference]}).first()
                refusal = self._refusal(
                    accounts, incoming, credit, credit_reference, account_reference, amount, currency
                )
                inserted = None
                if refusal is not None:
                    # a key used before (for this move, or for another: a conflict) answers first
                    existing = self._existing(conn, idempotency_key, incoming, account_reference, amount, currency)
                    if existing is None:
                        raise refusal
                else:
                    assert credit is not None  # _refusal checked it
                    inserted = conn.execute(
                        Q.insert_move.text,
                        {
                            "key": idempotency_key,
                            "debit": accounts[incoming].id,
                            "credit": accounts[account_reference].id,
                            "amount": amount,
                            "currency": currency,
                            "value_date": value_date,
                            "counterparty": credit.counterparty,
                            "description": f"deposit {credit_reference}",
                        },
                    ).scalar()
                    existing = self._existing(conn, idempotency_key, incoming, account_reference, amount, currency)
                if existing is None:  # pragma: no cover - ON CONFLICT only skips a committed row
                    raise LedgerUnavailableError("ledger transfer vanished after an idempotency conflict")
        except sa.exc.IntegrityError as exc:
            if not _is_insufficient(exc):
                raise
            available = self._available(incoming)
            log.debug(
                "ledger.deposit_refused",
                incoming_account=incoming,
                idempotency_key=idempotency_key,
                amount=str(amount),
                available=str(available),
                currency=currency,
                reason="INSUFFICIENT_FUNDS",
            )
            raise InsufficientFundsError(
                f"incoming account {incoming}: available {available} < deposit {amount} {currency}",
                available=available,
                requested=amount,
            ) from exc
        log.debug(
            "ledger.deposit_moved" if inserted is not None else "ledger.deposit_already_moved",
            account=mask_account(account_reference),
            credit_reference=credit_reference,
            idempotency_key=idempotency_key,
            reference=existing.reference,
            amount=str(amount),
            currency=currency,
            value_date=existing.value_date.isoformat(),
        )
        return existing

    def reverse_deposit(self, *, idempotency_key: str, move_key: str, value_date: date) -> Transfer:
        """Undo the move posted under ``move_key`` once per ``idempotency_key``: customer -> incoming account.

        The same amount and currency as the move, its counterparty, a description naming the move. A repeat
        of the key returns what was posted (another transfer under the key is a ``LedgerConflictError``); no
        move under ``move_key`` is an ``IncomingCreditError``; a customer account that no longer holds the
        amount is an ``InsufficientFundsError``. The ledger reads such a transfer as a reversal, never as a
        new incoming credit (``incoming_credits`` skips credits out of customer accounts).
        """
        moved = self.get_transfer(move_key)
        if moved is None:
            raise IncomingCreditError(f"no deposit move under {move_key} to undo")
        incoming, customer = moved.account_reference, moved.counter_account_reference
        try:
            with translated(self._engine.url), self._autocommit.connect() as conn:
                accounts = {
                    row.reference: row.id
                    for row in conn.execute(Q.accounts_by_reference.text, {"references": [incoming, customer]}).all()
                }
                conn.execute(
                    Q.insert_move.text,
                    {
                        "key": idempotency_key,
                        "debit": accounts[customer],
                        "credit": accounts[incoming],
                        "amount": moved.amount,
                        "currency": moved.currency,
                        "value_date": value_date,
                        "counterparty": moved.counterparty,
                        "description": f"reversal of {moved.reference} ({move_key})",
                    },
                )
                row = conn.execute(_SELECT_TRANSFER_BY_KEY, {"key": idempotency_key}).first()
        except sa.exc.IntegrityError as exc:
            if not _is_insufficient(exc):
                raise
            available = self._available(customer)
            raise InsufficientFundsError(
                f"customer account {mask_account(customer)}: available {available} < reversal {moved.amount}",
                available=available,
                requested=moved.amount,
            ) from exc
        if row is None:  # pragma: no cover - ON CONFLICT only skips a committed row
            raise LedgerUnavailableError("ledger reversal vanished after an idempotency conflict")
        undone = _transfer(row)
        posted = (undone.account_reference, undone.counter_account_reference, undone.amount, undone.currency)
        if posted != (customer, incoming, moved.amount, moved.currency):
            raise LedgerConflictError(f"ledger idempotency key {idempotency_key} was already used for another transfer")
        log.info(
            "ledger.deposit_reversed",
            account=mask_account(customer),
            move=moved.reference,
            reference=undone.reference,
            amount=str(moved.amount),
            currency=moved.currency,
        )
        return undone

    def _refusal(
        self,
        accounts: dict[str, Any],
        incoming: str,
        credit: Any,
        credit_reference: str,
        account_reference: str,
        amount: Decimal,
        currency: str,
    ) -> Exception | None:
        """Why this move cannot be posted (before the ledger's own checks), or None."""
        account_problem = _account_error(accounts.get(account_reference), account_reference, currency)
        if account_problem is not None:
            return LedgerAccountError(account_problem)
        row = accounts.get(incoming)
        if row is None or row.kind != INCOMING_KIND or row.currency.strip() != currency:
            found = "does not exist" if row is None else f"is a {row.kind} account in {row.currency.strip()}"
            return ConfigError(
                f"incoming funds account {incoming!r} for {currency} {found} in the ledger "
                "(see ledger.incoming_account_template)"
            )
        if credit is None:
            return IncomingCreditError(f"{credit_reference} is not a credit into an incoming funds account")
        if (credit.amount, credit.currency.strip()) != (amount, currency):
            return IncomingCreditError(
                f"credit {credit_reference} is {credit.amount} {credit.currency.strip()}, the move {amount} {currency}"
            )
        return None

    def _existing(
        self, conn: Connection, key: str, incoming: str, account_reference: str, amount: Decimal, currency: str
    ) -> Transfer | None:
        """The move already posted under ``key``, if it is this one; another transfer under the key conflicts."""
        row = conn.execute(_SELECT_TRANSFER_BY_KEY, {"key": key}).first()
        if row is None:
            return None
        transfer = _transfer(row)
        figures = (incoming, account_reference, amount, currency)
        posted = (transfer.account_reference, transfer.counter_account_reference, transfer.amount, transfer.currency)
        if posted != figures:
            log.warning(
                "ledger.idempotency_conflict",
                idempotency_key=key,
                account=mask_account(account_reference),
                posted_account=mask_account(transfer.counter_account_reference),
                amount=str(amount),
                posted_amount=str(transfer.amount),
                currency=currency,
                posted_currency=transfer.currency,
            )
            raise LedgerConflictError(
                f"ledger idempotency key {key} was already used for another transfer "
                f"({mask_account(transfer.counter_account_reference)}, {transfer.amount} {transfer.currency})"
            )
        return transfer

    def _available(self, reference: str) -> Decimal | None:
        with translated(self._engine.url), self._autocommit.connect() as conn:
            value = conn.execute(Q.available.text, {"reference": reference}).scalar()
        return None if value is None else Decimal(value)


class IncomingFundsAdmin(LedgerAdmin):
    """``LedgerAdmin`` plus what a bank's payment system does: book incoming payments. Never used by the job."""

    def ensure_incoming_account(self, currency: str) -> str:
        """Open the incoming funds account of ``currency`` if missing; return its reference."""
        _check_currency(currency)
        with translated(self._engine.url), self._engine.begin() as conn:
            return self._incoming(conn, currency)[0]

    def _incoming(self, conn: Connection, currency: str) -> tuple[str, int]:
        reference = self._settings.incoming_account_template.format(currency=currency)
        return reference, self._open(conn, reference, currency, "bank", INCOMING_KIND)

    def receive_credit(
        self,
        beneficiary: str | None,
        amount: Decimal,
        currency: str,
        value_date: date,
        key: str,
        counterparty: str = "UNKNOWN-PAYER",
    ) -> Transfer:
        """Book a customer's payment, ``NOSTRO-{CCY}`` -> incoming account, naming ``beneficiary``; idempotent by key.

        The nostro account (BANK_HOUSE, may go negative) and the incoming account are opened when missing.
        A repeat of ``key`` returns the credit booked; the same key with other figures is a ``LedgerConflictError``.
        """
        _check_amount(amount)
        _check_currency(currency)
        with translated(self._engine.url), self._engine.begin() as conn:
            incoming, incoming_id = self._incoming(conn, currency)
            nostro = NOSTRO_TEMPLATE.format(currency=currency)
            nostro_id = self._open(conn, nostro, currency, "bank", HOUSE_KIND)
            conn.execute(
                Q.insert_credit.text,
                {
                    "key": key,
                    "debit": nostro_id,
                    "credit": incoming_id,
                    "amount": amount,
                    "currency": currency,
                    "value_date": value_date,
                    "counterparty": counterparty,
                    "beneficiary": beneficiary,
                },
            )
            booked = conn.execute(Q.credit_by_key.text, {"key": key}).one()
            row = conn.execute(_SELECT_TRANSFER_BY_KEY, {"key": key}).one()
        figures = (booked.credit_account, booked.beneficiary, booked.amount, booked.currency.strip())
        if figures != (incoming, beneficiary, amount, currency):
            raise LedgerConflictError(f"credit key {key} was already used for another transfer")
        return _transfer(row)
