"""``batch reconcile`` through the CLI: a clean night, then changes made outside the job, each named.

One seeded scenario is paid once per module; each test then changes the ledger or InvestSuite the
way someone outside the job would (SQL on the ledger, the sandbox's public API) for its own portfolio
and checks that the reconciliation names it. The oracles read the databases directly.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from batch.sandbox.seed import libpq_dsn, portfolios_by_case, seed_scenario
from tests.e2e.conftest import World
from tests.e2e.helpers import explain, fetch, read_state

BUSINESS_DATE = "2026-06-01"


@dataclass(frozen=True)
class Paid:
    world: World
    run_id: str
    clean: subprocess.CompletedProcess[str]
    paid: list[dict[str, Any]]  # COMPLETED payouts of the run, one per test to change


@pytest.fixture(scope="module")
def paid(new_world: Callable[[], World]) -> Paid:
    """A seeded book paid once, and the reconciliation of its date right after."""
    world = new_world()
    seed_scenario(world.dsns.sandbox, world.dsns.ledger, size=40)
    run = world.cli("run", "--date", BUSINESS_DATE, "--trigger", "test")
    assert run.returncode == 3, explain(run)  # one payout held above the cap
    clean = world.cli("reconcile", "--date", BUSINESS_DATE)
    state = read_state(world.dsns)
    payouts = [p for p in state.payouts if p["state"] == "COMPLETED" and p["currency"].strip() == "EUR"]
    return Paid(world, str(state.runs[0]["id"]), clean, payouts)


def _reconcile(world: World, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = world.cli("reconcile", *args, "--format", "json")
    assert done.returncode in (0, 3), explain(done)
    return done, json.loads(done.stdout)


def test_clean_night_reconciles_with_zero_breaks(paid: Paid) -> None:
    """Right after the run, the date's reconciliation exits 0 and says 0 breaks, every payout checked."""
    assert paid.clean.returncode == 0, explain(paid.clean)
    first = paid.clean.stdout.splitlines()[0]
    completed = len(fetch(paid.world.dsns.journal, "SELECT id FROM batch.payouts WHERE state = 'COMPLETED'"))
    assert first.endswith(f"{completed + 1} payouts checked, 0 breaks"), first  # + the HELD payout
    (run,) = fetch(paid.world.dsns.journal, "SELECT summary FROM batch.runs")
    assert run["summary"]["reconcile"]["breaks"] == 0


def test_ledger_payout_posted_outside_the_job_is_named(paid: Paid) -> None:
    """A payout transfer inserted straight into the ledger: exit 3, UNKNOWN_LEDGER_PAYOUT with its reference."""
    with psycopg.connect(libpq_dsn(paid.world.dsns.ledger)) as conn:
        # a paid customer whose account still holds the amount (a full withdrawal may have emptied it)
        row = conn.execute(
            "SELECT reference FROM ledger.accounts WHERE reference = ANY(%s) AND balance >= 100 ORDER BY reference",
            [[p["ledger_account"] for p in paid.paid]],
        ).fetchone()
        assert row is not None
        (account,) = row
        inserted = conn.execute(
            """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount, currency,
                                             value_date, counterparty, description)
               SELECT 'manual-outside-the-job', d.id, c.id, 12.34, 'EUR', %s, 'BE00 0000 0000 0000', 'by hand'
                 FROM ledger.accounts d, ledger.accounts c WHERE d.reference = %s AND c.reference = 'CLEARING-EUR'
               RETURNING reference""",
            [BUSINESS_DATE, account],
        ).fetchone()
    assert inserted is not None  # INSERT ... SELECT found the customer and clearing accounts
    (reference,) = inserted
    done, document = _reconcile(paid.world, "--date", BUSINESS_DATE)
    assert done.returncode == 3
    found = [b for b in document["breaks"] if b["type"] == "UNKNOWN_LEDGER_PAYOUT"]
    assert [(b["reference"], b["found"], b["evidence"]["idempotency_key"]) for b in found] == [
        (reference, "12.34", "manual-outside-the-job")
    ]
    text = paid.world.cli("reconcile", "--date", BUSINESS_DATE)
    assert text.returncode == 3 and "[UNKNOWN_LEDGER_PAYOUT]" in text.stdout and reference in text.stdout


