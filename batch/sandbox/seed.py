"""Seed a scenario: sandbox portfolios and users plus the matching core banking ledger accounts.

Deterministic for a given ``rng_seed``. Everything goes in with COPY; the ledger is funded with real
``ledger.transfers`` from a BANK_HOUSE account per currency (``HOUSE-{CCY}``, may go negative),
committed in batches so the house account's row versions do not pile up in one transaction.
The ledger account of a portfolio is the one whose reference is the portfolio's ``external_id``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from batch.adapters.migrations import migrate
from batch.adapters.postgres import make_engine
from batch.sandbox.scenario import CASES, DEFAULT_CASE, DEPOSIT_CASES
from batch.sandbox.store import Document, dumps, new_id

SEED_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
SEED_VALUE_DATE = date(2026, 1, 1)
TRANSFER_BATCH = 1000
ISINS = ("IE00B4L5Y983", "IE00B3RBWM25", "LU0274208692", "BE0974293251", "US0378331005")
FULL_WITHDRAWAL = Decimal("1E+100")
_BANK_ACCOUNTS = (("HOUSE", "BANK_HOUSE"), ("CLEARING", "PAYOUT_CLEARING"))


@dataclass
class LedgerAccountPlan:
    reference: str
    currency: str
    balance: Decimal
    hold: Decimal | None = None


@dataclass
class SeededPortfolio:
    index: int
    case: str
    portfolio: Document
    user: Document
    ledger: LedgerAccountPlan | None
    extra: dict[str, Any] = field(default_factory=dict)


def libpq_dsn(dsn: str) -> str:
    """A DSN psycopg accepts (drops SQLAlchemy's ``+psycopg`` driver suffix)."""
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


def iban(rng: random.Random, country: str = "BE") -> str:
    """A syntactically valid IBAN (mod-97 check digits) with a random 12-digit BBAN."""
    bban = "".join(rng.choice("0123456789") for _ in range(12))
    letters = "".join(str(ord(c) - 55) for c in country)
    check = 98 - int(bban + letters + "00") % 97
    return f"{country}{check:02d}{bban}"


def user_document(user_id: str, index: int, rng: random.Random, *, counter_account: bool = True) -> Document:
    stamp = (SEED_EPOCH + timedelta(seconds=index)).isoformat()
    return {
        "id": user_id,
        "external_id": f"CUST-{index:06d}",
        "first_name": "Customer",
        "last_name": f"No. {index}",
        "email": f"customer{index}@example.com",
        "counter_account": {
            "bank_account_number": iban(rng),
            "bank_account_number_type": "IBAN",
            "bank_id": "GEBABEBB",
            "bank_id_type": "BIC",
        }
        if counter_account
        else None,
        "creation_datetime": stamp,
        "version": 1,
        "version_datetime": stamp,
        "deleted": False,
    }


def portfolio_document(
    portfolio_id: str,
    user_id: str,
    index: int,
    *,
    currency: str = "EUR",
    cash: Decimal = Decimal("1000.00"),
    positions: dict[str, Decimal] | None = None,
    divest_amount: Any = None,
    money_type: str = "REAL_MONEY",
    status: str = "ACTIVE",
    archived: bool = False,
    deleted: bool = False,
    external_id: str | None = None,
) -> Document:
    """A portfolio as InvestSuite returns it (Robo Advisor, discretionary)."""
    stamp = (SEED_EPOCH + timedelta(seconds=index)).isoformat()
    holdings: dict[str, Any] = {f"${currency}": cash}
    holdings.update(positions or {})
    return {
        "id": portfolio_id,
        "external_id": external_id if external_id is not None else f"CASH-{index:06d}",
        "name": f"Robo portfolio {index}",
        "owned_by_user_id": user_id,
        "owned_by_user_ids": [],
        "readable_by": [],
        "modifiable_by": [],
        "base_currency": currency,
        "money_type": money_type,
        "config": {
            "manager": "ROBO_ADVISOR_DISCRETIONARY",
            "manager_version": 1,
            "manager_settings": {
                "active": True,
                "broker_provider": "CLIENT",
                "policy_id": "Y01FHAR57WS6Q8AV1GH5EATYKP",
                "goal_id": "L01FHAR57WS6Q8AV1GH5EATYKP",
                "horizon_id": "H01FHAR57WS6Q8AV1GH5EATYKP",
                "risk_profile_id": "K01FHAR57WS6Q8AV1GH5EATYKP",
                "tags": [],
                "divest_amount": divest_amount,
                "start_amount": Decimal("1000"),
                "recurring_deposit_amount": None,
            },
        },
        "brokerage_account": None,
        "portfolio": holdings,
        "funded_since": stamp,
        "archived": archived,
        "status": status,
        "deleted": deleted,
        "creation_datetime": stamp,
        "version": 1,
        "version_datetime": stamp,
        "version_authored_by_user_id": user_id,
    }


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randint(low * 100, high * 100)).scaleb(-2)


