"""``batch reconcile --date`` covers deposits: a clean date has 0 breaks in both set-ups; a missing event is named.

The oracles read the databases directly: per currency, the incoming -> customer transfers of the date, the
deposit events and the SETTLED CASH_DEPOSIT transactions InvestSuite holds must equal what the
reconciliation reports, each read from its own system.
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.seed import libpq_dsn
from batch.sandbox.seed_deposits import seed_deposits
from tests.e2e.helpers import Cli, explain, fetch
from tests.fixtures.sandbox import RunningSandbox

DATE = "2026-11-20"


def _setup(cli: Cli, integration: str) -> None:
    text = cli.config.read_text(encoding="utf-8")
    cli.config.write_text(text + f'\n[deposits]\nbroker_integration = "{integration}"\n', encoding="utf-8")


def _reconcile(cli: Cli) -> tuple[int, dict[str, Any]]:
    done = cli("reconcile", "--date", DATE, "--format", "json")
    assert done.returncode in (0, 3), explain(done)
    return done.returncode, json.loads(done.stdout)


def _per_currency(dsns: Dsns) -> dict[str, dict[str, Decimal]]:
    """Moved (ledger, incoming -> customer, value date), events and SETTLED CASH_DEPOSITs (sandbox), per currency."""
    figures: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    moved = fetch(
        dsns.ledger,
        "SELECT t.currency, t.amount FROM ledger.transfers t JOIN ledger.accounts d ON d.id = t.debit_account_id"
        " JOIN ledger.accounts c ON c.id = t.credit_account_id"
        " WHERE d.kind = 'INCOMING_FUNDS' AND c.kind = 'CUSTOMER_INVESTMENT_CASH' AND t.value_date = %s",
        [DATE],
    )
    for row in moved:
        figures[row["currency"].strip()]["moved"] += row["amount"]
    events = fetch(dsns.sandbox, "SELECT response::jsonb -> 'data' AS data FROM sandbox.events")
    for row in events:
        figures[row["data"]["currency"]]["events"] += Decimal(row["data"]["amount"])
    settled = fetch(
        dsns.sandbox,
        "SELECT m ->> 'quantity' AS quantity, p.search_doc ->> 'base_currency' AS currency"
        " FROM sandbox.transactions t JOIN sandbox.portfolios p ON p.id = t.portfolio_id,"
        " jsonb_array_elements(t.search_doc -> 'movements') m"
        " WHERE m ->> 'type' = 'CASH_DEPOSIT' AND m ->> 'status' IN ('SETTLED', 'EXECUTED')",
    )
    for row in settled:
        figures[row["currency"]]["settled"] += Decimal(row["quantity"])
    return figures


@pytest.mark.parametrize("integration", ["client", "investsuite"])
def test_a_date_with_deposits_announced_reconciles_with_zero_breaks(
    cli: Cli, sandbox: RunningSandbox, dsns: Dsns, integration: str
) -> None:
    """Both set-ups: exit 0, 0 breaks; per currency ledger moved = reconcile = events = SETTLED CASH_DEPOSITs."""
    _setup(cli, integration)
    seed_deposits(dsns.sandbox, dsns.ledger)
    run = cli("run", "--date", DATE, "--flow", "deposits")
    assert run.returncode == 3, explain(run)  # the seeded holds are new
    code, result = _reconcile(cli)
    assert (code, result["breaks"]) == (0, []), result["breaks"]
    deposits = result["stats"]["deposits"]
    assert deposits["checked"] == len(fetch(dsns.journal, "SELECT 1 FROM batch.payouts WHERE flow <> 'WITHDRAWAL'"))
    oracle = _per_currency(dsns)
    assert set(deposits["currencies"]) == set(oracle)
    for ccy, f in deposits["currencies"].items():
        assert Decimal(f["announced_journal"]) == oracle[ccy]["events"] == oracle[ccy]["settled"], ccy
        assert Decimal(f["settled_investsuite"]) == oracle[ccy]["settled"], ccy
        if integration == "client":
            assert Decimal(f["moved_ledger"]) == Decimal(f["moved_journal"]) == oracle[ccy]["moved"], ccy
            assert oracle[ccy]["moved"] == oracle[ccy]["events"], ccy
        else:
            assert Decimal(f["moved_ledger"]) == oracle[ccy]["moved"] == 0, ccy
    text = cli("reconcile", "--date", DATE)
    assert text.returncode == 0 and "Deposits: " in text.stdout, explain(text)


def test_a_deposit_whose_event_is_missing_is_a_named_break(cli: Cli, sandbox: RunningSandbox, dsns: Dsns) -> None:
    """InvestSuite loses one announced deposit: reconcile --date exits 3 naming DEPOSIT_EVENT_MISSING and the credit."""
    _setup(cli, "client")
    cases = seed_deposits(dsns.sandbox, dsns.ledger)
    run = cli("run", "--date", DATE, "--flow", "deposits")
    assert run.returncode == 3, explain(run)
    (credit,) = cases["deposit_active"]
    with psycopg.connect(libpq_dsn(dsns.sandbox)) as conn:
        conn.execute("DELETE FROM sandbox.transactions WHERE external_id = %s", [credit])
    code, result = _reconcile(cli)
    assert code == 3
    assert [(b["type"], b["evidence"]["credit"]) for b in result["breaks"]] == [("DEPOSIT_EVENT_MISSING", credit)]
    text = cli("reconcile", "--date", DATE)
    assert text.returncode == 3 and "[DEPOSIT_EVENT_MISSING]" in text.stdout and credit in text.stdout