def test_second_transaction_with_the_same_external_id_is_named(paid: Paid) -> None:
    """A second InvestSuite transaction with a payout's external_id, made through the API: DUPLICATE_TRANSACTION."""
    payout = paid.paid[1]
    body = {
        "external_id": payout["ledger_reference"],
        "movements": [
            {
                "type": "CASH_WITHDRAWAL",
                "status": "SETTLED",
                "datetime": "2026-06-01T10:00:00+00:00",
                "instrument_id": "$EUR",
                "quantity": -float(payout["amount"]),
            }
        ],
    }
    with paid.world.sandbox.client() as api:
        api.post(f"/portfolios/{payout['portfolio_id']}/transactions/", json=body).raise_for_status()
    done, document = _reconcile(paid.world, "--date", BUSINESS_DATE)
    assert done.returncode == 3
    (found,) = [b for b in document["breaks"] if b["type"] == "DUPLICATE_TRANSACTION"]
    assert (found["portfolio_id"], found["payout_id"]) == (payout["portfolio_id"], str(payout["id"]))
    assert payout["transaction_id"] in found["evidence"]["transaction_ids"]
    assert len(found["evidence"]["transaction_ids"]) == 2


def test_divest_raised_again_after_completion_is_named(paid: Paid) -> None:
    """The divest amount set back to the paid amount through the API: DIVEST_NOT_CLEARED on that payout."""
    payout = paid.paid[2]
    with paid.world.sandbox.client() as api:
        document = api.get(f"/portfolios/{payout['portfolio_id']}").json()
        config = document["config"]
        config["manager_settings"]["divest_amount"] = float(payout["amount"])
        api.patch(f"/portfolios/{payout['portfolio_id']}/", json={"config": config}).raise_for_status()
    done, result = _reconcile(paid.world, "--date", BUSINESS_DATE)
    assert done.returncode == 3
    (found,) = [b for b in result["breaks"] if b["type"] == "DIVEST_NOT_CLEARED"]
    assert found["portfolio_id"] == payout["portfolio_id"]
    assert Decimal(found["found"]) == payout["amount"]


def test_run_scope_reconciles_only_that_run(paid: Paid) -> None:
    """``--run ID`` checks the payouts that run created or drove, and is recorded against the run."""
    _, document = _reconcile(paid.world, "--run", paid.run_id)
    completed = fetch(paid.world.dsns.journal, "SELECT id FROM batch.payouts")
    assert document["checked"] == len(completed)
    rows = fetch(paid.world.dsns.journal, "SELECT run_id FROM batch.reconciliations WHERE run_id IS NOT NULL")
    assert {str(r["run_id"]) for r in rows} == {paid.run_id}
    wrong_date = paid.world.cli("reconcile", "--run", paid.run_id, "--date", "2026-06-02")
    assert wrong_date.returncode == 2


def test_book_reconcile_names_cash_breaks_and_orphan_accounts(paid: Paid) -> None:
    """``--book``: every REAL_MONEY portfolio; the seeded cash breaks and a customer account nobody maps to."""
    with psycopg.connect(libpq_dsn(paid.world.dsns.ledger)) as conn:
        conn.execute(
            "INSERT INTO ledger.accounts (reference, currency, owner, kind)"
            " VALUES ('ORPHAN-0001', 'EUR', 'nobody', 'CUSTOMER_INVESTMENT_CASH')"
        )
    done, document = _reconcile(paid.world, "--book")
    assert done.returncode == 3
    real_money = [
        r
        for r in fetch(paid.world.dsns.sandbox, "SELECT id FROM sandbox.portfolios")
        if r["id"] not in portfolios_by_case(paid.world.dsns.sandbox)["paper_money"]
    ]
    assert document["checked"] == len(real_money)
    types = {b["type"] for b in document["breaks"]}
    assert {"CASH_MISMATCH", "ORPHAN_LEDGER_ACCOUNT", "NO_LEDGER_ACCOUNT"} <= types
    (orphan,) = [b for b in document["breaks"] if b["type"] == "ORPHAN_LEDGER_ACCOUNT"]
    assert orphan["evidence"]["ledger_account"] == "****0001"
    recon_short = portfolios_by_case(paid.world.dsns.sandbox)["recon_break_short"][0]
    (short,) = [b for b in document["breaks"] if b["portfolio_id"] == recon_short]
    assert (short["type"], short["expected"], short["found"]) == ("CASH_MISMATCH", "1000.00", "300.00")
    assert document["stats"]["ledger_queries"] == document["stats"]["pages"] + 1