def _plan_case(case: str, index: int, rng: random.Random) -> SeededPortfolio:
    portfolio_id = new_id("P", timestamp_ms=int(SEED_EPOCH.timestamp() * 1000) + index, randomness=rng.randbytes(10))
    user_id = new_id("U", timestamp_ms=int(SEED_EPOCH.timestamp() * 1000) + index, randomness=rng.randbytes(10))
    reference = f"CASH-{index:06d}"
    some_positions = {rng.choice(ISINS): Decimal(rng.randint(1, 5000)).scaleb(-1)}
    currency = "EUR"
    cash = Decimal("1000.00")
    ledger_balance: Decimal | None = cash
    ledger_currency: str | None = None
    hold: Decimal | None = None
    options: dict[str, Any] = {}
    divest: Any = Decimal("100.00")
    positions: dict[str, Decimal] = some_positions
    counter_account = True

    served_as_strings = False
    if case == DEFAULT_CASE:
        currency = "EUR" if rng.random() < 0.8 else "USD"
        cash = _money(rng, 1000, 50000)
        divest = _money(rng, 10, int(min(cash / 2, Decimal(20000))))
        ledger_balance = cash
        served_as_strings = rng.random() < 0.3  # InvestSuite serves some quantities as strings
    elif case == "string_positions":
        cash, divest, served_as_strings = Decimal("2250.00"), Decimal("500.00"), True
        positions = {ISINS[0]: Decimal("12.5"), ISINS[1]: Decimal(0)}
        ledger_balance = cash
    elif case == "exponent_values":
        cash, divest, positions = Decimal("1.0E+3"), Decimal("2.5E+2"), {ISINS[2]: Decimal("1.25E+1")}
        ledger_balance = Decimal("1000.00")
    elif case == "missing_cash_key":
        options["cash_key"] = False
    elif case == "cash_too_precise":
        cash, ledger_balance = Decimal("1000.005"), Decimal("1000.00")
    elif case == "undocumented_config_field":
        options["config_extra"] = {"display_order": 3}
    elif case == "insufficient_cash":
        cash, divest = Decimal("100.00"), Decimal("5000.00")
        ledger_balance = cash
    elif case == "full_no_positions":
        cash, divest, positions = Decimal("2500.00"), FULL_WITHDRAWAL, {ISINS[0]: Decimal(0)}
        ledger_balance = cash
    elif case == "full_with_positions":
        cash, divest, positions = Decimal("300.00"), FULL_WITHDRAWAL, {ISINS[1]: Decimal("12.5")}
        ledger_balance = cash
    elif case == "paper_money":
        options["money_type"] = "PAPER_MONEY"
        ledger_balance = None
    elif case == "archived":
        options["archived"] = True
    elif case == "deleted":
        options["deleted"] = True
    elif case == "ineligible_status":
        options["status"] = "WAITING_FOR_FUNDS"
    elif case == "no_ledger_account":
        ledger_balance = None
    elif case == "currency_mismatch":
        ledger_currency = "USD"
    elif case == "recon_break_enough":
        divest, ledger_balance = Decimal("500.00"), Decimal("800.00")
    elif case == "recon_break_short":
        divest, ledger_balance = Decimal("500.00"), Decimal("300.00")
    elif case == "sub_minor_amount":
        divest = Decimal("10.005")
    elif case == "jpy":
        currency, cash, divest = "JPY", Decimal(500000), Decimal("1234.5")
        ledger_balance = cash
    elif case == "kwd":
        currency, cash, divest = "KWD", Decimal("1000.000"), Decimal("125.1255")
        ledger_balance = cash
    elif case == "ledger_hold":
        divest, hold = Decimal("500.00"), Decimal("800.00")
    elif case == "negative_divest":
        divest = Decimal("-100.00")
    elif case == "string_divest":
        divest = "250.00"
    elif case == "unknown_currency":
        currency, divest = "XYZ", Decimal(100)
    elif case == "no_counter_account":
        counter_account = False
    elif case == "above_cap":
        cash, divest = Decimal("100000.00"), Decimal("60000.00")
        ledger_balance = cash
    elif case == "no_divest_zero":
        divest = Decimal("0.0")
    elif case == "no_divest_null":
        divest = None
    else:
        raise ValueError(f"unknown scenario case {case!r}")

    cash_key = options.pop("cash_key", True)
    config_extra = options.pop("config_extra", {})
    portfolio = portfolio_document(
        portfolio_id,
        user_id,
        index,
        currency=currency,
        cash=cash,
        positions=positions,
        divest_amount=divest,
        external_id=reference,
        **options,
    )
    if not cash_key:
        del portfolio["portfolio"][f"${currency}"]
    portfolio["config"].update(config_extra)
    if served_as_strings:
        portfolio["portfolio"] = {key: format(value, "f") for key, value in portfolio["portfolio"].items()}
    user = user_document(user_id, index, rng, counter_account=counter_account)
    ledger = (
        None
        if ledger_balance is None
        else LedgerAccountPlan(reference, ledger_currency or currency, ledger_balance, hold)
    )
    return SeededPortfolio(index, case, portfolio, user, ledger)


