"""Seed the deposit cases (``scenario.DEPOSIT_CASES``): portfolios, their ledger accounts, incoming credits.

``seed_deposits`` adds its own portfolios (external ids ``DEP-NNNNNN``, no divest pending, so the withdrawal
flow never lists them) to the sandbox, recorded in ``sandbox.scenario`` under the deposit case names
(``seed.portfolios_by_case`` finds them; ``seed_scenario`` ignores them), opens their customer accounts in the
ledger with an opening balance equal to the cash, and books the incoming credits as the bank's payment
system would (``IncomingFundsAdmin.receive_credit``: ``NOSTRO-{CCY}`` -> ``INCOMING-{CCY}``, naming the
beneficiary). It works beside ``seed_scenario`` or alone, and is idempotent: a second call with the same
``rng_seed`` adds nothing and returns the same credits. Deterministic for a seed (ids, IBANs, amounts); the
ledger numbers the credits' references itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from batch.adapters.ledger_deposits import IncomingFundsAdmin
from batch.adapters.postgres import make_engine
from batch.sandbox.scenario import DEPOSIT_CASES
from batch.sandbox.seed import (
    SEED_EPOCH,
    SEED_VALUE_DATE,
    SeededPortfolio,
    _migrate,
    iban,
    libpq_dsn,
    portfolio_document,
    user_document,
)
from batch.sandbox.store import dumps, new_id
from batch.settings import LedgerSettings

#: portfolio index of the first deposit case (far above any seeded scenario's indices)
INDEX_BASE = 700_000


@dataclass(frozen=True)
class PlannedCredit:
    """One incoming payment to book: its idempotency key, beneficiary, amount, currency and payer."""

    case: str
    key: str
    beneficiary: str | None
    amount: Decimal
    currency: str
    payer: str


@dataclass(frozen=True)
class DepositPlan:
    portfolios: list[SeededPortfolio]
    #: each mapped portfolio's customer account: reference -> (currency, opening balance, owner)
    accounts: dict[str, tuple[str, Decimal, str]]
    credits: list[PlannedCredit]


#: case -> (status, money type, archived, currency, cash, funded) of its portfolio; cases absent have none
_PORTFOLIOS: dict[str, tuple[str, str, bool, str, Decimal, bool]] = {
    "deposit_active": ("ACTIVE", "REAL_MONEY", False, "EUR", Decimal("200.00"), True),
    "deposit_waiting_for_funds": ("WAITING_FOR_FUNDS", "REAL_MONEY", False, "EUR", Decimal("0.00"), False),
    "deposit_archived": ("ACTIVE", "REAL_MONEY", True, "EUR", Decimal("200.00"), True),
    "deposit_paper_money": ("ACTIVE", "PAPER_MONEY", False, "EUR", Decimal("200.00"), True),
    "deposit_inactive": ("INACTIVE", "REAL_MONEY", False, "EUR", Decimal("200.00"), True),
    "deposit_currency_mismatch": ("ACTIVE", "REAL_MONEY", False, "EUR", Decimal("200.00"), True),
    "deposit_sub_minor": ("ACTIVE", "REAL_MONEY", False, "EUR", Decimal("200.00"), True),
    "deposit_jpy": ("ACTIVE", "REAL_MONEY", False, "JPY", Decimal(100000), True),
    "deposit_twice": ("ACTIVE", "REAL_MONEY", False, "EUR", Decimal("200.00"), True),
}
#: case -> the credits' (amount, currency); the beneficiary is the case's portfolio unless said otherwise
_CREDITS: dict[str, list[tuple[str, str]]] = {
    "deposit_active": [("1500.00", "EUR")],
    "deposit_waiting_for_funds": [("1000.00", "EUR")],
    "deposit_archived": [("300.00", "EUR")],
    "deposit_paper_money": [("300.00", "EUR")],
    "deposit_inactive": [("300.00", "EUR")],
    "deposit_unmapped": [("400.00", "EUR")],
    "deposit_no_beneficiary": [("450.00", "EUR")],
    "deposit_currency_mismatch": [("500.00", "USD")],
    "deposit_sub_minor": [("10.005", "EUR")],
    "deposit_jpy": [("50000", "JPY")],
    "deposit_twice": [("250.00", "EUR"), ("750.00", "EUR")],
}


def seeded_portfolio(rng: random.Random, index: int, case: str, **document: Any) -> SeededPortfolio:
    """A portfolio of a seeded case (no positions) and its owner; ids deterministic for ``rng`` and ``index``."""
    stamp_ms = int(SEED_EPOCH.timestamp() * 1000) + index
    portfolio_id = new_id("P", timestamp_ms=stamp_ms, randomness=rng.randbytes(10))
    user_id = new_id("U", timestamp_ms=stamp_ms, randomness=rng.randbytes(10))
    doc = portfolio_document(portfolio_id, user_id, index, positions={}, **document)
    return SeededPortfolio(index, case, doc, user_document(user_id, index, rng), None)


def plan_deposits(rng_seed: int = 42) -> DepositPlan:
    """The portfolios, accounts and credits of every deposit case, in ``DEPOSIT_CASES`` order."""
    rng = random.Random(rng_seed)
    portfolios: list[SeededPortfolio] = []
    accounts: dict[str, tuple[str, Decimal, str]] = {}
    credits: list[PlannedCredit] = []
    for number, case in enumerate(DEPOSIT_CASES):
        index = INDEX_BASE + number
        external_id = f"DEP-{index:06d}"
        beneficiary: str | None = external_id
        if case in _PORTFOLIOS:
            status, money_type, archived, currency, cash, funded = _PORTFOLIOS[case]
            seeded = seeded_portfolio(
                rng,
                index,
                case,
                currency=currency,
                cash=cash,
                money_type=money_type,
                status=status,
                archived=archived,
                external_id=external_id,
            )
            if not funded:
                seeded.portfolio["funded_since"] = None
            portfolios.append(seeded)
            if money_type == "REAL_MONEY":
                accounts[external_id] = (currency, cash, seeded.user["id"])
        elif case == "deposit_unmapped":
            beneficiary = f"DEP-UNMAPPED-{index:06d}"
        else:
            beneficiary = None
        for n, (amount, currency) in enumerate(_CREDITS[case]):
            payer = iban(rng, "NL")
            credits.append(
                PlannedCredit(case, f"seed-deposit:{case}:{n}", beneficiary, Decimal(amount), currency, payer)
            )
    return DepositPlan(portfolios, accounts, credits)


def insert_portfolios(sandbox_dsn: str, portfolios: list[SeededPortfolio]) -> None:
    """Add seeded portfolios and their owners to the sandbox, under their case names (idempotent)."""
    with psycopg.connect(libpq_dsn(sandbox_dsn)) as conn, conn.cursor() as cur:
        for seeded in portfolios:
            user, portfolio = seeded.user, seeded.portfolio
            cur.execute(
                "INSERT INTO sandbox.users (id, doc) VALUES (%s, %s::json) ON CONFLICT (id) DO NOTHING",
                [user["id"], dumps(user)],
            )
            cur.execute(
                "INSERT INTO sandbox.portfolios (id, doc) VALUES (%s, %s::json) ON CONFLICT (id) DO NOTHING",
                [portfolio["id"], dumps(portfolio)],
            )
            cur.execute(
                "INSERT INTO sandbox.scenario (portfolio_id, case_name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [portfolio["id"], seeded.case],
            )


def seed_deposits(sandbox_dsn: str, ledger_dsn: str, *, rng_seed: int = 42) -> dict[str, list[str]]:
    """Seed every deposit case; return case -> the ledger references of its incoming credits (booking order).

    The customer accounts and credits go through ``IncomingFundsAdmin`` (idempotent by key), the opening
    balances are fundings from ``HOUSE-{CCY}`` keyed ``seed-deposit-opening:<account>``.
    """
    _migrate(sandbox_dsn, "sandbox")
    _migrate(ledger_dsn, "ledger")
    plan = plan_deposits(rng_seed)
    insert_portfolios(sandbox_dsn, plan.portfolios)
    engine = make_engine(ledger_dsn, pool_size=1, application_name="investsuite-sandbox-seed")
    try:
        admin = IncomingFundsAdmin(engine, LedgerSettings())
        for reference, (currency, balance, owner) in plan.accounts.items():
            admin.open_account(reference, currency, owner)
            if balance > 0:
                admin.fund(reference, balance, SEED_VALUE_DATE, f"seed-deposit-opening:{reference}")
        references: dict[str, list[str]] = {case: [] for case in DEPOSIT_CASES}
        for credit in plan.credits:
            booked = admin.receive_credit(
                credit.beneficiary,
                credit.amount,
                credit.currency,
                SEED_VALUE_DATE,
                credit.key,
                counterparty=credit.payer,
            )
            references[credit.case].append(booked.reference)
    finally:
        engine.dispose()
    return references
