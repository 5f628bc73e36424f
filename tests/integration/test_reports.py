"""Run reports in every format, checked for content against the journal of a real run.

The module runs the real job once against a seeded sandbox (business date D1), runs D1 again,
then approves the held payout and runs D2, which pays it: the first run's report must not change.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from batch.adapters.postgres import Dsns
from batch.bootstrap import App, build_app
from batch.domain.payout import PayoutState
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.seed import seed_scenario
from batch.sandbox.server import SandboxProcess
from batch.service.nightly.run import RunRequest, RunResult, run_job
from batch.service.reports import render
from batch.service.reports.build import BUCKETS, Report, build_report
from batch.settings import InvestSuiteSettings, PolicySettings, RunSettings, Settings
from tests.fixtures.pg import fresh_dsns
from tests.fixtures.roles import journal_as

D1 = date(2026, 3, 2)
D2 = date(2026, 3, 3)
CAP = Decimal("50000")


@dataclass
class World:
    dsns: Dsns
    app: App
    config: Path
    first: RunResult
    rerun: RunResult
    later: RunResult
    before: dict[str, str]  # the first run's report in every format, rendered before the later run
    approved_payout: uuid.UUID


def _settings(base_url: str, report_dir: Path) -> Settings:
    return Settings(
        investsuite=InvestSuiteSettings(
            base_url=base_url,
            access_key_id=DEFAULT_ACCESS_KEY_ID,
            secret_access_key=SecretStr(DEFAULT_SECRET_ACCESS_KEY),
        ),
        policy=PolicySettings(max_payout={"EUR": CAP, "USD": CAP}),
        run=RunSettings(report_dir=report_dir, concurrency=4),
    )


def _config_file(path: Path, dsns: Dsns, base_url: str, report_dir: Path) -> Path:
    path.write_text(
        "[database]\n"
        f'journal_dsn = "{dsns.journal}"\nledger_dsn = "{dsns.ledger}"\nsandbox_dsn = "{dsns.sandbox}"\n'
        "[investsuite]\n"
        f'base_url = "{base_url}"\naccess_key_id = "{DEFAULT_ACCESS_KEY_ID}"\n'
        f'secret_access_key = "{DEFAULT_SECRET_ACCESS_KEY}"\n'
        "[policy]\n"
        f'max_payout = {{ EUR = "{CAP}", USD = "{CAP}" }}\n'
        "[run]\n"
        f'report_dir = "{report_dir}"\nconcurrency = 4\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def world(pg_admin_dsn: str, pg_templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The real job run three times on one seeded scenario (see the module docstring)."""
    tmp = tmp_path_factory.mktemp("reports")
    dsns = fresh_dsns(pg_admin_dsn, pg_templates)
    seed_scenario(dsns.sandbox, dsns.ledger, size=40)
    with SandboxProcess(dsns.sandbox) as sandbox:
        app = build_app(_settings(sandbox.base_url, tmp / "out"), dsns=dsns)
        try:
            first = run_job(app, RunRequest(business_date=D1, trigger="test", operator="tester"))
            rerun = run_job(app, RunRequest(business_date=D1, trigger="test", operator="tester"))
            assert first.run_id is not None
            report = build_report(app.journal_engine, run_id=first.run_id)
            before = {fmt: renderer(report) for fmt, renderer in render.RENDERERS.items()}
            (held,) = app.journal.list_payouts([PayoutState.HELD])
            with journal_as(dsns.journal, "alice") as alice:
                alice.operator_action("approve", held.id, reason="customer confirmed by phone", display_name=None)
            later = run_job(app, RunRequest(business_date=D2, trigger="test", operator="tester"))
            config = _config_file(tmp / "batch.toml", dsns, sandbox.base_url, tmp / "cli-out")
            yield World(dsns, app, config, first, rerun, later, before, held.id)
        finally:
            app.close()


def _report(world: World, run: RunResult | None = None) -> Report:
    result = run or world.first
    assert result.run_id is not None
    return build_report(world.app.journal_engine, run_id=result.run_id)


def _journal(world: World, sql: str, **params: Any) -> list[sa.Row[Any]]:
    with world.app.journal_engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params).all())


def _journal_requested(world: World, run_id: uuid.UUID) -> dict[str, Decimal]:
    rows = _journal(
        world,
        "SELECT coalesce(currency, '???') AS ccy, coalesce(sum(requested_amount), 0) AS s FROM batch.decisions"
        " WHERE run_id = :r GROUP BY 1",
        r=run_id,
    )
    return {r.ccy: Decimal(r.s) for r in rows}