def plan_scenario(size: int, rng_seed: int = 42) -> list[SeededPortfolio]:
    """The portfolios of a scenario, in index order; every case once (size permitting), spread at random."""
    if size < 1:
        raise ValueError("size must be at least 1")
    rng = random.Random(rng_seed)
    special = [case for case in CASES if case != DEFAULT_CASE]
    positions = rng.sample(range(size), min(size, len(special)))
    case_at = dict(zip(positions, special, strict=False))
    return [_plan_case(case_at.get(index, DEFAULT_CASE), index, rng) for index in range(size)]


def _manifest_from_db(sandbox_dsn: str) -> dict[str, Any]:
    with psycopg.connect(libpq_dsn(sandbox_dsn)) as conn:
        rows = conn.execute(
            "SELECT case_name, count(*) FROM sandbox.scenario WHERE NOT case_name = ANY(%s) GROUP BY case_name",
            [list(DEPOSIT_CASES)],
        ).fetchall()
    cases = {str(name): int(count) for name, count in rows}
    return {"size": sum(cases.values()), "cases": cases, "already_seeded": True}


def portfolios_by_case(sandbox_dsn: str) -> dict[str, list[str]]:
    """The seeded portfolio ids of each case (ordered by id)."""
    with psycopg.connect(libpq_dsn(sandbox_dsn)) as conn:
        rows = conn.execute("SELECT case_name, portfolio_id FROM sandbox.scenario ORDER BY portfolio_id").fetchall()
    result: dict[str, list[str]] = {}
    for case, portfolio_id in rows:
        result.setdefault(str(case), []).append(str(portfolio_id))
    return result


def _migrate(dsn: str, component: str) -> None:
    engine = make_engine(dsn, pool_size=1, application_name="investsuite-sandbox-seed")
    try:
        migrate(engine, component)
    finally:
        engine.dispose()


def _seed_sandbox(sandbox_dsn: str, plan: list[SeededPortfolio]) -> None:
    with psycopg.connect(libpq_dsn(sandbox_dsn)) as conn, conn.cursor() as cur:
        with cur.copy("COPY sandbox.users (id, doc) FROM STDIN") as copy:
            for seeded in plan:
                copy.write_row((seeded.user["id"], dumps(seeded.user)))
        with cur.copy("COPY sandbox.portfolios (id, doc, version) FROM STDIN") as copy:
            for seeded in plan:
                copy.write_row((seeded.portfolio["id"], dumps(seeded.portfolio), 1))
        with cur.copy("COPY sandbox.scenario (portfolio_id, case_name) FROM STDIN") as copy:
            for seeded in plan:
                copy.write_row((seeded.portfolio["id"], seeded.case))


