"""Reports account for every movement: a run stopped by SIGTERM and the run that finishes its payouts;
a business date run three times. The oracles are SQL on the ledger and the journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

from batch.sandbox.seed import portfolios_by_case, seed_scenario
from tests.e2e.helpers import Cli, explain, fetch, report_paths
from tests.fixtures.sandbox import RunningSandbox

BUSINESS_DATE = "2026-07-01"


def _sums(rows: list[dict[str, Any]], key: str = "amount") -> dict[str, Decimal]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        sums[row["currency"].strip()] += row[key] or Decimal(0)
    return dict(sums)


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(report_paths(result.stdout)["json"].read_text(encoding="utf-8"))
    return report


def _stopped_run(cli: Cli) -> None:
    """Start `batch run`, SIGTERM it once a few payouts completed, wait for its graceful end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")} | {"BATCH_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "batch", "--config", str(cli.config), "run", "--date", BUSINESS_DATE]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = fetch(cli.dsns.journal, "SELECT count(*) AS n FROM batch.payouts WHERE state = 'COMPLETED'")
            if done[0]["n"] >= 15:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()


def test_run_after_a_sigterm_reports_the_carried_over_payouts_and_what_the_ledger_moved(
    cli: Cli, sandbox: RunningSandbox
) -> None:
    """The run finishing a stopped run's payouts counts them as carried over; its totals equal the ledger's moves."""
    seed_scenario(cli.dsns.sandbox, cli.dsns.ledger, size=200)
    sandbox.admin.set_faults(latency_ms=40)
    _stopped_run(cli)
    sandbox.admin.set_faults()
    (first,) = fetch(cli.dsns.journal, "SELECT id FROM batch.runs")
    left_open = fetch(
        cli.dsns.journal,
        "SELECT id, currency, amount FROM batch.payouts WHERE run_id = %s AND state NOT IN ('COMPLETED', 'HELD')",
        [first["id"]],
    )
    assert left_open, "the SIGTERM left payouts open"

    second = cli("run", "--date", BUSINESS_DATE)
    assert second.returncode in (0, 3), explain(second)
    report = _report(second)
    (run2,) = fetch(cli.dsns.journal, "SELECT * FROM batch.runs WHERE id <> %s", [first["id"]])

    # the carried-over group is exactly the first run's open payouts, each paid now
    carried = [x for x in report["lines"] if x["group"] == "carried_over"]
    assert sorted(x["payout_id"] for x in carried) == sorted(str(p["id"]) for p in left_open)
    assert all(x["outcome"] == "paid" for x in carried)
    assert "carried over from an earlier run" in second.stdout or "carried_over" in second.stdout

    # what the ledger moved during the second run, per currency (the ledger's own clock and rows)
    moved = _sums(
        fetch(
            cli.dsns.ledger,
            """SELECT t.currency, t.amount FROM ledger.transfers t JOIN ledger.accounts c ON c.id = t.credit_account_id
                WHERE c.kind = 'PAYOUT_CLEARING' AND t.created_at BETWEEN %s AND %s""",
            [run2["started_at"], run2["finished_at"]],
        )
    )
    assert moved, "the second run moved money"
    completed = _sums(
        fetch(
            cli.dsns.journal,
            "SELECT currency, amount FROM batch.payouts WHERE completed_at BETWEEN %s AND %s",
            [run2["started_at"], run2["finished_at"]],
        )
    )
    for ccy, totals in report["totals"].items():
        assert Decimal(totals["moved"]) == moved.get(ccy, Decimal(0)), ccy
        assert Decimal(totals["paid"]["amount"]) == completed.get(ccy, Decimal(0)), ccy
    assert set(moved) <= set(report["totals"])
    recon = report["reconcile"]
    assert recon["breaks"] == 0 and recon["checked"] >= len(left_open)
    # the run reconciles its whole date: every payout of the date completed by either run
    of_date = _sums(
        fetch(
            cli.dsns.journal,
            "SELECT currency, amount FROM batch.payouts WHERE state = 'COMPLETED' AND flow = 'WITHDRAWAL'"
            " AND business_date = %s",
            [BUSINESS_DATE],
        )
    )
    for ccy, figures in recon["figures"]["currencies"].items():
        assert Decimal(figures["ledger"]) == Decimal(figures["journal"]) == of_date.get(ccy, Decimal(0)), ccy
        assert Decimal(figures["moved_ledger"]) == moved.get(ccy, Decimal(0)), ccy
    assert all(c["ok"] for c in report["checks"]), report["checks"]

    # `batch runs` shows the same figures for the second run
    history = cli("runs")
    (line,) = [x for x in history.stdout.splitlines() if x.startswith(str(run2["id"]))]
    for ccy in completed:
        assert f"{ccy} paid {Decimal(report['totals'][ccy]['paid']['amount'])}" in line, line
    assert "carried over" in line, line


def test_date_run_three_times_counts_each_portfolio_once(cli: Cli) -> None:
    """Three runs of one date: the date report has each portfolio once, totals the sum of the latest decisions."""
    seed_scenario(cli.dsns.sandbox, cli.dsns.ledger, size=30)
    first = cli("run", "--date", BUSINESS_DATE)
    assert first.returncode == 3, explain(first)
    (held,) = fetch(cli.dsns.journal, "SELECT id FROM batch.payouts WHERE state = 'HELD'")
    approved = cli.as_operator("alice")("payout", "approve", str(held["id"]), "--reason", "customer confirmed")
    assert approved.returncode == 0, explain(approved)
    for _ in range(2):
        again = cli("run", "--date", BUSINESS_DATE)
        assert again.returncode in (0, 3), explain(again)

    done = cli("report", "--date", BUSINESS_DATE, "--format", "json")
    assert done.returncode == 0, explain(done)
    report = json.loads(done.stdout)
    assert len(report["runs"]) == 3
    candidates = [x for x in report["lines"] if x["group"] == "planned"]
    portfolios = [x["portfolio_id"] for x in candidates]
    assert len(portfolios) == len(set(portfolios))
    latest = fetch(
        cli.dsns.journal,
        """SELECT DISTINCT ON (portfolio_id) portfolio_id, coalesce(currency, '???') AS currency, requested_amount
             FROM batch.decisions ORDER BY portfolio_id, created_at DESC""",
    )
    assert sorted(portfolios) == sorted(r["portfolio_id"] for r in latest)
    expected = _sums(latest, "requested_amount")
    for ccy, totals in report["totals"].items():
        assert Decimal(totals["groups"]["planned"]["requested"]) == expected[ccy], ccy
    (above_cap,) = portfolios_by_case(cli.dsns.sandbox)["above_cap"]
    (line,) = [x for x in candidates if x["portfolio_id"] == above_cap]
    assert (line["outcome"], line["paid"]) == ("paid", "60000.00")
    assert report["totals"]["EUR"]["held"]["amount"] != "0.00" or report["totals"]["EUR"]["held"]["count"] == 0
    ledger = _sums(
        fetch(
            cli.dsns.ledger,
            """SELECT t.currency, t.amount FROM ledger.transfers t JOIN ledger.accounts c ON c.id = t.credit_account_id
                WHERE c.kind = 'PAYOUT_CLEARING' AND t.value_date = %s""",
            [BUSINESS_DATE],
        )
    )
    for ccy, amount in ledger.items():
        assert Decimal(report["totals"][ccy]["paid"]["amount"]) == amount, ccy
