"""One business date, one truth (issue 21): the date's report and reconciliation are the date's money.

Acceptance: one date, the first runs SIGKILLed under 503s and lost responses (the chaos harness), then
customers of already-paid portfolios ask again and deposits are announced for paid portfolios, the
date runs again, and once more a customer asks through the listener's bus handler. Then, per currency,
ledger payout transfers of the value date = the date report's paid = InvestSuite withdrawals = withdraw
events, and ``batch reconcile --date`` exits 0 with 0 breaks against the sandbox serving the docs'
example values (transaction ``status`` "COMPLETED").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import replace
from datetime import date
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import pytest

from batch.adapters.ledger_deposits import IncomingFundsAdmin
from batch.adapters.postgres import Dsns, make_engine
from batch.domain.business_date import business_today
from batch.domain.money import quantum
from batch.sandbox.seed import seed_scenario
from batch.sandbox.seed_deposits import seed_deposits
from batch.settings import LedgerSettings
from tests.e2e.chaos_support import ChaosHarness, ChaosOptions, ChaosResult
from tests.e2e.helpers import Cli, explain, fetch
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.bus_support import listener_handler, withdrawal
from tests.integration.payout_support import app_for, make_settings, set_portfolio_doc

TIMEZONE = "Europe/Brussels"  # the harness's [run] timezone: the listener's business date is today there


def _ask_again(store: SandboxState, portfolio_id: str, share: Decimal = Decimal(4)) -> Decimal | None:
    """The customer asks again: divest = a quarter of the cash now (None when too little cash is left)."""
    doc = store.portfolio(portfolio_id)
    assert doc is not None
    currency = str(doc["base_currency"])
    amount = (Decimal(doc["portfolio"].get(f"${currency}", 0)) / share).quantize(quantum(currency), ROUND_DOWN)
    if amount < 1:
        return None

    def change(d: dict[str, Any]) -> None:
        d["config"]["manager_settings"]["divest_amount"] = amount

    set_portfolio_doc(store, portfolio_id, change)
    return amount


def _paid_portfolios(dsns: Dsns) -> list[dict[str, Any]]:
    return fetch(
        dsns.journal,
        """SELECT DISTINCT ON (portfolio_id) portfolio_id, currency, ledger_account FROM batch.payouts
            WHERE flow = 'WITHDRAWAL' AND state = 'COMPLETED' AND currency IN ('EUR', 'USD')
            ORDER BY portfolio_id, created_at""",
    )


def _sum(rows: list[dict[str, Any]], key: str = "amount") -> dict[str, Decimal]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        sums[str(row["currency"]).strip()] += Decimal(row[key])
    return dict(sums)


@pytest.mark.slow
def test_one_date_crashed_asked_again_and_listened_is_one_truth(
    dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Kills, lost answers, customers asking again, deposits and a bus event: the date report is the date's money."""
    today = business_today(TIMEZONE)
    harness = ChaosHarness(
        dsns,
        sandbox.base_url,
        tmp_path / "chaos",
        ChaosOptions(size=40, kills=4, business_date=today, deposits=False, deadline_seconds=600, concurrency=4),
        say=print,
    )
    harness.seed()
    chaos = ChaosResult()
    harness.crash_until_converged(chaos)  # 5 % 503s and 5 % lost responses on writes, SIGKILLs at crash points
    assert chaos.kills >= 1, chaos.table()
    sandbox.admin.set_faults()
    cli = Cli(config=harness.config, report_dir=tmp_path / "chaos" / "reports", dsns=dsns)
    store = SandboxState(dsns.sandbox)

    # customers of paid portfolios ask again; deposits are announced for other paid portfolios
    paid = _paid_portfolios(dsns)
    asked = [p["portfolio_id"] for p in paid[:6] if _ask_again(store, p["portfolio_id"]) is not None]
    assert len(asked) >= 3, paid
    credited = paid[6:9]
    engine = make_engine(dsns.ledger, pool_size=1, application_name="e2e-deposit")
    try:
        admin = IncomingFundsAdmin(engine, LedgerSettings())
        for n, p in enumerate(credited):
            admin.receive_credit(
                p["ledger_account"], Decimal("123.45"), p["currency"].strip(), today, f"e2e-credit-{n}"
            )
    finally:
        engine.dispose()
    again = cli("run", "--date", today.isoformat(), "--trigger", "test")
    assert again.returncode in (0, 3), explain(again)
    announced = fetch(
        dsns.journal, "SELECT portfolio_id FROM batch.payouts WHERE flow <> 'WITHDRAWAL' AND state = 'COMPLETED'"
    )
    assert len(announced) == len(credited) == 3, announced  # InvestSuite raised those paid portfolios' cash

    # once more through the listener's bus handler (a listener run of the same date)
    listened = [p for p in asked[:2] if _ask_again(store, p, Decimal(5)) is not None]
    settings = make_settings(sandbox.base_url, tmp_path / "listener")
    with app_for(settings, dsns) as app, listener_handler(app) as wired:
        for n, portfolio_id in enumerate(listened):
            doc = store.portfolio(portfolio_id)
            assert doc is not None
            amount = doc["config"]["manager_settings"]["divest_amount"]
            handled = wired.handler.handle(withdrawal(doc, str(amount), event_id=f"ask-again-{n}"))
            assert handled.status == "HANDLED", handled

    paid_twice = fetch(
        dsns.journal,
        """SELECT portfolio_id FROM batch.payouts WHERE flow = 'WITHDRAWAL' AND state = 'COMPLETED'
            GROUP BY portfolio_id HAVING count(*) >= 2""",
    )
    assert len(paid_twice) >= 3, paid_twice

    reconciled = cli("reconcile", "--date", today.isoformat())
    assert reconciled.returncode == 0, explain(reconciled)
    assert reconciled.stdout.splitlines()[0].endswith(", 0 breaks"), reconciled.stdout

    done = cli("report", "--date", today.isoformat(), "--format", "json")
    assert done.returncode == 0, explain(done)
    report = json.loads(done.stdout)
    assert report["schema_version"].startswith("3."), report["schema_version"]
    report_paid: dict[str, Decimal] = defaultdict(Decimal)
    for line in report["lines"]:
        if line["outcome"] == "paid" and line["group"] in ("planned", "paid_earlier"):
            report_paid[line["currency"]] += Decimal(line["paid"])
    lines_of = defaultdict(list)
    for line in report["lines"]:
        if line["outcome"] == "paid":
            lines_of[line["portfolio_id"]].append(line)
    assert all(len(lines_of[p["portfolio_id"]]) >= 2 for p in paid_twice), "a portfolio paid twice shows both"

    ledger = _sum(
        fetch(
            dsns.ledger,
            """SELECT t.currency, t.amount FROM ledger.transfers t JOIN ledger.accounts c ON c.id = t.credit_account_id
                WHERE c.kind = 'PAYOUT_CLEARING' AND t.value_date = %s""",
            [today],
        )
    )
    investsuite = _sum(
        fetch(
            dsns.sandbox,
            """SELECT m ->> 'instrument_id' AS currency, -(m ->> 'quantity')::numeric AS amount
                 FROM sandbox.transactions t, json_array_elements(t.doc -> 'movements') m
                WHERE m ->> 'type' = 'CASH_WITHDRAWAL'""",
        )
    )
    investsuite = {ccy.removeprefix("$"): amount for ccy, amount in investsuite.items()}
    events = _sum(
        [
            {"currency": e["data"]["currency"], "amount": e["data"]["amount"]}
            for e in store.events()
            if e.get("type") == "withdraw"
        ]
    )
    assert ledger, "money moved"
    for ccy in sorted(set(ledger) | set(report_paid) | set(investsuite) | set(events)):
        figures = (ledger.get(ccy), report_paid.get(ccy), investsuite.get(ccy), events.get(ccy))
        assert len(set(figures)) == 1, f"{ccy}: ledger, report paid, InvestSuite, events = {figures}"
    failing = [c for c in report["checks"] if not c["ok"]]
    assert not failing, failing


