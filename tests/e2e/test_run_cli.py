"""The nightly payout run through the ``batch`` command, against the sandbox and real PostgreSQL.

One seeded scenario (every case of ``batch.sandbox.scenario.CASES``) is run once per module for
business date 2026-11-20, then run again; the tests then check, case by case, the journal, the
ledger, the sandbox and the JSON report, each read straight from its database or file.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from batch.sandbox.scenario import CASES, NOT_PENDING_CASES
from batch.sandbox.seed import portfolios_by_case, seed_scenario
from tests.e2e.conftest import World
from tests.e2e.helpers import (
    MINOR_UNITS,
    Cli,
    Portfolio,
    State,
    amount_text,
    explain,
    external_fingerprint,
    minor,
    read_state,
    report_paths,
    users,
)

BUSINESS_DATE = "2026-11-20"
SCENARIO_SIZE = 60
EXIT_OK, EXIT_ATTENTION = 0, 3


@dataclass(frozen=True)
class Expected:
    """What the first run must do with every portfolio of a case.

    ``decision`` None: the portfolio is not pending and must not even be a candidate.
    ``paid``: the amount paid, from the portfolio as seeded (None: nothing is paid).
    ``held``: the amount of the HELD payout waiting for an operator (None: no payout row).
    ``recon_break``: the ledger and InvestSuite cash differ (flagged on the decision and the report line).
    """

    decision: str | None
    reason: str | None
    paid: Callable[[Portfolio], Decimal] | None = None
    held: Decimal | None = None
    recon_break: bool = False


def fixed(amount: str) -> Callable[[Portfolio], Decimal]:
    return lambda _portfolio: Decimal(amount)


EXPECTED: dict[str, Expected] = {
    "partial_enough_cash": Expected("PAY", "PARTIAL", lambda p: minor(Decimal(p.divest), p.currency)),
    "insufficient_cash": Expected("DEFER", "INSUFFICIENT_CASH"),
    "full_no_positions": Expected("PAY", "FULL_WITHDRAWAL", fixed("2500.00")),
    "full_with_positions": Expected("DEFER", "POSITIONS_OPEN"),
    "paper_money": Expected("SKIP", "PAPER_MONEY"),
    "archived": Expected("SKIP", "ARCHIVED"),
    "deleted": Expected("SKIP", "DELETED"),
    "ineligible_status": Expected("SKIP", "STATUS_NOT_ALLOWED"),
    "no_ledger_account": Expected("HOLD", "NO_LEDGER_ACCOUNT"),
    "currency_mismatch": Expected("HOLD", "CURRENCY_MISMATCH"),
    "recon_break_enough": Expected("PAY", "PARTIAL", fixed("500.00"), recon_break=True),
    "recon_break_short": Expected("DEFER", "INSUFFICIENT_CASH", recon_break=True),
    "sub_minor_amount": Expected("PAY", "PARTIAL", fixed("10.00")),
    "jpy": Expected("PAY", "PARTIAL", fixed("1234")),
    "kwd": Expected("PAY", "PARTIAL", fixed("125.125")),
    "ledger_hold": Expected("DEFER", "INSUFFICIENT_CASH", recon_break=True),  # available 200 vs cash 1000
    "negative_divest": Expected("HOLD", "INVALID_AMOUNT"),
    "string_divest": Expected("PAY", "PARTIAL", fixed("250.00")),
    "unknown_currency": Expected("HOLD", "UNKNOWN_CURRENCY"),
    "no_counter_account": Expected("HOLD", "NO_COUNTER_ACCOUNT"),
    "above_cap": Expected("HOLD", "OVER_PAYOUT_CAP", held=Decimal("60000.00")),
    "string_positions": Expected("PAY", "PARTIAL", fixed("500.00")),
    "exponent_values": Expected("PAY", "PARTIAL", fixed("250.00")),
    "missing_cash_key": Expected("DEFER", "INSUFFICIENT_CASH", recon_break=True),
    "cash_too_precise": Expected("HOLD", "INVALID_REMOTE_DATA"),
    "undocumented_config_field": Expected("HOLD", "INVALID_REMOTE_DATA"),
    "no_divest_zero": Expected(None, None),
    "no_divest_null": Expected(None, None),
}


@dataclass(frozen=True)
class Nightly:
    """The module's seeded scenario, before and after two runs of the same business date."""

    world: World
    cases: dict[str, list[str]]
    users: dict[str, dict[str, Any]]
    before: State
    first: subprocess.CompletedProcess[str]
    first_run_id: str
    after_first: State
    report: dict[str, Any]
    second: subprocess.CompletedProcess[str]
    second_run_id: str
    after_second: State
    #: the read-only operator commands, run (concurrently) after both runs: name -> result
    ops: dict[str, subprocess.CompletedProcess[str]]

    @property
    def cli(self) -> Cli:
        return self.world.cli

    def case_of(self, portfolio_id: str) -> str:
        return next(case for case, ids in self.cases.items() if portfolio_id in ids)

    def report_line(self, portfolio_id: str) -> dict[str, Any] | None:
        lines = [line for line in self.report["lines"] if line["portfolio_id"] == portfolio_id]
        assert len(lines) <= 1, f"{portfolio_id}: {len(lines)} report lines"
        return lines[0] if lines else None


