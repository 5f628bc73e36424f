"""Deposits (funding) end to end through the CLI, per case and in both broker set-ups; a second run changes nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.seed_deposits import seed_deposits
from tests.e2e.helpers import Cli, explain, external_fingerprint, fetch, read_state
from tests.fixtures.sandbox import RunningSandbox

DATE = "2026-11-20"
ELIGIBLE = {
    "deposit_active": Decimal("1500.00"),
    "deposit_waiting_for_funds": Decimal("1000.00"),
    "deposit_jpy": Decimal("50000"),
}
HELD = {
    "deposit_archived": "ARCHIVED",
    "deposit_paper_money": "PAPER_MONEY",
    "deposit_inactive": "STATUS_NOT_ALLOWED",
    "deposit_unmapped": "UNMAPPED_ACCOUNT",
    "deposit_no_beneficiary": "NO_BENEFICIARY",
    "deposit_currency_mismatch": "CURRENCY_MISMATCH",
    "deposit_sub_minor": "BELOW_MINOR_UNIT",
}


def _deposit_decisions(dsns: Dsns) -> list[dict[str, Any]]:
    return fetch(dsns.journal, "SELECT * FROM batch.decisions WHERE flow <> 'WITHDRAWAL' ORDER BY id")


def _operations(dsns: Dsns) -> dict[str, dict[str, Any]]:
    rows = fetch(dsns.journal, "SELECT * FROM batch.payouts WHERE credit_reference IS NOT NULL")
    return {r["credit_reference"]: r for r in rows}


def _setup(cli: Cli, integration: str) -> None:
    text = cli.config.read_text(encoding="utf-8")
    cli.config.write_text(text + f'\n[deposits]\nbroker_integration = "{integration}"\n', encoding="utf-8")


@pytest.mark.parametrize("integration", ["client", "investsuite"])
def test_every_deposit_case_is_moved_and_announced_once_or_held(
    cli: Cli, sandbox: RunningSandbox, dsns: Dsns, integration: str
) -> None:
    """Eligible credits are moved (client set-up) and announced once; ineligible or unmapped money is held."""
    _setup(cli, integration)
    cases = seed_deposits(dsns.sandbox, dsns.ledger)
    before = read_state(dsns)
    first = cli("run", "--date", DATE, "--flow", "deposits")
    assert first.returncode == 3, explain(first)  # new holds are exceptions

    after = read_state(dsns)
    decisions = {d["credit_reference"]: d for d in _deposit_decisions(dsns)}
    operations = _operations(dsns)
    moves = {t["idempotency_key"]: t for t in after.transfers if t["idempotency_key"].startswith("deposit:")}
    events = {e["_key"]: e for e in after.events}
    for case, reason in HELD.items():
        for reference in cases[case]:
            assert (decisions[reference]["decision"], decisions[reference]["reason"]) == ("HOLD", reason), case
            assert reference not in operations and f"deposit:{reference}" not in moves and reference not in events
    eligible = {ref: amount for case, amount in ELIGIBLE.items() for ref in cases[case]}
    eligible |= dict(zip(cases["deposit_twice"], [Decimal("250.00"), Decimal("750.00")], strict=True))
    for reference, amount in eligible.items():
        decision = decisions[reference]
        assert (decision["decision"], decision["reason"], decision["pay_amount"]) == ("PAY", "DEPOSIT", amount)
        operation = operations[reference]
        assert operation["state"] == "COMPLETED"
        assert operation["flow"] == ("DEPOSIT" if integration == "client" else "DEPOSIT_ANNOUNCE")
        if integration == "client":
            move = moves[f"deposit:{reference}"]
            assert (move["amount"], move["credit_reference"]) == (amount, operation["ledger_account"])
            assert move["debit_reference"].startswith("INCOMING-")
        else:
            assert f"deposit:{reference}" not in moves  # InvestSuite moves the money: the job only announces it
        assert events[reference]["data"]["amount"] == format(amount, "f")
        portfolio = after.portfolios[operation["portfolio_id"]]
        assert portfolio.cash == before.portfolios[operation["portfolio_id"]].cash + sum(
            a for r, a in eligible.items() if operations[r]["portfolio_id"] == operation["portfolio_id"]
        )
        assert portfolio.doc["funded_since"] is not None
        deposits = [t for t in after.transactions_of(operation["portfolio_id"]) if t["external_id"] == reference]
        assert [(t["movements"][0]["type"], t["status"]) for t in deposits] == [("CASH_DEPOSIT", "COMPLETED")]

    again = cli("run", "--date", DATE, "--flow", "deposits")
    assert again.returncode == 0, explain(again)  # the same holds are "still held": no new alarm
    assert external_fingerprint(read_state(dsns)) == external_fingerprint(after)
    held_again = [d for d in _deposit_decisions(dsns) if d["run_id"] != decisions[next(iter(eligible))]["run_id"]]
    assert sorted(d["reason"] for d in held_again) == sorted(
        reason for case, reason in HELD.items() for _ in cases[case]
    )  # held money is decided again every run, never dropped
