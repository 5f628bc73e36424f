"""Withdrawals with broker integration by InvestSuite end to end through the CLI: the bank's payouts announced.

The job moves no money, records no transaction and patches nothing in this set-up: it announces each payout the
bank's core banking made to a counter account (``POST /events/withdraw/``, Idempotency-Key = the ledger transfer),
holds what cannot be announced (listed every night until resolved), and survives SIGKILLs without announcing
anything twice.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

from batch.adapters.ledger_bank_payouts import BankPayoutAdmin
from batch.adapters.postgres import Dsns, make_engine
from batch.sandbox.seed_bank_payouts import ANNOUNCED, HELD, seed_bank_payouts
from tests.e2e.helpers import Cli, explain, external_fingerprint, fetch, read_state, report_paths
from tests.fixtures.sandbox import RunningSandbox

DATE = "2026-11-24"
AMOUNTS = {
    "announce_active": [Decimal("300.00")],
    "announce_inactive": [Decimal("1250.50")],
    "announce_jpy": [Decimal(80000)],
    "announce_twice": [Decimal("120.00"), Decimal("80.00")],
}


def _investsuite_set_up(cli: Cli) -> None:
    text = cli.config.read_text(encoding="utf-8")
    cli.config.write_text(text + '\n[withdrawals]\nbroker_integration = "investsuite"\n', encoding="utf-8")


def _decisions(dsns: Dsns) -> list[dict[str, Any]]:
    return fetch(dsns.journal, "SELECT * FROM batch.decisions WHERE flow = 'WITHDRAWAL_ANNOUNCE' ORDER BY id")


def _operations(dsns: Dsns) -> dict[str, dict[str, Any]]:
    rows = fetch(dsns.journal, "SELECT * FROM batch.payouts WHERE flow = 'WITHDRAWAL_ANNOUNCE'")
    return {r["credit_reference"]: r for r in rows}


def _seed(dsns: Dsns) -> dict[str, list[str]]:
    return seed_bank_payouts(dsns.sandbox, dsns.ledger, date.fromisoformat(DATE))


def test_each_bank_payout_is_announced_once_or_held_with_its_reason(
    cli: Cli, sandbox: RunningSandbox, dsns: Dsns
) -> None:
    """Eligible payouts get one withdraw event each (key = ledger transfer); the rest are HELD; nothing else moves."""
    _investsuite_set_up(cli)
    cases = _seed(dsns)
    before = read_state(dsns)
    first = cli("run", "--date", DATE, "--flow", "withdrawals")
    assert first.returncode == 3, explain(first)  # new holds are exceptions

    after = read_state(dsns)
    decisions = {d["credit_reference"]: d for d in _decisions(dsns)}
    operations = _operations(dsns)
    events = {e["_key"]: e for e in after.events}
    for case, amounts in AMOUNTS.items():
        for reference, amount in zip(cases[case], amounts, strict=True):
            decision = decisions[reference]
            assert (decision["decision"], decision["reason"], decision["pay_amount"]) == ("PAY", "BANK_PAYOUT", amount)
            assert operations[reference]["state"] == "COMPLETED"
            event = events[reference]["data"]
            portfolio = after.portfolios[operations[reference]["portfolio_id"]]
            expected = {"amount": format(amount, "f"), "currency": portfolio.currency, "portfolio": portfolio.doc["id"]}
            assert event == expected
    for case, reason in HELD.items():
        for reference in cases[case]:
            assert (decisions[reference]["decision"], decisions[reference]["reason"]) == ("HOLD", reason), case
            assert reference not in operations and reference not in events
    # the job moved no money, recorded no transaction and patched nothing: InvestSuite did, the bank paid
    assert after.transfers == before.transfers
    assert after.transactions == before.transactions
    assert {pid: p.version for pid, p in after.portfolios.items()} == {
        pid: p.version for pid, p in before.portfolios.items()
    }
    assert len(after.events) == sum(len(a) for a in AMOUNTS.values())

    # the report's section and the date reconciliation: ledger payouts of the date = announced + held
    report = json.loads(report_paths(first.stdout)["json"].read_text(encoding="utf-8"))
    eur = report["announcements"]["totals"]["EUR"]
    assert (eur["announced"]["amount"], eur["held"]["amount"], eur["received"]) == ("1750.50", "230.005", "1980.505")
    assert all(c["ok"] for c in report["checks"] if c["name"].startswith("withdrawal announcements"))
    assert len(report["announcement_lines"]) == sum(len(refs) for refs in cases.values())
    reconciled = cli("reconcile", "--date", DATE, "--format", "json")
    assert reconciled.returncode == 0, explain(reconciled)
    figures = json.loads(reconciled.stdout)
    assert figures["breaks"] == []
    assert figures["announcements"]["EUR"] | {} == {
        "ledger_count": 8,
        "ledger": "1980.505",
        "announced_count": 4,
        "announced": "1750.50",
        "in_progress_count": 0,
        "in_progress": "0.00",
        "held_count": 4,
        "held": "230.005",
        "not_decided_count": 0,
        "not_decided": "0.00",
    }

    again = cli("run", "--date", DATE, "--flow", "withdrawals")
    assert again.returncode == 0, explain(again)  # the same holds are "still held": no new alarm
    assert external_fingerprint(read_state(dsns)) == external_fingerprint(after)
    second_run = read_state(dsns).runs[-1]["id"]
    held_again = [d for d in _decisions(dsns) if d["run_id"] == second_run]
    assert sorted(d["reason"] for d in held_again) == sorted(
        reason for case, reason in HELD.items() for _ in cases[case]
    )  # held payouts are decided again every run, never dropped; announced ones are not decided twice
    assert set(AMOUNTS) == set(ANNOUNCED)


def test_a_refused_announcement_is_held_and_announced_once_it_is_accepted(
    cli: Cli, sandbox: RunningSandbox, dsns: Dsns
) -> None:
    """InvestSuite refusing the event (422) holds the payout (exit 3); the next run announces it exactly once."""
    _investsuite_set_up(cli)
    cases = _seed(dsns)
    sandbox.admin.set_faults(error_rate=1.0, error_statuses=[422], path_prefixes=["/events/withdraw/"])
    refused = cli("run", "--date", DATE, "--flow", "withdrawals")
    assert refused.returncode == 3, explain(refused)
    assert read_state(dsns).events == []
    decisions = {d["credit_reference"]: d for d in _decisions(dsns)}
    reference = cases["announce_active"][0]
    assert (decisions[reference]["final_decision"], decisions[reference]["final_reason"]) == (
        "HOLD",
        "ANNOUNCEMENT_REFUSED",
    )
    assert _operations(dsns)[reference]["state"] == "CANCELLED"

    sandbox.admin.set_faults()
    accepted = cli("run", "--date", "2026-11-25", "--flow", "withdrawals")  # a later night lists it again
    assert accepted.returncode == 0, explain(accepted)
    events = [e for e in read_state(dsns).events if e["_key"] == reference]
    assert len(events) == 1
    live = [r for r in fetch(dsns.journal, "SELECT * FROM batch.payouts WHERE credit_reference = %s", [reference])]
    assert sorted(r["state"] for r in live) == ["CANCELLED", "COMPLETED"]


def test_sigkills_during_the_announcement_run_announce_every_payout_exactly_once(
    cli: Cli, sandbox: RunningSandbox, dsns: Dsns
) -> None:
    """Killed before and after each event call, again and again: every payout is announced exactly once."""
    _investsuite_set_up(cli)
    cases = _seed(dsns)
    crash = {"BATCH_CRASH_POINTS": "SEND_EVENT.before:0.3,SEND_EVENT.after:0.3"}
    for _ in range(30):
        result = cli("run", "--date", DATE, "--flow", "withdrawals", env_extra=crash)
        if result.returncode in (0, 3):
            break
        assert result.returncode == -9, explain(result)
    final = cli("run", "--date", DATE, "--flow", "withdrawals")
    assert final.returncode in (0, 3), explain(final)
    state = read_state(dsns)
    expected = {ref for case in AMOUNTS for ref in cases[case]}
    assert sorted(e["_key"] for e in state.events) == sorted(expected)  # once each, nothing else
    assert {r: o["state"] for r, o in _operations(dsns).items() if o["state"] != "CANCELLED"} == dict.fromkeys(
        expected, "COMPLETED"
    )
    again = cli("run", "--date", DATE, "--flow", "withdrawals")
    assert again.returncode == 0, explain(again)
    assert external_fingerprint(read_state(dsns)) == external_fingerprint(state)


def test_reconcile_date_names_a_bank_payout_no_run_announced_or_held(
    cli: Cli, sandbox: RunningSandbox, dsns: Dsns
) -> None:
    """A payout the bank booked for the date after the night's run is a BANK_PAYOUT_NOT_DECIDED break (exit 3)."""
    _investsuite_set_up(cli)
    cases = _seed(dsns)
    assert cli("run", "--date", DATE, "--flow", "withdrawals").returncode == 3
    engine = make_engine(dsns.ledger, pool_size=1)
    try:
        late = BankPayoutAdmin(engine).pay_counter_account(
            "WDA-800000", "BE71096123456769", Decimal("55.00"), "EUR", date.fromisoformat(DATE), "late-payout"
        )
    finally:
        engine.dispose()
    reconciled = cli("reconcile", "--date", DATE)
    assert reconciled.returncode == 3, explain(reconciled)
    assert "[BANK_PAYOUT_NOT_DECIDED]" in reconciled.stdout and f"ref {late}" in reconciled.stdout
    assert cases["announce_active"]