def _only_run(state: State, known: set[str]) -> str:
    new = [str(r["id"]) for r in state.runs if str(r["id"]) not in known]
    assert len(new) == 1, f"expected one new run, found {new}"
    return new[0]


@pytest.fixture(scope="module")
def nightly(new_world: Callable[[], World]) -> Nightly:
    """Seed ~60 portfolios (every case), run the business date, then run the same date again."""
    world = new_world()
    manifest = seed_scenario(world.dsns.sandbox, world.dsns.ledger, size=SCENARIO_SIZE)
    assert set(manifest["cases"]) == set(CASES), manifest
    before = read_state(world.dsns)

    first = world.cli("run", "--date", BUSINESS_DATE, "--trigger", "test")
    after_first = read_state(world.dsns)
    first_run_id = _only_run(after_first, set())
    paths = report_paths(first.stdout)
    assert "json" in paths, explain(first)
    report = json.loads(paths["json"].read_text(encoding="utf-8"))

    second = world.cli("run", "--date", BUSINESS_DATE, "--trigger", "test")
    after_second = read_state(world.dsns)
    second_run_id = _only_run(after_second, {first_run_id})

    operator_commands = {
        "runs": ("runs",),
        "report_json": ("report", "--run", first_run_id, "--format", "json"),
        "report_text": ("report", "--run", first_run_id, "--format", "text"),
        "report_date": ("report", "--date", BUSINESS_DATE),
        "payouts_held": ("payouts", "--state", "held"),
        "audit_verify": ("audit", "verify"),
    }
    with ThreadPoolExecutor(max_workers=len(operator_commands)) as pool:
        futures = {name: pool.submit(world.cli, *args) for name, args in operator_commands.items()}
        ops = {name: future.result() for name, future in futures.items()}
    return Nightly(
        world=world,
        cases=portfolios_by_case(world.dsns.sandbox),
        users=users(world.dsns),
        before=before,
        first=first,
        first_run_id=first_run_id,
        after_first=after_first,
        report=report,
        second=second,
        second_run_id=second_run_id,
        after_second=after_second,
        ops=ops,
    )


def test_expectations_cover_every_seeded_case() -> None:
    """The expectation table names exactly the scenario's cases, and the not-pending ones as such."""
    assert set(EXPECTED) == set(CASES)
    assert {case for case, e in EXPECTED.items() if e.decision is None} == set(NOT_PENDING_CASES)


# -- one case at a time ---------------------------------------------------------------------------------------