def _stop_with_sigterm(cli: Cli, business_date: str) -> subprocess.CompletedProcess[str]:
    """Start `batch run`, SIGTERM it once a few payouts completed, wait for its graceful end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")} | {"BATCH_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "batch", "--config", str(cli.config), "run", "--date", business_date]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = fetch(cli.dsns.journal, "SELECT count(*) AS n FROM batch.payouts WHERE state = 'COMPLETED'")
            if done[0]["n"] >= 15:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_sigterm_is_an_interrupted_run_and_the_next_run_reconciles_its_payouts(
    cli: Cli, sandbox: RunningSandbox
) -> None:
    """SIGTERM: INTERRUPTED with when and what was in flight, in-flight payouts no FAIL; the next run checks them."""
    day = "2026-07-01"
    seed_scenario(cli.dsns.sandbox, cli.dsns.ledger, size=200)
    sandbox.admin.set_faults(latency_ms=40)
    stopped = _stop_with_sigterm(cli, day)
    sandbox.admin.set_faults()
    assert stopped.returncode == 3, explain(stopped)
    (run,) = fetch(cli.dsns.journal, "SELECT * FROM batch.runs")
    assert run["status"] == "INTERRUPTED", run
    interrupted = run["summary"]["interrupted"]
    assert interrupted["signal"] == "SIGTERM" and interrupted["at"], interrupted
    left = fetch(
        cli.dsns.journal,
        "SELECT count(*) AS n FROM batch.payouts WHERE run_id = %s AND state NOT IN ('COMPLETED', 'CANCELLED',"
        " 'HELD', 'NEEDS_ATTENTION')",
        [run["id"]],
    )[0]["n"]
    assert left > 0 and interrupted["in_flight"] == left, (interrupted, left)
    assert run["error"].startswith("interrupted by SIGTERM at ") and "in flight" in run["error"], run["error"]
    history = cli("runs")
    assert "INTERRUPTED" in history.stdout, history.stdout
    shown = cli("report", "--run", str(run["id"]), "--format", "json")
    report = json.loads(shown.stdout)
    assert report["runs"][0]["status"] == "INTERRUPTED"
    assert not [c for c in report["checks"] if not c["ok"]], report["checks"]

    after = cli("run", "--date", day)
    assert after.returncode in (0, 3), explain(after)
    (second,) = fetch(cli.dsns.journal, "SELECT summary FROM batch.runs WHERE id <> %s", [run["id"]])
    of_date = fetch(
        cli.dsns.journal,
        "SELECT count(*) AS n FROM batch.payouts WHERE business_date = %s AND flow = 'WITHDRAWAL'",
        [day],
    )[0]["n"]
    assert second["summary"]["reconcile"]["checked"] == of_date  # the whole date, the stopped run's payouts too
    assert second["summary"]["reconcile"]["breaks"] == 0


def test_a_killed_runs_completed_payouts_are_in_the_next_runs_reconciliation(cli: Cli) -> None:
    """Payouts a SIGKILLed run completed are checked by the next finished run (it reconciles the whole date)."""
    day = date(2026, 7, 2)
    dsns = cli.dsns
    seed_scenario(dsns.sandbox, dsns.ledger, size=40)
    # SIGKILL inside a payout's last step: the run is recorded and has completed payouts by then
    for _ in range(10):
        killed = cli("run", "--date", day.isoformat(), env_extra={"BATCH_CRASH_POINTS": "SEND_EVENT.after:0.2"})
        if killed.returncode == -signal.SIGKILL:
            break
    assert killed.returncode == -signal.SIGKILL, explain(killed)
    clean = cli("run", "--date", day.isoformat())
    assert clean.returncode in (0, 3), explain(clean)
    killed_runs = fetch(dsns.journal, "SELECT id FROM batch.runs WHERE status = 'ABANDONED'")
    by_killed = fetch(
        dsns.journal,
        "SELECT count(*) AS n FROM batch.payouts WHERE state = 'COMPLETED' AND run_id = ANY(%s)",
        [[r["id"] for r in killed_runs]],
    )[0]["n"]
    assert killed_runs and by_killed > 0, (killed_runs, by_killed)
    last = fetch(
        dsns.journal,
        "SELECT r.checked, r.breaks, r.figures FROM batch.reconciliations r JOIN batch.runs u ON u.id = r.run_id"
        " ORDER BY r.finished_at DESC LIMIT 1",
    )[0]
    of_date = fetch(
        dsns.journal,
        "SELECT count(*) AS n FROM batch.payouts WHERE business_date = %s AND flow = 'WITHDRAWAL'",
        [day],
    )[0]["n"]
    assert last["checked"] == of_date and last["breaks"] == 0, last
    assert last["figures"]["stats"]["scope"] == "date"


def test_an_unchanged_hold_alerts_once_across_a_failed_run_and_a_listener_run(
    cli: Cli, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Still held compares with the last completed nightly run: a refused run and a bus event do not reset it."""
    day = business_today(TIMEZONE)
    seed_scenario(cli.dsns.sandbox, cli.dsns.ledger, size=30)
    first = cli("run", "--date", day.isoformat())
    assert first.returncode == 3, explain(first)  # new holds
    second = cli("run", "--date", day.isoformat())
    assert second.returncode == 0, explain(second)
    refused = cli("run", "--date", day.isoformat(), env_extra={"BATCH_INVESTSUITE__SECRET_ACCESS_KEY": "wrong"})
    assert refused.returncode == 2, explain(refused)  # refused credentials: a FAILED run, a configuration error
    held = fetch(
        cli.dsns.journal,
        "SELECT portfolio_id FROM batch.decisions WHERE decision = 'HOLD' AND payout_id IS NULL LIMIT 1",
    )
    store = SandboxState(cli.dsns.sandbox)
    doc = store.portfolio(held[0]["portfolio_id"])
    assert doc is not None
    with app_for(make_settings(sandbox.base_url, tmp_path / "listener"), cli.dsns) as app, listener_handler(app) as w:
        divest = doc["config"]["manager_settings"].get("divest_amount")
        amount = format(divest, "f") if isinstance(divest, Decimal) else "1"  # the event is only a trigger
        handled = w.handler.handle(withdrawal(doc, amount, event_id="one-bus-event"))
        assert handled.status == "HANDLED", handled
    third = cli("run", "--date", day.isoformat())
    assert third.returncode == 0, explain(third)
    summaries = fetch(
        cli.dsns.journal,
        "SELECT summary FROM batch.runs WHERE trigger <> 'listener' AND status LIKE 'SUCCEEDED%%' ORDER BY started_at",
    )
    assert summaries[1]["summary"]["still_held"] == summaries[2]["summary"]["still_held"] > 0, summaries

    listed = cli("payouts", "--state", "all", "--flow", "withdrawal")
    assert listed.returncode == 0 and "withdrawal" in listed.stdout and " deposit " not in listed.stdout, listed.stdout


