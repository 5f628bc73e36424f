"""Payouts the core banking system made to customers' counter accounts (broker integration by InvestSuite).

How they reach the ledger (docs/ledger-contract.md "Payouts made by the bank"): InvestSuite frees the cash at
the broker and moves it to the bank's house account; the bank's core banking system then pays the customer's
counter account — a transfer out of the house account (into the payout clearing account of the currency in
the reference ledger) whose counterparty is the counter account and whose ``customer_reference`` names the
customer account it was paid for. The job reads them per value date (``BankPayoutLedger``, read-only) and
announces each to InvestSuite; ``BankPayoutAdmin`` books such payouts for the demo, the tests and the
benchmarks, as a bank's system would. Never used by the job to move money.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from batch.adapters.ledger import HOUSE_KIND, LedgerAdmin, _check_amount, _check_currency, translated
from batch.adapters.sqlfiles import load_queries
from batch.errors import LedgerConflictError

Q = load_queries("ledger_bank_payouts")

#: the house account InvestSuite delivers a customer's freed cash to, in the reference ledger
BROKER_HOUSE_TEMPLATE = "BROKER-{currency}"


@dataclass(frozen=True)
class LedgerBankPayout:
    """One payout to a customer's counter account, as the ledger holds it."""

    id: int  # the ledger transfer id (a value date's payouts are read in id order)
    reference: str  # the ledger transfer reference: the event's Idempotency-Key
    customer_account: str | None
    counter_account: str
    amount: Decimal
    currency: str
    value_date: date


def _payout(row: Any) -> LedgerBankPayout:
    return LedgerBankPayout(
        id=int(row.id),
        reference=row.reference,
        customer_account=row.customer_reference,
        counter_account=row.counterparty,
        amount=row.amount,
        currency=row.currency.strip(),
        value_date=row.value_date,
    )


class BankPayoutLedger:
    """The job's read-only view of the bank's payouts (the ``batch_ledger`` role's SELECT suffices)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def bank_payouts(self, value_date: date, after_id: int, limit: int) -> list[LedgerBankPayout]:
        """The value date's payouts after ``after_id``, in id order, at most ``limit``."""
        params = {"value_date": value_date, "after_id": after_id, "limit": limit}
        with translated(self._engine.url), self._engine.connect() as conn:
            return [_payout(row) for row in conn.execute(Q.bank_payouts.text, params)]

    def bank_payouts_by_reference(self, references: Sequence[str]) -> dict[str, LedgerBankPayout]:
        """The payouts among these transfer references (a reference that is no such payout is absent)."""
        if not references:
            return {}
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(Q.bank_payouts_by_reference.text, {"references": list(references)})
            return {row.reference: _payout(row) for row in rows}

    def bank_payout_totals(self, value_date: date) -> dict[str, tuple[int, Decimal]]:
        """Currency -> (count, sum) of the value date's payouts to counter accounts."""
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(Q.bank_payout_totals.text, {"value_date": value_date})
            return {row.currency.strip(): (int(row.payouts), Decimal(row.amount)) for row in rows}


class BankPayoutAdmin(LedgerAdmin):
    """``LedgerAdmin`` plus what a bank's core banking system does here: pay a customer's counter account."""

    def pay_counter_account(
        self,
        customer_account: str | None,
        counter_account: str,
        amount: Decimal,
        currency: str,
        value_date: date,
        key: str,
    ) -> str:
        """Book a payout ``BROKER-{CCY}`` -> payout clearing, to ``counter_account``; idempotent by key.

        Returns the transfer's reference. A repeat of ``key`` with other figures is a ``LedgerConflictError``.
        """
        _check_amount(amount)
        _check_currency(currency)
        clearing = self.ensure_clearing_account(currency)
        with translated(self._engine.url), self._engine.begin() as conn:
            house_id = self._open(conn, BROKER_HOUSE_TEMPLATE.format(currency=currency), currency, "bank", HOUSE_KIND)
            clearing_id = self._open(conn, clearing, currency, "bank", "PAYOUT_CLEARING")
            conn.execute(
                Q.insert_bank_payout.text,
                {
                    "key": key,
                    "debit": house_id,
                    "credit": clearing_id,
                    "amount": amount,
                    "currency": currency,
                    "value_date": value_date,
                    "counterparty": counter_account,
                    "customer_reference": customer_account,
                },
            )
            row = conn.execute(Q.bank_payout_by_key.text, {"key": key}).one()
        if (row.customer_reference, row.counterparty, Decimal(row.amount), row.currency.strip()) != (
            customer_account,
            counter_account,
            amount,
            currency,
        ):
            raise LedgerConflictError(f"payout key {key} was already used for another transfer")
        return str(row.reference)