def _check_paid(n: Nightly, pid: str, expected: Expected, decision: dict[str, Any]) -> None:
    assert expected.paid is not None
    before, after = n.before.portfolios[pid], n.after_first.portfolios[pid]
    ccy = before.currency
    paid = expected.paid(before)
    where = f"{n.case_of(pid)} {pid}"

    assert decision["pay_amount"] == paid, where
    payouts = n.after_first.payouts_of(pid)
    assert len(payouts) == 1, f"{where}: payouts {payouts}"
    payout = payouts[0]
    assert (payout["state"], payout["amount"], payout["currency"]) == ("COMPLETED", paid, ccy), where
    assert payout["id"] == decision["payout_id"], where

    # ledger: exactly one payout transfer, keyed by the payout id, to the owner's IBAN
    keyed = [t for t in n.after_first.transfers if t["idempotency_key"] == str(payout["id"])]
    assert len(keyed) == 1, f"{where}: ledger transfers keyed by the payout id: {keyed}"
    transfer = keyed[0]
    account = before.doc["external_id"]
    owner = n.users[before.doc["owned_by_user_id"]]
    assert transfer["amount"] == paid, where
    assert transfer["currency"].strip() == ccy, where
    assert transfer["counterparty"] == owner["counter_account"]["bank_account_number"], where
    assert (transfer["debit_reference"], transfer["credit_reference"]) == (account, f"CLEARING-{ccy}"), where
    assert transfer["value_date"] == date.fromisoformat(BUSINESS_DATE), where
    outgoing = [t for t in n.after_first.transfers_from(account) if t["credit_kind"] == "PAYOUT_CLEARING"]
    assert outgoing == [transfer], f"{where}: payout transfers from {account}: {outgoing}"
    assert n.after_first.balances[account] == n.before.balances[account] - paid, where

    # sandbox: one SETTLED cash withdrawal carrying the ledger reference
    transactions = n.after_first.transactions_of(pid)
    assert len(transactions) == 1, f"{where}: transactions {transactions}"
    tx = transactions[0]
    assert tx["external_id"] == tx["_external_id_column"] == transfer["reference"], where
    assert tx["status"] == "COMPLETED", where  # response-only, computed (the docs example)
    assert len(tx["movements"]) == 1, where
    movement = tx["movements"][0]
    assert (movement["type"], movement["status"], movement["instrument_id"]) == (
        "CASH_WITHDRAWAL",
        "SETTLED",
        f"${ccy}",
    ), where
    assert Decimal(movement["quantity"]) == -paid, where
    assert payout["transaction_id"] == tx["id"], where

    # sandbox portfolio: divest cleared, cash decreased exactly, nothing else touched, one PATCH
    assert after.divest == 0, f"{where}: divest now {after.divest!r}"
    assert after.cash == before.cash - paid, where
    # the same values (quantities served as strings are written back as numbers)
    other_before = {k: Decimal(v) for k, v in before.doc["portfolio"].items() if k != f"${ccy}"}
    other_after = {k: Decimal(v) for k, v in after.doc["portfolio"].items() if k != f"${ccy}"}
    assert other_after == other_before, where
    assert after.version == before.version + 1 == after.doc["version"], where
    untouched_before = {
        k: v for k, v in before.doc.items() if k not in {"config", "portfolio", "version", "version_datetime"}
    }
    untouched_after = {
        k: v for k, v in after.doc.items() if k not in {"config", "portfolio", "version", "version_datetime"}
    }
    assert untouched_after == untouched_before, where
    config_before = before.doc["config"] | {
        "manager_settings": {**before.doc["config"]["manager_settings"], "divest_amount": 0}
    }
    assert after.doc["config"] == config_before, where

    # sandbox event: one withdraw event, keyed by the payout id, amount as a string
    events = n.after_first.events_of(pid)
    assert len(events) == 1, f"{where}: events {events}"
    event = events[0]
    assert event["_key"] == event["idempotency_key"] == str(payout["id"]), where
    assert event["type"] == "withdraw", where
    assert event["data"] == {"amount": amount_text(paid, ccy), "currency": ccy, "portfolio": pid}, where

    # report line
    line = n.report_line(pid)
    assert line is not None, where
    assert (line["decision"], line["reason"], line["outcome"], line["payout_state"]) == (
        expected.decision,
        expected.reason,
        "paid",
        "COMPLETED",
    ), where
    assert line["paid"] == amount_text(paid, ccy), where
    assert (line["ledger_reference"], line["transaction_id"]) == (transfer["reference"], tx["id"]), where


