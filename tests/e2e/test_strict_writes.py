"""Issue 12 end to end: money moves only for a payout whose every InvestSuite write will be accepted.

Through the CLI against the strict sandbox: string positions beside a partial withdrawal complete with
normalised bodies; a divest cancelled, lowered or raised between planning and the ledger post is handled
from a fresh read before any money moves; a payout killed twenty times inside one step completes.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from batch.adapters.postgres import Dsns
from tests.e2e.helpers import Cli, State, explain, read_state
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.payout_support import add_customer, set_portfolio_doc

DATE = "2026-11-20"
KILL_AT_LEDGER_POST = {"BATCH_CRASH_POINTS": "LEDGER_POST.before:1"}
KILL_IN_RECORD_TRANSACTION = {"BATCH_CRASH_POINTS": "RECORD_TRANSACTION.before:1"}


def _literal_numbers(body: str) -> Any:
    """A JSON body with every number kept as the text it was written with (("num", "12.5"))."""
    return json.loads(body, parse_float=lambda t: ("num", t), parse_int=lambda t: ("num", t))


def _paid_from(state: State, account: str) -> list[Decimal]:
    """Payout transfers out of a customer's ledger account, smallest first."""
    return sorted(t["amount"] for t in state.transfers_from(account) if t["credit_kind"] == "PAYOUT_CLEARING")


def _set_divest(store: SandboxState, portfolio_id: str, divest: Any) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["config"]["manager_settings"]["divest_amount"] = divest

    set_portfolio_doc(store, portfolio_id, change)


def test_string_positions_and_a_partial_withdrawal_complete_with_numbers_at_minor_units(
    cli: Cli, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """Holdings served as strings: the payout completes; PATCH and transaction carry numbers, cash at minor units."""
    doc = add_customer(
        sandbox_store,
        dsns,
        divest=Decimal("500.00"),
        cash=Decimal("2250.00"),
        positions={"IE00BK5BQT80": Decimal("12.5"), "IE00B4L5Y983": Decimal(0)},
    )

    def as_strings(stored: dict[str, Any]) -> None:
        stored["portfolio"] = {key: format(value, "f") for key, value in stored["portfolio"].items()}

    set_portfolio_doc(sandbox_store, doc["id"], as_strings)
    result = cli("run", "--date", DATE, "--portfolio", doc["id"])
    assert result.returncode == 0, explain(result)

    state = read_state(dsns)
    assert [p["state"] for p in state.payouts_of(doc["id"])] == ["COMPLETED"]
    (patch,) = [w for w in sandbox.admin.writes("PATCH") if doc["id"] in w["path"]]
    holdings = _literal_numbers(patch["body"])["portfolio"]
    assert holdings == {"$EUR": ("num", "1750.00"), "IE00BK5BQT80": ("num", "12.5"), "IE00B4L5Y983": ("num", "0")}
    (posted,) = [w for w in sandbox.admin.writes("transactions") if doc["id"] in w["path"]]
    assert _literal_numbers(posted["body"])["movements"][0]["quantity"] == ("num", "-500.00")
    (event,) = [w for w in sandbox.admin.writes("events/withdraw") if doc["id"] in w["body"]]
    assert json.loads(event["body"])["data"]["amount"] == "500.00"
    assert state.portfolios[doc["id"]].doc["portfolio"]["IE00BK5BQT80"] == Decimal("12.5")


@pytest.mark.parametrize(
    ("divest_now", "final", "paid_next"),
    [
        (Decimal(0), ("SKIP", "CHANGED_SINCE_PLANNING"), None),
        (Decimal("200.00"), ("DEFER", "CHANGED_SINCE_PLANNING"), Decimal("200.00")),
    ],
    ids=["cancelled", "lowered"],
)
def test_a_divest_cancelled_or_lowered_before_the_ledger_post_moves_no_planned_money(
    cli: Cli,
    sandbox_store: SandboxState,
    dsns: Dsns,
    divest_now: Decimal,
    final: tuple[str, str],
    paid_next: Decimal | None,
) -> None:
    """Planned 500, then cancelled or lowered: CANCELLED before any effect, evidence recorded, decided afresh."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("500.00"), cash=Decimal("1000.00"))
    killed = cli("run", "--date", DATE, "--portfolio", doc["id"], env_extra=KILL_AT_LEDGER_POST)
    assert killed.returncode == -9, explain(killed)  # planned, killed right before the ledger post
    _set_divest(sandbox_store, doc["id"], divest_now)

    resumed = cli("run", "--date", DATE, "--portfolio", doc["id"])
    assert resumed.returncode == 0, explain(resumed)
    state = read_state(dsns)
    planned = [p for p in state.payouts_of(doc["id"]) if p["amount"] == Decimal("500.00")]
    assert [p["state"] for p in planned] == ["CANCELLED"] and planned[0]["ledger_reference"] is None
    decision = next(d for d in state.decisions if d["payout_id"] == planned[0]["id"])
    assert (decision["final_decision"], decision["final_reason"]) == final
    evidence = decision["details"]["revised_because"]
    assert evidence["planned_amount"] == "500.00000000" and Decimal(evidence["divest_now"]) == divest_now
    amounts = sorted(
        t["amount"] for t in state.transfers_from(doc["external_id"]) if t["credit_kind"] == "PAYOUT_CLEARING"
    )
    # the next planning (in the resuming run) decides afresh: nothing asked, or the lowered amount
    assert amounts == ([] if paid_next is None else [paid_next])


def test_a_divest_raised_before_the_ledger_post_pays_the_planned_amount_and_keeps_the_rest(
    cli: Cli, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """Planned 500, raised to 800 before the ledger post: 500 paid, 300 left pending (cash short for it)."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("500.00"), cash=Decimal("600.00"))
    killed = cli("run", "--date", DATE, "--portfolio", doc["id"], env_extra=KILL_AT_LEDGER_POST)
    assert killed.returncode == -9, explain(killed)
    _set_divest(sandbox_store, doc["id"], Decimal("800.00"))

    resumed = cli("run", "--date", DATE, "--portfolio", doc["id"])
    assert resumed.returncode == 0, explain(resumed)
    state = read_state(dsns)
    assert _paid_from(state, doc["external_id"]) == [Decimal("500.00")]
    assert state.portfolios[doc["id"]].divest == Decimal("300.00")
    assert state.portfolios[doc["id"]].cash == Decimal("100.00")
    last = state.decisions[-1]
    assert (last["portfolio_id"], last["decision"], last["reason"]) == (doc["id"], "DEFER", "INSUFFICIENT_CASH")


@pytest.mark.slow
def test_a_payout_killed_twenty_times_inside_the_same_step_completes_on_the_next_run(
    cli: Cli, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """Twenty SIGKILLs inside RECORD_TRANSACTION (intents without outcomes) never count as failures."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    for _ in range(20):
        killed = cli(
            "run",
            "--date",
            DATE,
            "--portfolio",
            doc["id"],
            env_extra={"BATCH_CRASH_POINTS": "RECORD_TRANSACTION.before:1"},
        )
        assert killed.returncode == -9, explain(killed)
    result = cli("run", "--date", DATE, "--portfolio", doc["id"])
    assert result.returncode == 0, explain(result)

    state = read_state(dsns)
    (payout,) = state.payouts_of(doc["id"])
    assert payout["state"] == "COMPLETED" and payout["failing_step"] is None
    assert len(_paid_from(state, doc["external_id"])) == 1
    assert len(state.transactions_of(doc["id"])) == 1 and len(state.events_of(doc["id"])) == 1