def _seed_ledger(ledger_dsn: str, plan: list[SeededPortfolio]) -> int:
    accounts = [s for s in plan if s.ledger is not None]
    currencies = sorted(
        {s.ledger.currency for s in accounts if s.ledger} | {str(s.portfolio["base_currency"]) for s in plan}
    )
    with psycopg.connect(libpq_dsn(ledger_dsn)) as conn:
        with conn.cursor() as cur:
            cur.executemany(  # ON CONFLICT: seed_deposits may have opened HOUSE-{CCY} already
                "INSERT INTO ledger.accounts (reference, currency, owner, kind) VALUES (%s, %s, 'BANK', %s) "
                "ON CONFLICT (reference) DO NOTHING",
                [(f"{name}-{ccy}", ccy, kind) for ccy in currencies for name, kind in _BANK_ACCOUNTS],
            )
            with cur.copy("COPY ledger.accounts (reference, currency, owner, kind) FROM STDIN") as copy:
                for seeded in accounts:
                    assert seeded.ledger is not None
                    copy.write_row(
                        (seeded.ledger.reference, seeded.ledger.currency, seeded.user["id"], "CUSTOMER_INVESTMENT_CASH")
                    )
            ids = {str(ref): int(i) for i, ref in cur.execute("SELECT id, reference FROM ledger.accounts")}
        conn.commit()
        funded = [s for s in accounts if s.ledger is not None and s.ledger.balance > 0]
        for start in range(0, len(funded), TRANSFER_BATCH):
            with conn.cursor() as cur:
                columns = (
                    "idempotency_key, debit_account_id, credit_account_id, amount, currency, value_date, "
                    "counterparty, description"
                )
                with cur.copy(f"COPY ledger.transfers ({columns}) FROM STDIN") as copy:
                    for seeded in funded[start : start + TRANSFER_BATCH]:
                        assert seeded.ledger is not None
                        copy.write_row(
                            (
                                f"seed-{seeded.index}",
                                ids[f"HOUSE-{seeded.ledger.currency}"],
                                ids[seeded.ledger.reference],
                                seeded.ledger.balance,
                                seeded.ledger.currency,
                                SEED_VALUE_DATE,
                                "OPENING-BALANCE",
                                "opening balance (seeded scenario)",
                            )
                        )
            conn.commit()
        with conn.cursor() as cur, cur.copy("COPY ledger.holds (account_id, amount, reason) FROM STDIN") as copy:
            for seeded in accounts:
                if seeded.ledger is not None and seeded.ledger.hold:
                    copy.write_row((ids[seeded.ledger.reference], seeded.ledger.hold, "card authorisation"))
        conn.commit()
    return len(accounts)


def seed_scenario(sandbox_dsn: str, ledger_dsn: str, *, size: int, rng_seed: int = 42) -> dict[str, Any]:
    """Load ``size`` portfolios (every case of ``CASES``), their users and their ledger accounts.

    Returns the manifest ``{"size", "rng_seed", "cases": {case: count}, "currencies", "ledger_accounts",
    "seconds", "already_seeded"}``. A sandbox that already holds a scenario is left alone (its manifest
    is returned with ``already_seeded: True``).
    """
    started = time.monotonic()
    _migrate(sandbox_dsn, "sandbox")
    _migrate(ledger_dsn, "ledger")
    with psycopg.connect(libpq_dsn(sandbox_dsn)) as conn:
        seeded_before = conn.execute(  # the deposit cases (seed_deposits) are not this scenario
            "SELECT EXISTS (SELECT 1 FROM sandbox.scenario WHERE NOT case_name = ANY(%s))", [list(DEPOSIT_CASES)]
        ).fetchone()
    if seeded_before and seeded_before[0]:
        return _manifest_from_db(sandbox_dsn)
    plan = plan_scenario(size, rng_seed)
    _seed_sandbox(sandbox_dsn, plan)
    ledger_accounts = _seed_ledger(ledger_dsn, plan)
    with psycopg.connect(libpq_dsn(sandbox_dsn), autocommit=True) as conn:
        # Fresh visibility map and statistics: the listing pages with index-only scans from the start.
        conn.execute("VACUUM (ANALYZE) sandbox.portfolios")
    return {
        "size": size,
        "rng_seed": rng_seed,
        "cases": dict(Counter(s.case for s in plan)),
        "currencies": dict(Counter(str(s.portfolio["base_currency"]) for s in plan)),
        "ledger_accounts": ledger_accounts,
        "seconds": round(time.monotonic() - started, 3),
        "already_seeded": False,
    }