def _check_unpaid(n: Nightly, pid: str, expected: Expected, decision: dict[str, Any] | None) -> None:
    before, after = n.before.portfolios[pid], n.after_first.portfolios[pid]
    where = f"{n.case_of(pid)} {pid}"
    payouts = n.after_first.payouts_of(pid)
    if expected.held is not None:
        assert decision is not None, where
        assert len(payouts) == 1, f"{where}: payouts {payouts}"
        held = payouts[0]
        assert (held["state"], held["amount"], held["hold_reason"]) == ("HELD", expected.held, expected.reason), where
        assert held["ledger_reference"] is None, where
        assert not [t for t in n.after_first.transfers if t["idempotency_key"] == str(held["id"])], where
    else:
        assert payouts == [], f"{where}: payouts {payouts}"
    account = before.doc["external_id"]
    outgoing = [t for t in n.after_first.transfers_from(account) if t["credit_kind"] == "PAYOUT_CLEARING"]
    assert outgoing == [], f"{where}: payout transfers {outgoing}"
    assert n.after_first.balances.get(account) == n.before.balances.get(account), where
    assert (after.version, after.doc) == (before.version, before.doc), f"{where}: portfolio changed"
    assert n.after_first.transactions_of(pid) == [], where
    assert n.after_first.events_of(pid) == [], where

    line = n.report_line(pid)
    if expected.decision is None:
        assert line is None, f"{where}: not pending but reported: {line}"
        return
    assert line is not None, where
    assert (line["decision"], line["reason"]) == (expected.decision, expected.reason), where
    assert (line["paid"], line["ledger_reference"], line["transaction_id"]) == (None, None, None), where


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_run_outcome_per_case(nightly: Nightly, case: str) -> None:
    """Each case gets its decision, and journal, ledger, sandbox and report agree on what was paid."""
    expected = EXPECTED[case]
    portfolio_ids = nightly.cases[case]
    assert portfolio_ids, f"{case} was not seeded"
    decisions = nightly.after_first.decisions_of(nightly.first_run_id)
    for pid in portfolio_ids:
        decision = decisions.get(pid)
        if expected.decision is None:
            assert decision is None, f"{case} {pid}: not pending, yet decided {decision}"
            assert not [d for d in nightly.after_second.decisions if d["portfolio_id"] == pid], f"{case} {pid}"
        else:
            assert decision is not None, f"{case} {pid}: no decision recorded"
            got = (decision["decision"], decision["reason"], decision["final_decision"], decision["dry_run"])
            assert got == (expected.decision, expected.reason, None, False), f"{case} {pid}: {decision}"
            line = nightly.report_line(pid)
            assert line is not None, f"{case} {pid}: no report line"
            flags = (decision["reconciliation_break"], line["reconciliation_break"])
            assert flags == (expected.recon_break, expected.recon_break), f"{case} {pid}: reconciliation break"
        if expected.paid is not None:
            assert decision is not None
            _check_paid(nightly, pid, expected, decision)
        else:
            assert decision is None or decision["pay_amount"] is None, f"{case} {pid}"
            _check_unpaid(nightly, pid, expected, decision)


# -- the run as a whole ------------------------------------------------------------------------------------


