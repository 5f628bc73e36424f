"""Seeding the deposit cases: every case present, deterministic, idempotent, beside the withdrawal scenario."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.ledger import Ledger
from batch.adapters.ledger_deposits import DepositLedger
from batch.adapters.postgres import Dsns
from batch.sandbox.scenario import CASES, DEPOSIT_CASES
from batch.sandbox.seed import portfolios_by_case, seed_scenario
from batch.sandbox.seed_deposits import plan_deposits, seed_deposits
from batch.settings import LedgerSettings
from tests.fixtures.sandbox import RunningSandbox, SandboxState

#: case -> the status POST /events/deposit/ answers for its credit (the sandbox's strict rules)
EVENT_STATUS = {
    "deposit_active": 201,
    "deposit_waiting_for_funds": 201,
    "deposit_archived": 409,
    "deposit_paper_money": 409,
    "deposit_inactive": 409,
    "deposit_currency_mismatch": 422,
    "deposit_sub_minor": 400,
    "deposit_jpy": 201,
    "deposit_twice": 201,
}


def _transfer_count(engine: Engine) -> int:
    with engine.connect() as conn:
        count: int = conn.execute(sa.text("SELECT count(*) FROM ledger.transfers")).scalar_one()
    return count


def test_plan_is_deterministic_and_covers_every_deposit_case() -> None:
    """The same rng_seed plans the same portfolios and credits; every case has a credit, deposit_twice two."""
    first, again, other = plan_deposits(7), plan_deposits(7), plan_deposits(8)
    assert [p.portfolio for p in first.portfolios] == [p.portfolio for p in again.portfolios]
    assert first.credits == again.credits and first.accounts == again.accounts
    assert [p.portfolio["id"] for p in first.portfolios] != [p.portfolio["id"] for p in other.portfolios]
    assert [c.case for c in first.credits] == [*DEPOSIT_CASES, "deposit_twice"]  # deposit_twice comes last


def test_seed_books_every_case_as_described(dsns: Dsns, ledger_engine: Engine, sandbox_store: SandboxState) -> None:
    """Each case's credits are incoming credits with its beneficiary, amount and currency; portfolios match."""
    booked = seed_deposits(dsns.sandbox, dsns.ledger, rng_seed=7)
    assert set(booked) == set(DEPOSIT_CASES)
    assert {case: len(refs) for case, refs in booked.items() if len(refs) != 1} == {"deposit_twice": 2}
    credits = DepositLedger(ledger_engine, LedgerSettings()).credits_by_reference(
        [ref for refs in booked.values() for ref in refs]
    )
    by_case = {case: [credits[ref] for ref in refs] for case, refs in booked.items()}
    portfolios = {case: sandbox_store.portfolio(ids[0]) for case, ids in portfolios_by_case(dsns.sandbox).items()}
    assert set(portfolios) == set(EVENT_STATUS)

    def figures(case: str) -> list[tuple[Decimal, str]]:
        return [(credit.amount, credit.currency) for credit in by_case[case]]

    assert figures("deposit_active") == [(Decimal("1500.00"), "EUR")]
    assert figures("deposit_twice") == [(Decimal("250.00"), "EUR"), (Decimal("750.00"), "EUR")]
    assert figures("deposit_sub_minor") == [(Decimal("10.005"), "EUR")]
    assert figures("deposit_jpy") == [(Decimal(50000), "JPY")]
    assert figures("deposit_currency_mismatch") == [(Decimal("500.00"), "USD")]
    for case, portfolio in portfolios.items():
        assert portfolio is not None
        assert {credit.beneficiary for credit in by_case[case]} == {portfolio["external_id"]}, case
        assert portfolio["config"]["manager_settings"]["divest_amount"] is None
    assert by_case["deposit_no_beneficiary"][0].beneficiary is None
    unmapped = by_case["deposit_unmapped"][0].beneficiary
    assert unmapped is not None and sandbox_store.portfolio(unmapped) is None

    waiting, paper = portfolios["deposit_waiting_for_funds"], portfolios["deposit_paper_money"]
    assert waiting is not None and paper is not None
    assert (waiting["status"], waiting["funded_since"], waiting["portfolio"]) == (
        "WAITING_FOR_FUNDS",
        None,
        {"$EUR": 0},
    )
    assert paper["money_type"] == "PAPER_MONEY"
    archived, inactive = portfolios["deposit_archived"], portfolios["deposit_inactive"]
    assert archived is not None and archived["archived"] is True
    assert inactive is not None and inactive["status"] == "INACTIVE"

    accounts = Ledger(ledger_engine, LedgerSettings()).available_balances(
        [str(p["external_id"]) for p in portfolios.values() if p is not None] + [unmapped]
    )
    assert {ref: (view.currency, view.available) for ref, view in accounts.items()} == {
        str(p["external_id"]): (p["base_currency"], Decimal(p["portfolio"][f"${p['base_currency']}"]))
        for case, p in portfolios.items()
        if p is not None and case != "deposit_paper_money"
    }


def test_seed_is_idempotent(dsns: Dsns, ledger_engine: Engine) -> None:
    """Seeding twice with the same rng_seed returns the same credits and books or adds nothing more."""
    first = seed_deposits(dsns.sandbox, dsns.ledger, rng_seed=3)
    transfers = _transfer_count(ledger_engine)
    assert seed_deposits(dsns.sandbox, dsns.ledger, rng_seed=3) == first
    assert _transfer_count(ledger_engine) == transfers
    with psycopg.connect(dsns.sandbox) as conn:
        rows = conn.execute("SELECT count(*) FROM sandbox.portfolios").fetchone()
    assert rows is not None and rows[0] == len(plan_deposits(3).portfolios)


def test_seed_works_beside_the_withdrawal_scenario(dsns: Dsns) -> None:
    """Deposits seeded first do not stop seed_scenario; its manifest counts only its own cases."""
    seed_deposits(dsns.sandbox, dsns.ledger)
    manifest = seed_scenario(dsns.sandbox, dsns.ledger, size=len(CASES))
    assert manifest["already_seeded"] is False and set(manifest["cases"]) == set(CASES)
    again = seed_scenario(dsns.sandbox, dsns.ledger, size=len(CASES))
    assert again["already_seeded"] is True and again["cases"] == manifest["cases"]
    assert set(portfolios_by_case(dsns.sandbox)) == set(CASES) | set(EVENT_STATUS)
    assert seed_deposits(dsns.sandbox, dsns.ledger)["deposit_active"]


def test_seeded_cases_meet_the_sandbox_deposit_rules(
    dsns: Dsns, sandbox: RunningSandbox, ledger_engine: Engine
) -> None:
    """Announcing each seeded credit for its portfolio gets the answer its case stands for (201, 409, 422, 400)."""
    booked = seed_deposits(dsns.sandbox, dsns.ledger)
    credits = DepositLedger(ledger_engine, LedgerSettings()).credits_by_reference(
        [ref for refs in booked.values() for ref in refs]
    )
    answered: dict[str, set[int]] = {}
    with sandbox.client() as http:
        for case, ids in portfolios_by_case(dsns.sandbox).items():
            for ref in booked[case]:
                credit = credits[ref]
                amount = format(credit.amount.normalize(), "f")  # 1500.00000000 -> "1500"
                body = {"data": {"amount": amount, "currency": credit.currency, "portfolio": ids[0]}}
                status = http.post("/events/deposit/", json=body, headers={"Idempotency-Key": ref}).status_code
                answered.setdefault(case, set()).add(status)
    assert answered == {case: {status} for case, status in EVENT_STATUS.items()}