def _journal_paid(world: World, run_id: uuid.UUID) -> dict[str, dict[str, Decimal]]:
    """Per currency, portfolio -> amount of the run's payouts completed by the run's end."""
    rows = _journal(
        world,
        "SELECT p.currency, p.portfolio_id, p.amount FROM batch.payouts p JOIN batch.decisions d ON d.payout_id = p.id"
        " JOIN batch.runs r ON r.id = d.run_id WHERE d.run_id = :r AND p.completed_at <= r.finished_at",
        r=run_id,
    )
    paid: dict[str, dict[str, Decimal]] = {}
    for r in rows:
        paid.setdefault(r.currency.strip(), {})[r.portfolio_id] = Decimal(r.amount)
    return paid


def _cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "batch", "--config", str(world.config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _stable(document: dict[str, Any]) -> dict[str, Any]:
    """A JSON report without what legitimately changes on re-rendering (render time, live audit check)."""
    return {k: v for k, v in document.items() if k not in ("generated_at", "audit")}


# -- JSON -----------------------------------------------------------------------------------------------


def test_json_report_totals_match_the_journal(world: World) -> None:
    """The JSON report of a run carries its header and per-currency totals equal to the journal's sums."""
    assert world.first.run_id is not None
    doc = json.loads(render.render_json(_report(world)))
    assert doc["schema_version"] == "3.0"
    assert doc["kind"] == "run"
    assert doc["business_date"] == D1.isoformat()
    (run,) = doc["runs"]
    assert run["id"] == str(world.first.run_id)
    assert run["trigger"] == "test"
    assert run["operator"] == "tester"
    assert run["exit_code"] == 3  # one payout held above the cap
    assert run["status"] == "SUCCEEDED_WITH_EXCEPTIONS"
    assert run["config_digest"] == world.app.settings.digest()
    assert datetime.fromisoformat(doc["as_of"]) == datetime.fromisoformat(run["finished_at"])
    requested = _journal_requested(world, world.first.run_id)
    paid = _journal_paid(world, world.first.run_id)
    assert set(doc["totals"]) == set(requested)
    for ccy, totals in doc["totals"].items():
        assert Decimal(totals["requested"]) == requested[ccy]
        assert Decimal(totals["paid"]["amount"]) == sum(paid.get(ccy, {}).values(), Decimal(0))
        assert totals["paid"]["count"] == len(paid.get(ccy, {}))
        assert sum(totals[b]["count"] for b in BUCKETS) == totals["candidates"]
        assert Decimal(totals["ledger_posted"]) == Decimal(totals["paid"]["amount"])
    assert sum(len(p) for p in paid.values()) > 10
    assert doc["totals"]["EUR"]["held"]["count"] >= 1
    assert all(check["ok"] for check in doc["checks"])
    assert {c["currency"] for c in doc["checks"]} == set(doc["totals"]) | {"all"}  # "all": the reconcile
    assert doc["audit"]["verified"] is True
    (decisions,) = _journal(world, "SELECT count(*) AS n FROM batch.decisions WHERE run_id = :r", r=world.first.run_id)
    assert len(doc["lines"]) == decisions.n


def test_json_lines_carry_every_documented_field(world: World) -> None:
    """Every JSON line has the documented fields; a paid line has its references and every step's time."""
    doc = json.loads(render.render_json(_report(world)))
    fields = {
        "run_id",
        "portfolio_id",
        "decision",
        "reason",
        "outcome",
        "currency",
        "requested_raw",
        "requested",
        "ledger_available",
        "investsuite_cash",
        "paid",
        "reconciliation_break",
        "payout_id",
        "payout_state",
        "ledger_reference",
        "transaction_id",
        "failing_step",
        "last_error",
        "note",
        "steps",
        "dry_run",
        "group",
        "still_held",
        "moved",
        "earlier",
    }
    assert all(set(line) == fields for line in doc["lines"])
    paid = [line for line in doc["lines"] if line["outcome"] == "paid"]
    assert paid
    for line in paid:
        assert line["payout_state"] == "COMPLETED"
        assert line["paid"] == line["requested"]
        assert line["ledger_reference"] and line["transaction_id"]
        assert set(line["steps"]) == {s.removesuffix("_at") for s in render.STEP_COLUMNS}
        assert all(line["steps"].values())
    assert [line["outcome"] for line in doc["lines"]].count("held") == doc["totals"]["EUR"]["held"]["count"] + sum(
        t["held"]["count"] for c, t in doc["totals"].items() if c != "EUR"
    )


# -- CSV ------------------------------------------------------------------------------------------------


def _csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    assert text.startswith("\ufeff"), "BOM so that Excel reads UTF-8"
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def test_csv_has_one_row_per_candidate_with_journal_amounts(world: World) -> None:
    """The CSV parses with the csv module: stable header, one row per candidate, amounts as in the journal."""
    assert world.first.run_id is not None
    text = render.render_csv(_report(world))
    assert "\r\n" in text
    header, rows = _csv_rows(text)
    assert header == list(render.CSV_COLUMNS)
    assert header[:16] == [
        "run_id",
        "portfolio_id",
        "decision",
        "reason",
        "outcome",
        "currency",
        "requested_raw",
        "requested",
        "ledger_available",
        "investsuite_cash",
        "paid",
        "reconciliation_break",
        "payout_id",
        "payout_state",
        "ledger_reference",
        "transaction_id",
    ]
    assert header[-3:] == ["failing_step", "last_error", "note"]
    decisions = _journal(
        world,
        "SELECT portfolio_id, requested_amount, currency FROM batch.decisions WHERE run_id = :r",
        r=world.first.run_id,
    )
    assert sorted(r["portfolio_id"] for r in rows) == sorted(d.portfolio_id for d in decisions)
    by_portfolio = {r["portfolio_id"]: r for r in rows}
    for d in decisions:
        row = by_portfolio[d.portfolio_id]
        assert row["run_id"] == str(world.first.run_id)
        if d.requested_amount is None:
            assert row["requested"] == ""
        else:
            assert Decimal(row["requested"]) == d.requested_amount
            assert "E" not in row["requested"].upper(), "plain notation"
    paid = _journal_paid(world, world.first.run_id)
    for ccy, amounts in paid.items():
        for portfolio_id, amount in amounts.items():
            row = by_portfolio[portfolio_id]
            assert (row["currency"], Decimal(row["paid"]), row["payout_state"]) == (ccy, amount, "COMPLETED")
            assert row["ledger_reference"] and row["transaction_id"] and row["completed_at"]
    total_paid = sum((Decimal(r["paid"]) for r in rows if r["paid"] and r["currency"] == "EUR"), Decimal(0))
    assert total_paid == sum(paid["EUR"].values(), Decimal(0))


def test_csv_guards_against_formula_injection_but_keeps_negative_numbers(world: World) -> None:
    """Text cells starting with = + - @ get an apostrophe; a negative amount in a numeric column does not."""
    report = _report(world)
    line = report.lines[0]
    report.lines[0] = replace(
        line, note='=HYPERLINK("x","y")', reason="@SUM(A1)", last_error="-1+2", ledger_available=Decimal("-12.50")
    )
    _, rows = _csv_rows(render.render_csv(report))
    (row,) = [r for r in rows if r["portfolio_id"] == line.portfolio_id and r["run_id"] == line.run_id]
    assert row["note"] == '\'=HYPERLINK("x","y")'
    assert row["reason"] == "'@SUM(A1)"
    assert row["last_error"] == "'-1+2"
    assert row["ledger_available"] == "-12.50"


# -- HTML -----------------------------------------------------------------------------------------------


def test_html_report_shows_header_totals_checks_and_audit_head(world: World) -> None:
    """The HTML report holds the run header, each currency's totals, coloured PASS checks and the audit head."""
    report = _report(world)
    page = render.render_html(report)
    run = report.runs[0]
    assert page.startswith("<!DOCTYPE html>")
    for text in (str(run["id"]), str(D1), "tester", run["config_digest"], run["software_version"], "test"):
        assert text in page
    for ccy, t in report.totals.items():
        assert f"<td>{ccy}</td>" in page
        assert format(t.requested, "f") in page
        assert format(t.amount["paid"], "f") in page
    assert page.count('class="pass">PASS') == len(report.checks) + 1  # and the audit chain
    assert 'class="fail"' not in page
    assert report.audit["head_hash"] in page
    assert "@page { size: A4" in page
    exceptions_at, lines_at = page.index("<h2>Exceptions"), page.index("All candidate portfolios")
    assert exceptions_at < page.index("<h2>Reconciliation breaks") < lines_at
    held = [x for x in report.lines if x.outcome == "held" and x.payout_id]
    assert held and str(held[0].payout_id) in page[exceptions_at:lines_at]
    for line in report.lines:
        assert line.portfolio_id in page[lines_at:]


def test_html_escapes_untrusted_text_and_loads_nothing_external(world: World) -> None:
    """Notes and errors with markup are escaped; the page has no script, no links and no external URL."""
    report = _report(world)
    report.lines[0] = replace(report.lines[0], note="<script>alert('note')</script>", last_error='"><img src=x>')
    report.runs[0] = {**report.runs[0], "operator": "<b>mallory</b>"}
    page = render.render_html(report)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x&gt;" in page
    assert "&lt;b&gt;mallory&lt;/b&gt;" in page
    assert "<img" not in page
    assert not re.search(r"<[^>]*\b(src|href)\s*=", page, re.IGNORECASE)
    assert not re.search(r"https?://", page)
    assert "url(" not in page and "@import" not in page and "<link" not in page


def test_html_flags_a_failed_check_and_a_broken_chain_in_red(world: World) -> None:
    """A failing control check and a broken audit chain are shown as FAIL, with the first broken seq."""
    report = _report(world)
    report.checks[0] = replace(report.checks[0], ok=False)
    report.audit = {**report.audit, "verified": False, "first_broken_seq": 17, "problem": "edited?"}
    page = render.render_html(report)
    assert 'class="banner fail"' in page
    assert "1 control check(s) FAIL" in page and "audit chain BROKEN" in page
    assert 'class="fail">FAIL' in page
    assert "seq 17" in page


# -- text -----------------------------------------------------------------------------------------------


def test_text_summary_lists_counts_and_amounts_by_outcome_and_currency(world: World) -> None:
    """The text summary has the title, the run line, one line per non-empty bucket, the checks and the chain."""
    report = _report(world)
    text = render.render_text(report)
    lines = text.splitlines()
    assert lines[0] == f"Payout run {world.first.run_id} - business date {D1}"
    assert lines[1].startswith(f"  run {world.first.run_id}  SUCCEEDED_WITH_EXCEPTIONS  exit 3  trigger test")
    assert f"{report.candidates} lines, {report.exceptions_count} exceptions (held " in text
    for ccy, t in report.totals.items():
        for b in BUCKETS:
            if t.count[b]:
                assert re.search(rf"^  {ccy}\s+{b}\s+{t.count[b]}\s+{re.escape(str(t.amount[b]))}$", text, re.M)
        assert re.search(rf"^  {ccy}\s+requested\s+{t.candidates}\s+{re.escape(str(t.requested))}$", text, re.M)
    assert text.count("[PASS]") == len(report.checks)
    assert "audit chain: verified" in text
    assert f"head {report.audit['head_seq']}:{report.audit['head_hash']} (stored at the run's end)" in text
    for line in report.exceptions:  # every exception is listed, by portfolio
        assert re.search(rf"^    {line.portfolio_id}  {line.decision}/{line.reason}", text, re.M), line.portfolio_id
    assert len(lines) < 30 + 7 * len(report.totals) + len(report.checks) + report.exceptions_count


# -- stability and aggregation ----------------------------------------------------------------------------


def test_report_rendered_later_gives_the_same_figures(world: World) -> None:
    """After the held payout is approved and paid by a later run, the first run's report is unchanged."""
    after = build_report(world.app.journal_engine, run_id=world.first.run_id)
    assert _stable(json.loads(render.render_json(after))) == _stable(json.loads(world.before["json"]))
    assert render.render_csv(after) == world.before["csv"]
    approved = [x for x in after.lines if x.payout_id == str(world.approved_payout)]
    assert [(x.payout_state, x.outcome, x.paid) for x in approved] == [("HELD", "held", None)]
    # while the journal has moved on: the payout is paid now, by the later run
    (row,) = _journal(world, "SELECT state FROM batch.payouts WHERE id = :p", p=world.approved_payout)
    assert row.state == "COMPLETED"


def test_date_report_aggregates_every_run_of_the_date(world: World) -> None:
    """The report of a business date covers all of its runs and counts each portfolio once, by its latest decision."""
    assert world.first.run_id and world.rerun.run_id
    by_date = build_report(world.app.journal_engine, business_date=D1)
    assert by_date.kind == "date"
    assert [r["id"] for r in by_date.runs] == [world.first.run_id, world.rerun.run_id]
    first = _report(world)
    portfolios = _journal(
        world,
        "SELECT DISTINCT portfolio_id FROM batch.decisions WHERE run_id = ANY(:r)",
        r=[world.first.run_id, world.rerun.run_id],
    )
    assert by_date.candidates == len(portfolios) == first.candidates  # the re-run decided a subset again
    lines = list(by_date.lines)
    assert sorted(x.portfolio_id for x in lines) == sorted(p.portfolio_id for p in portfolios)
    (above_cap,) = [x for x in lines if x.payout_id == str(world.approved_payout)]
    # once, not once per run; approved and paid by the next date's run with this date as its value date:
    # the date's money, so the date's report counts it as of that movement (schema 3.0)
    assert (above_cap.outcome, above_cap.requested) == ("paid", CAP + 10000)
    assert [e["reason"] for e in above_cap.earlier] == ["AWAITING_APPROVAL"]
    for ccy, t in by_date.totals.items():
        latest = [x for x in lines if (x.currency or "???") == ccy]
        assert t.requested == sum((x.requested or Decimal(0) for x in latest), Decimal(0))
        assert t.candidates == len(latest)
    # the approved payout of D1 moved after D1's last reconciliation: its checks say so instead of PASS
    failing = [c for c in by_date.checks if not c.ok]
    assert failing and all("not reconciled since" in c.detail for c in failing), failing
    assert by_date.reconcile is not None and by_date.reconcile["stale_since"] is not None
    doc = json.loads(render.render_json(by_date))
    assert doc["kind"] == "date" and len(doc["runs"]) == 2
    page = render.render_html(by_date)
    assert str(world.first.run_id) in page and str(world.rerun.run_id) in page
    # the re-run paid nothing new: D1's money is the first run's payouts and the approved one paid later
    assert by_date.totals["EUR"].amount["paid"] == first.totals["EUR"].amount["paid"] + (above_cap.paid or 0)


def test_later_run_report_shows_the_approval_note(world: World) -> None:
    """Once approved (before the report's cut-off), the held line's note says who approved it and why."""
    by_date = build_report(world.app.journal_engine, business_date=D2, as_of_now=True)
    first_now = build_report(world.app.journal_engine, run_id=world.first.run_id, as_of_now=True)
    (line,) = [x for x in first_now.lines if x.payout_id == str(world.approved_payout)]
    assert line.note is not None and "approved by alice" in line.note and "confirmed" in line.note
    assert line.payout_state == "COMPLETED"
    assert "approved by alice" in render.render_html(first_now)
    assert by_date.runs[0]["id"] == world.later.run_id


def test_run_writes_every_format_to_the_report_folder(world: World) -> None:
    """A run writes its report as json, txt, csv and html files, and they hold the same run."""
    paths = world.first.report_paths
    assert set(paths) == {"json", "text", "csv", "html"}
    assert {p.suffix for p in paths.values()} == {".json", ".txt", ".csv", ".html"}
    for path in paths.values():
        assert str(world.first.run_id) in path.read_text(encoding="utf-8-sig")


# -- CLI ------------------------------------------------------------------------------------------------


def test_cli_report_writes_csv_for_a_run(world: World, tmp_path: Path) -> None:
    """`batch report --run ID --format csv -o FILE` writes the same CSV as the renderer."""
    target = tmp_path / "run.csv"
    done = _cli(world, "report", "--run", str(world.first.run_id), "--format", "csv", "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert f"wrote {target}" in done.stdout
    assert target.read_bytes().decode("utf-8") == world.before["csv"]
    with target.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == _report(world).candidates


def test_cli_report_for_an_unknown_run_is_a_usage_error(world: World) -> None:
    """`batch report --run` with an id that has no run exits 2 and says so."""
    done = _cli(world, "report", "--run", str(uuid.uuid4()))
    assert done.returncode == 2
    assert "no run" in done.stderr


def test_cli_runs_lists_the_history(world: World) -> None:
    """`batch runs` lists every run, newest first, with status, exit code and paid totals."""
    done = _cli(world, "runs")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("run id") and lines[-1] == "3 runs"
    ids = [line.split()[0] for line in lines[1:-1]]
    assert ids == [str(world.later.run_id), str(world.rerun.run_id), str(world.first.run_id)]
    first_line = lines[3]
    assert "SUCCEEDED_WITH_EXCEPTIONS" in first_line and "EUR paid" in first_line
    only_d2 = _cli(world, "runs", "--date", str(D2)).stdout.splitlines()
    assert [line.split()[0] for line in only_d2[1:]] == [str(world.later.run_id), "1"]
    assert only_d2[-1] == "1 run"
    page = _cli(world, "runs", "--limit", "2", "--offset", "1").stdout.splitlines()
    assert [line.split()[0] for line in page[1:-1]] == [str(world.rerun.run_id), str(world.first.run_id)]
    assert page[-1] == "showing 2 of 3 runs from offset 1"