def test_first_run_exits_3_and_prints_summary_and_report_paths(nightly: Nightly) -> None:
    """Held payouts and HOLD decisions make the run exit 3; stdout has the totals table and the reports."""
    result = nightly.first
    assert result.returncode == EXIT_ATTENTION, explain(result)
    out = result.stdout
    assert f"Payout run {nightly.first_run_id} - business date {BUSINESS_DATE}" in out, explain(result)
    assert "SUCCEEDED_WITH_EXCEPTIONS" in out
    assert "bucket" in out and "requested" in out and "[PASS]" in out
    assert "[FAIL]" not in out, explain(result)
    paths = report_paths(out)
    assert set(paths) >= {"json", "text"}, explain(result)
    for path in paths.values():
        assert path.parent == nightly.cli.report_dir and path.is_file(), path
    assert "exit code 3 (SUCCEEDED_WITH_EXCEPTIONS)" in out
    run = next(r for r in nightly.after_first.runs if str(r["id"]) == nightly.first_run_id)
    assert (run["status"], run["exit_code"], run["dry_run"], run["trigger"]) == (
        "SUCCEEDED_WITH_EXCEPTIONS",
        EXIT_ATTENTION,
        False,
        "test",
    )
    header = nightly.report["runs"][0]
    assert (header["id"], header["status"], header["exit_code"]) == (
        nightly.first_run_id,
        "SUCCEEDED_WITH_EXCEPTIONS",
        EXIT_ATTENTION,
    )


def test_control_totals_reconcile_against_the_databases(nightly: Nightly) -> None:
    """Per currency: ledger payouts = sandbox SETTLED withdrawals = withdraw events = report paid = expected."""
    report, state = nightly.report, nightly.after_first
    failed = [c for c in report["checks"] if not c["ok"]]
    assert report["checks"] and not failed, failed

    ledger: dict[str, Decimal] = defaultdict(Decimal)
    for t in state.payout_transfers():
        ledger[t["currency"].strip()] += t["amount"]
    settled: dict[str, Decimal] = defaultdict(Decimal)
    for tx in state.transactions:
        for m in tx["movements"]:
            if m["type"] == "CASH_WITHDRAWAL" and m["status"] == "SETTLED":
                settled[m["instrument_id"].removeprefix("$")] -= Decimal(m["quantity"])
    events: dict[str, Decimal] = defaultdict(Decimal)
    for e in state.events:
        if e["type"] == "withdraw":
            events[e["data"]["currency"]] += Decimal(e["data"]["amount"])
    expected: dict[str, Decimal] = defaultdict(Decimal)
    for case, ids in nightly.cases.items():
        rule = EXPECTED[case].paid
        for pid in ids:
            if rule is not None:
                portfolio = nightly.before.portfolios[pid]
                expected[portfolio.currency] += rule(portfolio)

    currencies = set(report["totals"]) | set(ledger) | set(settled) | set(events) | set(expected)
    assert set(expected) == {"EUR", "USD", "JPY", "KWD"}
    for ccy in sorted(currencies):
        totals = report["totals"].get(ccy)
        assert totals is not None, f"{ccy} missing from the report totals"
        paid = Decimal(totals["paid"]["amount"])
        figures = (ledger[ccy], settled[ccy], events[ccy], paid, Decimal(totals["ledger_posted"]), expected[ccy])
        assert len(set(figures)) == 1, (
            f"{ccy}: ledger, settled, events, report paid, report ledger, expected = {figures}"
        )
        buckets = ("paid", "in_progress", "deferred", "skipped", "held")
        assert Decimal(totals["requested"]) == sum(Decimal(totals[b]["amount"]) for b in buckets), ccy
        assert totals["candidates"] == sum(totals[b]["count"] for b in buckets), ccy

    # the journal's own request figures, summed independently of the report
    requested: dict[str, Decimal] = defaultdict(Decimal)
    for d in state.decisions_of(nightly.first_run_id).values():
        requested[d["currency"] or "???"] += d["requested_amount"] or Decimal(0)
    for ccy, total in requested.items():
        assert Decimal(report["totals"][ccy]["requested"]) == total, ccy
    pending = sum(len(ids) for case, ids in nightly.cases.items() if case not in NOT_PENDING_CASES)
    assert len(report["lines"]) == pending == len(state.decisions_of(nightly.first_run_id))


