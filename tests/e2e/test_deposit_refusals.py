"""Money moved and then refused by InvestSuite is never left unannounced: undone (or attention), reported, exit 3.

A run is SIGKILLed right after a deposit's ledger move; the customer's portfolio is then archived or deleted,
so the next run's ``POST /events/deposit/`` is refused (409 naming the portfolio). With
``refused_after_move = "reverse"`` the move is undone once (customer -> incoming account) and the credit held
with the true reason; with ``"attention"`` the operation stops NEEDS_ATTENTION naming it. Either way the run
exits 3 and its report lists the credit; ``reconcile --date`` names it (a moved-back credit as such, a
moved but unannounced one as a DEPOSIT_NOT_ANNOUNCED break); every later run lists it again: a held credit
as "still held" (exit 0, as any unchanged hold), an operation needing attention as an exception (exit 3
until resolved).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.seed import libpq_dsn
from batch.sandbox.seed_deposits import seed_deposits
from batch.sandbox.store import dumps, loads
from tests.e2e.helpers import Cli, explain, fetch, report_paths
from tests.fixtures.sandbox import RunningSandbox

DATE = "2026-11-20"
LEASE_SECONDS = 5


def configure(cli: Cli, *, refused_after_move: str = "reverse", integration: str = "client") -> None:
    """One thread (the kill lands on one known operation), short leases, the deposit settings."""
    text = cli.config.read_text(encoding="utf-8")
    text = text.replace("concurrency = 8", f"concurrency = 1\nlease_seconds = {LEASE_SECONDS}")
    # a short lease needs short calls: the lease must outlive the longest InvestSuite call
    short_calls = "connect_timeout_seconds = 1.0\nread_timeout_seconds = 2.0\nmax_retry_seconds = 1.0\n"
    text = text.replace("[policy]", short_calls + "\n[policy]")
    text += f'\n[deposits]\nbroker_integration = "{integration}"\nrefused_after_move = "{refused_after_move}"\n'
    cli.config.write_text(text, encoding="utf-8")


def change_portfolio(dsns: Dsns, portfolio_id: str, **fields: Any) -> None:
    with psycopg.connect(libpq_dsn(dsns.sandbox)) as conn:
        row = conn.execute("SELECT doc::text FROM sandbox.portfolios WHERE id = %s", [portfolio_id]).fetchone()
        assert row is not None
        doc = loads(row[0]) | fields
        conn.execute("UPDATE sandbox.portfolios SET doc = %s::json WHERE id = %s", [dumps(doc), portfolio_id])


def moved_not_announced(dsns: Dsns) -> dict[str, Any]:
    """The one deposit operation a kill cut off after its ledger move."""
    moved = {r["idempotency_key"] for r in fetch(dsns.ledger, "SELECT idempotency_key FROM ledger.transfers")}
    rows = fetch(dsns.journal, "SELECT * FROM batch.payouts WHERE flow = 'DEPOSIT' AND state <> 'COMPLETED'")
    cut = [r for r in rows if f"deposit:{r['credit_reference']}" in moved]
    assert len(cut) == 1, rows
    return cut[0]


def deposit_lines(stdout: str) -> dict[str, dict[str, Any]]:
    report = json.loads(report_paths(stdout)["json"].read_text(encoding="utf-8"))
    return {line["credit_reference"]: line for line in report["deposit_lines"]}


def report_totals(stdout: str) -> dict[str, Any]:
    report = json.loads(report_paths(stdout)["json"].read_text(encoding="utf-8"))
    return dict(report["deposits"]["totals"])


def kill_after_a_move_then(cli: Cli, dsns: Dsns, **change: Any) -> dict[str, Any]:
    """Seed, run until SIGKILL right after the first ledger move, change that portfolio, let the lease lapse."""
    seed_deposits(dsns.sandbox, dsns.ledger)
    killed = cli("run", "--date", DATE, "--flow", "deposits", env_extra={"BATCH_CRASH_POINTS": "LEDGER_MOVE.after:1"})
    assert killed.returncode == -9, explain(killed)
    operation = moved_not_announced(dsns)
    change_portfolio(dsns, operation["portfolio_id"], **change)
    time.sleep(LEASE_SECONDS + 1)
    return operation


@pytest.mark.parametrize(("change", "reason"), [({"archived": True}, "ARCHIVED"), ({"deleted": True}, "DELETED")])
def test_a_move_refused_after_the_fact_is_undone_held_reported_and_listed_next_run(
    cli: Cli, sandbox: RunningSandbox, dsns: Dsns, change: dict[str, Any], reason: str
) -> None:
    """Archived/deleted between move and event: undone once, HOLD with the reason (exit 3), listed next run."""
    configure(cli)
    operation = kill_after_a_move_then(cli, dsns, **change)
    credit = operation["credit_reference"]

    run = cli("run", "--date", DATE, "--flow", "deposits")
    assert run.returncode == 3, explain(run)
    (after,) = fetch(dsns.journal, "SELECT * FROM batch.payouts WHERE id = %s", [operation["id"]])
    assert after["state"] == "MOVE_REVERSED", after
    transfers = fetch(
        dsns.ledger,
        "SELECT t.idempotency_key, t.amount, d.reference AS debit, c.reference AS credit FROM ledger.transfers t"
        " JOIN ledger.accounts d ON d.id = t.debit_account_id JOIN ledger.accounts c ON c.id = t.credit_account_id"
        " WHERE t.idempotency_key IN (%s, %s) ORDER BY t.id",
        [f"deposit:{credit}", f"deposit-undo:{credit}"],
    )
    account, amount, incoming = operation["ledger_account"], operation["amount"], f"INCOMING-{operation['currency']}"
    assert [(t["debit"], t["credit"], t["amount"]) for t in transfers] == [
        (incoming, account, amount),
        (account, incoming, amount),
    ]
    assert not fetch(dsns.sandbox, "SELECT 1 FROM sandbox.events WHERE idempotency_key = %s", [credit])
    line = deposit_lines(run.stdout)[credit]
    assert (line["decision"], line["reason"]) == ("HOLD", reason), line  # once, whether carried over or decided
    assert sum(t["held"]["count"] for t in report_totals(run.stdout).values()) >= 1

    assert not line["still_held"]  # a new hold: the exit 3 above

    reconciled = cli("reconcile", "--date", DATE)  # ledger and InvestSuite agree: no break, but named
    assert reconciled.returncode == 0, explain(reconciled)
    assert f"credit {credit}: moved, refused by InvestSuite, moved back" in reconciled.stdout

    listed = cli("run", "--date", DATE, "--flow", "deposits")
    assert listed.returncode == 0, explain(listed)  # listed again as "still held" (DESIGN §9.4: no new alarm)
    again = deposit_lines(listed.stdout)[credit]
    assert (again["decision"], again["reason"], again["still_held"]) == ("HOLD", reason, True), again
    assert len(fetch(dsns.ledger, "SELECT 1 FROM ledger.transfers WHERE idempotency_key LIKE %s", [f"%{credit}"])) == 2


def test_the_attention_policy_keeps_the_money_moved_and_names_the_refusal(
    cli: Cli, sandbox: RunningSandbox, dsns: Dsns
) -> None:
    """refused_after_move = attention: NEEDS_ATTENTION naming the archive, exit 3, every later run lists it."""
    configure(cli, refused_after_move="attention")
    operation = kill_after_a_move_then(cli, dsns, archived=True)
    credit = operation["credit_reference"]
    for _ in range(2):
        run = cli("run", "--date", DATE, "--flow", "deposits")
        assert run.returncode == 3, explain(run)
        (after,) = fetch(dsns.journal, "SELECT * FROM batch.payouts WHERE id = %s", [operation["id"]])
        assert after["state"] == "NEEDS_ATTENTION" and "archived" in after["last_error"], after
        assert credit in deposit_lines(run.stdout)
    assert (
        fetch(dsns.journal, "SELECT reason FROM batch.decisions WHERE credit_reference = %s ORDER BY id", [credit])[-1][
            "reason"
        ]
        == "PAYOUT_NEEDS_ATTENTION"
    )
    assert not fetch(
        dsns.ledger, "SELECT 1 FROM ledger.transfers WHERE idempotency_key = %s", [f"deposit-undo:{credit}"]
    )
    assert Decimal(0) < operation["amount"]
