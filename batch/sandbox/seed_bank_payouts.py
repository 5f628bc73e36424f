"""Seed the cases of withdrawals with broker integration by InvestSuite: portfolios and the bank's payouts.

In that set-up InvestSuite has already freed and moved the cash at the broker and updated the portfolio
itself (divest cleared, cash lowered), and the bank's core banking has paid the customer's counter account.
``seed_bank_payouts`` adds such portfolios (external ids ``WDA-NNNNNN``, no divest pending, so the client-side
withdrawal flow never lists them) to the sandbox, recorded in ``sandbox.scenario`` under ``ANNOUNCE_CASES``,
and books the payouts in the ledger as the bank's system would (``BankPayoutAdmin.pay_counter_account``:
``BROKER-{CCY}`` -> payout clearing, counterparty the counter account, naming the customer account). Idempotent
for a seed and value date; deterministic (ids, IBANs, amounts).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from batch.adapters.ledger_bank_payouts import BankPayoutAdmin
from batch.adapters.postgres import make_engine
from batch.sandbox.seed import SeededPortfolio, _migrate, iban
from batch.sandbox.seed_deposits import insert_portfolios, seeded_portfolio
from batch.settings import LedgerSettings

#: portfolio index of the first announcement case (beside the deposit cases' 700,000)
INDEX_BASE = 800_000

#: case -> (status, money type, deleted, currency, cash InvestSuite shows after its own update); absent: none
_PORTFOLIOS: dict[str, tuple[str, str, bool, str, Decimal]] = {
    "announce_active": ("ACTIVE", "REAL_MONEY", False, "EUR", Decimal("700.00")),
    "announce_inactive": ("INACTIVE", "REAL_MONEY", False, "EUR", Decimal("0.00")),
    "announce_jpy": ("ACTIVE", "REAL_MONEY", False, "JPY", Decimal(20000)),
    "announce_twice": ("ACTIVE", "REAL_MONEY", False, "EUR", Decimal("100.00")),
    "announce_deleted": ("ACTIVE", "REAL_MONEY", True, "EUR", Decimal("0.00")),
    "announce_paper_money": ("ACTIVE", "PAPER_MONEY", False, "EUR", Decimal("50.00")),
    "announce_currency_mismatch": ("ACTIVE", "REAL_MONEY", False, "EUR", Decimal("50.00")),
    "announce_sub_minor": ("ACTIVE", "REAL_MONEY", False, "EUR", Decimal("50.00")),
}
#: case -> the payouts' (amount, currency); the customer account is the case's portfolio unless said otherwise
_PAYOUTS: dict[str, list[tuple[str, str]]] = {
    "announce_active": [("300.00", "EUR")],
    "announce_inactive": [("1250.50", "EUR")],
    "announce_jpy": [("80000", "JPY")],
    "announce_twice": [("120.00", "EUR"), ("80.00", "EUR")],
    "announce_deleted": [("90.00", "EUR")],
    "announce_paper_money": [("60.00", "EUR")],
    "announce_unmapped": [("70.00", "EUR")],
    "announce_currency_mismatch": [("40.00", "USD")],
    "announce_sub_minor": [("10.005", "EUR")],
}
ANNOUNCE_CASES = tuple(_PAYOUTS)
#: the cases whose payouts are announced, and those held with their reason
ANNOUNCED = ("announce_active", "announce_inactive", "announce_jpy", "announce_twice")
HELD = {
    "announce_deleted": "DELETED",
    "announce_paper_money": "PAPER_MONEY",
    "announce_unmapped": "UNMAPPED_ACCOUNT",
    "announce_currency_mismatch": "CURRENCY_MISMATCH",
    "announce_sub_minor": "BELOW_MINOR_UNIT",
}


@dataclass(frozen=True)
class PlannedBankPayout:
    case: str
    key: str
    customer_account: str | None
    counter_account: str
    amount: Decimal
    currency: str


def plan_bank_payouts(rng_seed: int = 43) -> tuple[list[SeededPortfolio], list[PlannedBankPayout]]:
    """The portfolios and the bank's payouts of every announcement case, in ``ANNOUNCE_CASES`` order."""
    rng = random.Random(rng_seed)
    portfolios: list[SeededPortfolio] = []
    payouts: list[PlannedBankPayout] = []
    for number, case in enumerate(ANNOUNCE_CASES):
        index = INDEX_BASE + number
        external_id: str | None = f"WDA-{index:06d}"
        if case in _PORTFOLIOS:
            status, money_type, deleted, currency, cash = _PORTFOLIOS[case]
            portfolios.append(
                seeded_portfolio(
                    rng,
                    index,
                    case,
                    currency=currency,
                    cash=cash,
                    money_type=money_type,
                    status=status,
                    deleted=deleted,
                    external_id=external_id,
                )
            )
        else:  # announce_unmapped: the bank names a customer account no portfolio maps to
            external_id = f"WDA-UNMAPPED-{index:06d}"
        for n, (amount, currency) in enumerate(_PAYOUTS[case]):
            counter = iban(rng, "BE")
            key = f"seed-bank-payout:{case}:{n}"
            payouts.append(PlannedBankPayout(case, key, external_id, counter, Decimal(amount), currency))
    return portfolios, payouts


def seed_bank_payouts(
    sandbox_dsn: str, ledger_dsn: str, value_date: date, *, rng_seed: int = 43
) -> dict[str, list[str]]:
    """Seed every announcement case; return case -> the ledger references of its payouts (booking order)."""
    _migrate(sandbox_dsn, "sandbox")
    _migrate(ledger_dsn, "ledger")
    portfolios, payouts = plan_bank_payouts(rng_seed)
    insert_portfolios(sandbox_dsn, portfolios)
    engine = make_engine(ledger_dsn, pool_size=1, application_name="investsuite-sandbox-seed")
    try:
        admin = BankPayoutAdmin(engine, LedgerSettings())
        references: dict[str, list[str]] = {case: [] for case in ANNOUNCE_CASES}
        for payout in payouts:
            reference = admin.pay_counter_account(
                payout.customer_account,
                payout.counter_account,
                payout.amount,
                payout.currency,
                value_date,
                f"{payout.key}:{value_date.isoformat()}",
            )
            references[payout.case].append(reference)
    finally:
        engine.dispose()
    return references