def test_second_run_of_the_date_changes_nothing(nightly: Nightly) -> None:
    """Re-running the same date pays nothing again: ledger, sandbox and payouts are exactly as before."""
    assert nightly.second.returncode == EXIT_OK, explain(nightly.second)  # every hold is unchanged: still held
    assert external_fingerprint(nightly.after_second) == external_fingerprint(nightly.after_first)
    assert nightly.after_second.payouts == nightly.after_first.payouts
    assert len(nightly.after_first.payout_transfers()) == sum(
        len(ids) for case, ids in nightly.cases.items() if EXPECTED[case].paid is not None
    )


def test_second_run_decides_only_the_still_pending(nightly: Nightly) -> None:
    """The second run's candidates are exactly those the first run did not pay, and none is paid."""
    second = nightly.after_second.decisions_of(nightly.second_run_id)
    still_pending = {
        pid
        for case, ids in nightly.cases.items()
        if EXPECTED[case].decision is not None and EXPECTED[case].paid is None
        for pid in ids
    }
    assert set(second) == still_pending
    for pid, d in second.items():
        expected = EXPECTED[nightly.case_of(pid)]
        if expected.held is not None:  # its HELD payout still waits for approval: held again, no new payout
            assert (d["decision"], d["reason"]) == ("HOLD", "AWAITING_APPROVAL"), d
        else:
            assert (d["decision"], d["reason"]) == (expected.decision, expected.reason), d
        assert d["payout_id"] is None and d["pay_amount"] is None, d


# -- operator commands -----------------------------------------------------------------------------------