def test_invalid_base_url_is_a_configuration_error_naming_the_setting(cli: Cli) -> None:
    """`investsuite.base_url = "not-a-url"`: exit 2 naming the setting, not a transport error."""
    config = cli.config.with_name("bad-url.toml")
    text = cli.config.read_text(encoding="utf-8")
    config.write_text(re.sub(r'base_url = "[^"]*"', 'base_url = "not-a-url"', text), encoding="utf-8")
    done = replace(cli, config=config)("run", "--date", "2026-07-01")
    assert done.returncode == 2, explain(done)
    assert "investsuite.base_url" in done.stderr and "transport error" not in done.stderr, done.stderr


def test_a_sub_minor_credit_is_reported_with_its_real_decimals(cli: Cli, sandbox: RunningSandbox) -> None:
    """A held 10.005 EUR credit shows as 10.005 in the report and its totals, never rounded to 10.00."""
    seed_deposits(cli.dsns.sandbox, cli.dsns.ledger)
    done = cli("run", "--date", "2026-07-01", "--flow", "deposits")
    assert done.returncode in (0, 3), explain(done)
    (run,) = fetch(cli.dsns.journal, "SELECT id FROM batch.runs")
    shown = cli("report", "--run", str(run["id"]), "--format", "json")
    report = json.loads(shown.stdout)
    (line,) = [d for d in report["deposit_lines"] if d["amount"] == "10.005"]
    assert line["currency"] == "EUR"
    eur = report["deposits"]["totals"]["EUR"]
    assert eur["received"].endswith("5") and len(eur["received"].partition(".")[2]) == 3, eur
    held = [b for b in eur.values() if isinstance(b, dict) and b["amount"].endswith(".005")]
    assert held, eur  # the bucket holding it keeps the half cent
