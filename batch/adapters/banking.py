"""The core banking ledger as the flows' steps see it: one port for payouts and deposits.

``Ledger`` posts payouts (customer -> payout clearing) and ``DepositLedger`` moves deposits (incoming
funds -> customer); both read transfers back by idempotency key. ``CoreBanking`` is the one object the
composition root hands to the step engine as ``batch.domain.ports.LedgerPort``.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from batch.adapters.ledger import Ledger, Transfer
from batch.adapters.ledger_deposits import DepositLedger


class CoreBanking:
    def __init__(self, payouts: Ledger, deposits: DepositLedger) -> None:
        self.payouts = payouts
        self.deposits = deposits

    def get_transfer(self, idempotency_key: str) -> Transfer | None:
        return self.payouts.get_transfer(idempotency_key)

    def post_payout(
        self,
        *,
        idempotency_key: str,
        account_reference: str,
        amount: Decimal,
        currency: str,
        value_date: date,
        counterparty: str,
        description: str,
    ) -> Transfer:
        return self.payouts.post_payout(
            idempotency_key=idempotency_key,
            account_reference=account_reference,
            amount=amount,
            currency=currency,
            value_date=value_date,
            counterparty=counterparty,
            description=description,
        )

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
        return self.deposits.move_deposit(
            idempotency_key=idempotency_key,
            credit_reference=credit_reference,
            account_reference=account_reference,
            amount=amount,
            currency=currency,
            value_date=value_date,
        )

    def reverse_deposit(self, *, idempotency_key: str, move_key: str, value_date: date) -> Transfer:
        return self.deposits.reverse_deposit(idempotency_key=idempotency_key, move_key=move_key, value_date=value_date)