def test_runs_lists_both_runs(nightly: Nightly) -> None:
    """``batch runs`` lists the run history, newest first, with status and exit code."""
    result = nightly.ops["runs"]
    assert result.returncode == EXIT_OK, explain(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run id") and lines[-1] == "2 runs"
    assert [line.split()[0] for line in lines[1:-1]] == [nightly.second_run_id, nightly.first_run_id]
    second, first = lines[1:-1]
    assert BUSINESS_DATE in first and "SUCCEEDED_WITH_EXCEPTIONS" in first and " 3 " in first, first
    assert BUSINESS_DATE in second and "SUCCEEDED " in second and " 0 " in second, second  # only holds, unchanged


def test_report_by_run_json_matches_the_written_report(nightly: Nightly) -> None:
    """``batch report --run ID --format json`` renders the same lines and totals as the run wrote."""
    result = nightly.ops["report_json"]
    assert result.returncode == EXIT_OK, explain(result)
    rendered = json.loads(result.stdout)
    assert rendered["kind"] == "run" and rendered["runs"][0]["id"] == nightly.first_run_id
    assert rendered["lines"] == nightly.report["lines"]
    assert rendered["totals"] == nightly.report["totals"]
    assert all(c["ok"] for c in rendered["checks"])
    assert rendered["audit"]["verified"] is True


def test_report_by_run_text(nightly: Nightly) -> None:
    """``batch report --run ID --format text`` prints the title, passing checks and a verified chain."""
    result = nightly.ops["report_text"]
    assert result.returncode == EXIT_OK, explain(result)
    out = result.stdout
    assert out.startswith(f"Payout run {nightly.first_run_id} - business date {BUSINESS_DATE}")
    assert "[PASS]" in out and "[FAIL]" not in out
    assert "audit chain: verified" in out


def test_report_by_date_covers_both_runs(nightly: Nightly) -> None:
    """``batch report --date D`` covers every run of the business date."""
    result = nightly.ops["report_date"]
    assert result.returncode == EXIT_OK, explain(result)
    out = result.stdout
    assert out.startswith(f"Payout runs of business date {BUSINESS_DATE}")
    assert nightly.first_run_id in out and nightly.second_run_id in out
    assert "[FAIL]" not in out


def test_payouts_held_lists_the_payout_above_the_cap(nightly: Nightly) -> None:
    """``batch payouts --state held``: the over-cap payout at 2 decimals, then the HOLD decisions without a payout.

    Together they make the report's "held" figure.
    """
    result = nightly.ops["payouts_held"]
    assert result.returncode == EXIT_OK, explain(result)
    (above_cap,) = nightly.cases["above_cap"]
    held = nightly.after_second.payouts_of(above_cap)[0]
    lines = result.stdout.splitlines()
    header = ["payout", "id", "flow", "portfolio", "state", "amount", "ccy", "date", "step", "/", "reason"]
    assert lines[0].split() == header
    row = [str(held["id"]), "withdrawal", above_cap, "HELD", "60000.00", "EUR", BUSINESS_DATE, "OVER_PAYOUT_CAP"]
    assert lines[1].split() == row
    assert lines[2] == "1 payout"

    # each portfolio's latest decision (the second run's) when it is a HOLD that created no payout
    second = nightly.after_second.decisions_of(nightly.second_run_id)
    without_payout = {pid for pid, d in second.items() if d["decision"] == "HOLD" and pid != above_cap}
    assert without_payout
    start = lines.index(next(line for line in lines if line.startswith("held decisions without a payout (")))
    assert lines[start].startswith(f"held decisions without a payout ({len(without_payout)};")
    assert lines[start + 1].split() == ["portfolio", "reason", "amount", "ccy", "run", "date"]
    rows = [line.split() for line in lines[start + 2 : start + 2 + len(without_payout)]]
    assert {row[0] for row in rows} == without_payout
    for pid, reason, amount, ccy, run_id, day in rows:
        decision = second[pid]
        assert (reason, run_id, day) == (decision["reason"], nightly.second_run_id, BUSINESS_DATE)
        if decision["requested_amount"] is not None and ccy in MINOR_UNITS:
            assert amount == amount_text(decision["requested_amount"], ccy), (pid, amount)
    assert lines[start + 2 + len(without_payout)] == f"{len(without_payout)} held decisions"
    report_held = sum(t["held"]["count"] for t in nightly.report["totals"].values())
    assert lines[-1] == (
        f"held: {report_held} = 1 HELD payout awaiting approval + {report_held - 1} HOLD decisions without a payout"
        " (the report's held)"
    )


def test_audit_verify_accepts_the_chain(nightly: Nightly) -> None:
    """``batch audit verify`` recomputes the hash chain of both runs and finds it intact."""
    result = nightly.ops["audit_verify"]
    assert result.returncode == EXIT_OK, explain(result)
    assert result.stdout.startswith("audit chain verified:"), result.stdout


# -- fresh seeded sets ------------------------------------------------------------------------------------


def test_dry_run_changes_nothing_external(cli: Cli) -> None:
    """``--dry-run`` records its decisions (dry_run=true) but changes nothing outside the journal."""
    seed_scenario(cli.dsns.sandbox, cli.dsns.ledger, size=30)
    before = read_state(cli.dsns)
    result = cli("run", "--date", BUSINESS_DATE, "--dry-run")
    assert result.returncode == EXIT_ATTENTION, explain(result)
    assert "DRY RUN" in result.stdout
    after = read_state(cli.dsns)
    assert external_fingerprint(after) == external_fingerprint(before)
    assert after.payouts == []
    (run,) = after.runs
    assert run["dry_run"] is True and run["status"] == "SUCCEEDED_WITH_EXCEPTIONS"
    cases = portfolios_by_case(cli.dsns.sandbox)
    pending = {pid for case, ids in cases.items() if case not in NOT_PENDING_CASES for pid in ids}
    decisions = after.decisions_of(str(run["id"]))
    assert set(decisions) == pending
    assert all(d["dry_run"] is True and d["payout_id"] is None for d in decisions.values())
    for case, ids in cases.items():
        for pid in ids:
            if EXPECTED[case].decision is not None:
                d = decisions[pid]
                assert (d["decision"], d["reason"]) == (EXPECTED[case].decision, EXPECTED[case].reason), (case, d)

    # the dry run left nothing behind that would stop the real run of the same date
    real = cli("run", "--date", BUSINESS_DATE)
    assert real.returncode == EXIT_ATTENTION, explain(real)
    paid = read_state(cli.dsns)
    to_pay = {pid for pid, d in decisions.items() if d["decision"] == "PAY"}
    assert {p["portfolio_id"] for p in paid.payouts if p["state"] == "COMPLETED"} == to_pay
    assert len(paid.payout_transfers()) == len(to_pay)


def test_portfolio_option_runs_one_portfolio_only(cli: Cli) -> None:
    """``--portfolio ID`` decides and pays that portfolio alone; a later full run does not pay it again."""
    seed_scenario(cli.dsns.sandbox, cli.dsns.ledger, size=30)
    cases = portfolios_by_case(cli.dsns.sandbox)
    target = cases["partial_enough_cash"][0]
    before = read_state(cli.dsns)

    result = cli("run", "--date", BUSINESS_DATE, "--portfolio", target)
    assert result.returncode == EXIT_OK, explain(result)
    after = read_state(cli.dsns)
    (run,) = after.runs
    decisions = after.decisions_of(str(run["id"]))
    assert list(decisions) == [target]
    assert (decisions[target]["decision"], decisions[target]["reason"]) == ("PAY", "PARTIAL")
    (payout,) = after.payouts
    assert payout["portfolio_id"] == target and payout["state"] == "COMPLETED"
    assert [t["idempotency_key"] for t in after.payout_transfers()] == [str(payout["id"])]
    assert {t["portfolio_id"] for t in after.transactions} == {target}
    assert [e["data"]["portfolio"] for e in after.events] == [target]
    changed = {pid for pid, p in after.portfolios.items() if p != before.portfolios[pid]}
    assert changed == {target}

    full = cli("run", "--date", BUSINESS_DATE)
    assert full.returncode == EXIT_ATTENTION, explain(full)
    final = read_state(cli.dsns)
    second_run = _only_run(final, {str(run["id"])})
    assert target not in final.decisions_of(second_run)
    assert (
        len(
            [
                t
                for t in final.payout_transfers()
                if t["debit_reference"] == before.portfolios[target].doc["external_id"]
            ]
        )
        == 1
    )
    assert len(final.transactions_of(target)) == 1 and len(final.events_of(target)) == 1


def test_unchanged_held_payout_is_still_held_and_no_alarm_by_default(cli: Cli) -> None:
    """A payout still HELD the next night is listed as still held and exits 0; with the alert setting, 3."""
    seed_scenario(cli.dsns.sandbox, cli.dsns.ledger, size=30)
    (above_cap,) = portfolios_by_case(cli.dsns.sandbox)["above_cap"]
    first = cli("run", "--date", BUSINESS_DATE, "--portfolio", above_cap)
    assert first.returncode == EXIT_ATTENTION, explain(first)  # a new hold
    next_night = cli("run", "--date", "2026-11-21", "--portfolio", above_cap)
    state = read_state(cli.dsns)
    assert [p["state"] for p in state.payouts] == ["HELD"]
    assert next_night.returncode == EXIT_OK, explain(next_night)
    assert "Still held (unchanged since the previous run; not an alarm by itself): 1" in next_night.stdout
    report = json.loads(report_paths(next_night.stdout)["json"].read_text(encoding="utf-8"))
    (line,) = report["lines"]
    assert (line["portfolio_id"], line["reason"], line["still_held"]) == (above_cap, "AWAITING_APPROVAL", True)
    assert report["totals"]["EUR"]["groups"]["planned"]["still_held"]["count"] == 1

    alerting = cli.config.with_name("alerting.toml")
    alerting.write_text(cli.config.read_text(encoding="utf-8") + "alert_on_unchanged_holds = true\n", encoding="utf-8")
    third_night = replace(cli, config=alerting)("run", "--date", "2026-11-22", "--portfolio", above_cap)
    assert third_night.returncode == EXIT_ATTENTION, explain(third_night)
