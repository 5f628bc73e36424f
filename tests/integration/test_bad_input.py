"""Bad input from InvestSuite, the ledger or the operator: always a recorded decision or NEEDS_ATTENTION.

Real PostgreSQL and the real sandbox over HTTP. The planner-level cases share one sandbox and one
set of databases (each test adds its own portfolios and looks only at them and at its own run);
the cases that break things mid-run drive the plan and the execution separately.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import Engine

from batch.adapters.banking import CoreBanking
from batch.adapters.ledger import Ledger
from batch.adapters.ledger_deposits import DepositLedger
from batch.adapters.postgres import Dsns, make_engine
from batch.bootstrap import App
from batch.domain.payout import PayoutState
from batch.service.nightly.run import ExitCode, RunRequest, RunResult, run_job
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.payout_support import (
    ACTOR,
    BUSINESS_DATE,
    PATCH_ROUTE,
    POST_EVENT_ROUTE,
    POST_TX_ROUTE,
    OneRun,
    add_customer,
    app_for,
    delete_portfolio,
    divest_of,
    holdings_cash,
    journal_rows,
    ledger_payouts,
    make_settings,
    payouts_of,
    route_count,
    set_portfolio_doc,
    step_attempts,
    the_payout,
    withdraw_events,
)

DEAD_LEDGER_DSN = "postgresql://postgres:x@/nowhere?host=/nonexistent/batch-dead-socket&connect_timeout=1"


def _unreachable_ledger(dead: Engine, app: App) -> CoreBanking:
    """The core banking ledger as the composition root builds it, on an engine that cannot connect."""
    return CoreBanking(Ledger(dead, app.settings.ledger), DepositLedger(dead, app.settings.ledger))


# -- shared sandbox for the planner-level cases ----------------------------------------------------------


@pytest.fixture(scope="module")
def store(module_dsns: Dsns) -> SandboxState:
    return SandboxState(module_dsns.sandbox)


@pytest.fixture
def app(module_sandbox: RunningSandbox, module_dsns: Dsns, tmp_path: Path) -> Iterator[App]:
    module_sandbox.admin.set_faults()
    module_sandbox.admin.reset_stats()
    with app_for(make_settings(module_sandbox.base_url, tmp_path / "reports"), module_dsns) as built:
        yield built
    module_sandbox.admin.set_faults()


def _run(app: App) -> RunResult:
    return run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test", operator=ACTOR))


def _decision(app: App, run_id: uuid.UUID | None, portfolio_id: str) -> dict[str, Any]:
    rows = journal_rows(
        app, "SELECT * FROM batch.decisions WHERE run_id = :r AND portfolio_id = :p", r=run_id, p=portfolio_id
    )
    assert len(rows) == 1, rows
    return rows[0]


def _assert_nothing_paid(app: App, dsns: Dsns, store: SandboxState, doc: dict[str, Any]) -> None:
    assert payouts_of(app, doc["id"]) == []
    assert ledger_payouts(dsns, doc["external_id"]) == []
    assert store.transactions(doc["id"]) == []
    assert withdraw_events(store, doc["id"]) == []


def _held(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState, doc: dict[str, Any], reason: str
) -> dict[str, Any]:
    result = _run(app)
    assert result.exit_code is ExitCode.ATTENTION
    decision = _decision(app, result.run_id, doc["id"])
    assert (decision["decision"], decision["reason"]) == ("HOLD", reason)
    assert decision["pay_amount"] is None and decision["payout_id"] is None
    _assert_nothing_paid(app, module_dsns, store, doc)
    assert route_count(module_sandbox, PATCH_ROUTE) == 0
    assert result.report is not None
    (line,) = [line for line in result.report.lines if line.portfolio_id == doc["id"]]
    assert (line.decision, line.reason, line.outcome) == ("HOLD", reason, "held")
    return decision


def test_portfolio_without_base_currency_is_held_as_malformed(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """A listed portfolio missing base_currency is recorded HOLD MALFORMED_PAYLOAD, with the validation error."""
    doc = add_customer(store, module_dsns, divest=Decimal("100.00"))
    set_portfolio_doc(store, doc["id"], lambda d: d.pop("base_currency"))
    decision = _held(app, module_sandbox, module_dsns, store, doc, "MALFORMED_PAYLOAD")
    assert "base_currency" in decision["details"]["error"]


def test_divest_amount_as_a_string_is_paid_exactly(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """A divest amount sent as the string "250.00" is read as Decimal 250.00 and paid exactly once."""
    doc = add_customer(store, module_dsns, divest="250.00", cash=Decimal("1000.00"))
    result = _run(app)
    decision = _decision(app, result.run_id, doc["id"])
    assert (decision["decision"], decision["requested_raw"], decision["pay_amount"]) == (
        "PAY",
        "250.00",
        Decimal("250.00"),
    )
    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.COMPLETED and payout.amount == Decimal("250.00")
    assert [t["amount"] for t in ledger_payouts(module_dsns, doc["external_id"])] == [Decimal("250.00")]
    (transaction,) = store.transactions(doc["id"])
    assert Decimal(str(transaction["movements"][0]["quantity"])) == Decimal("-250.00")
    assert [e["data"]["amount"] for e in withdraw_events(store, doc["id"])] == ["250.00"]
    assert holdings_cash(store, doc["id"]) == Decimal("750.00")
    assert Decimal(str(divest_of(store, doc["id"]))) == 0


@pytest.mark.parametrize(
    "divest",
    [Decimal("-100.00"), "NaN", "a lot", Decimal("1E+50"), "-0.01"],
    ids=["negative", "nan-string", "non-numeric", "absurdly-large", "negative-string"],
)
def test_invalid_divest_amount_is_held(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState, divest: Any
) -> None:
    """A negative, NaN, non-numeric or absurdly large divest amount is recorded HOLD INVALID_AMOUNT; nothing paid."""
    doc = add_customer(store, module_dsns, divest=divest)
    decision = _held(app, module_sandbox, module_dsns, store, doc, "INVALID_AMOUNT")
    assert decision["requested_raw"] == str(divest)


def test_unknown_currency_is_held(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """A portfolio in currency XYZ (no known minor unit) is recorded HOLD UNKNOWN_CURRENCY; nothing paid."""
    doc = add_customer(store, module_dsns, currency="XYZ", cash=Decimal(1000), divest=Decimal(100))
    _held(app, module_sandbox, module_dsns, store, doc, "UNKNOWN_CURRENCY")


def test_non_numeric_holding_quantity_is_held(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """Holdings with a non-numeric quantity are recorded HOLD INVALID_HOLDINGS; nothing paid."""
    doc = add_customer(store, module_dsns, divest=Decimal("100.00"), positions={"IE00B4L5Y983": "twelve"})
    decision = _held(app, module_sandbox, module_dsns, store, doc, "INVALID_HOLDINGS")
    assert "IE00B4L5Y983" in decision["details"]["note"]


# -- things that break in the middle of a run ----------------------------------------------------------------


def test_portfolio_deleted_after_planning_is_cancelled_before_any_money_moves(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """A portfolio gone (404) between planning and the ledger post: CANCELLED, SKIP CHANGED_SINCE_PLANNING, no money."""
    doc = add_customer(store, module_dsns, divest=Decimal("100.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    delete_portfolio(store, doc["id"])
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.CANCELLED and payout.ledger_reference is None
    decision = _decision(app, run.run_id, doc["id"])
    assert (decision["final_decision"], decision["final_reason"]) == ("SKIP", "CHANGED_SINCE_PLANNING")
    assert "no longer exists" in decision["details"]["execution_note"]
    assert ledger_payouts(module_dsns, doc["external_id"]) == []
    assert route_count(module_sandbox, POST_TX_ROUTE) == 0


def test_portfolio_deleted_right_after_the_ledger_post_needs_attention_and_the_payout_stands(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A portfolio gone (404) after the ledger post stops at RECORD_TRANSACTION; the ledger payout stands."""
    doc = add_customer(store, module_dsns, divest=Decimal("100.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    executor = run.executor()
    post = executor.ports.ledger.post_payout

    def post_then_vanish(**kwargs: Any) -> Any:
        transfer = post(**kwargs)
        delete_portfolio(store, doc["id"])
        return transfer

    monkeypatch.setattr(executor.ports.ledger, "post_payout", post_then_vanish)
    executor.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.NEEDS_ATTENTION
    assert payout.failing_step == "RECORD_TRANSACTION"
    assert payout.stopped_in_state == "LEDGER_POSTED"
    assert payout.last_error == "portfolio disappeared after the ledger payout"
    assert [t["reference"] for t in ledger_payouts(module_dsns, doc["external_id"])] == [payout.ledger_reference]
    assert route_count(module_sandbox, POST_TX_ROUTE) == 1  # answered 404
    assert route_count(module_sandbox, PATCH_ROUTE) == 0


def test_portfolio_deleted_before_the_update_needs_attention_at_that_step(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """A portfolio gone (404) between the transaction and the PATCH stops at UPDATE_PORTFOLIO, money not reversed."""
    doc = add_customer(store, module_dsns, divest=Decimal("100.00"))

    def vanish(_seconds: float) -> None:
        module_sandbox.admin.set_faults()
        with psycopg.connect(store.dsn) as conn:
            conn.execute("DELETE FROM sandbox.transactions WHERE portfolio_id = %s", [doc["id"]])
        delete_portfolio(store, doc["id"])

    run = OneRun(app, sleep=vanish)
    run.plan([doc["id"]])
    module_sandbox.admin.set_faults(error_rate=1.0, methods=["PATCH"])  # refused before anything is done
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.NEEDS_ATTENTION
    assert payout.failing_step == "UPDATE_PORTFOLIO"
    assert payout.stopped_in_state == "TRANSACTION_RECORDED"
    assert payout.last_error == "portfolio disappeared after the ledger payout"
    assert len(ledger_payouts(module_dsns, doc["external_id"])) == 1
    assert route_count(module_sandbox, POST_EVENT_ROUTE) == 0


def test_token_expiring_mid_run_is_renewed_and_the_run_completes(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """Tokens expired between planning and execution: one 401, a fresh login, and the payout completes."""
    doc = add_customer(store, module_dsns, divest=Decimal("100.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    assert module_sandbox.admin.expire_tokens() >= 1
    run.execute()

    assert the_payout(app, doc["id"]).state is PayoutState.COMPLETED
    stats = module_sandbox.admin.stats()
    assert stats["by_status"].get("401", 0) >= 1
    assert stats["by_route"]["POST /auth/login/"] == 2
    assert len(store.transactions(doc["id"])) == 1  # the refused request was resent once, not duplicated
    assert len(ledger_payouts(module_dsns, doc["external_id"])) == 1


def test_ledger_unreachable_for_a_while_then_pays_exactly_once(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """The ledger is unreachable for the first attempts (dead socket): retried, then paid exactly once."""
    doc = add_customer(store, module_dsns, divest=Decimal("100.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    dead = make_engine(DEAD_LEDGER_DSN, pool_size=1)
    executor = run.executor(max_step_attempts=5)
    live = executor.ports.ledger
    executor.ports = replace(executor.ports, ledger=_unreachable_ledger(dead, app))
    pauses: list[float] = []

    def pause() -> None:
        pauses.append(0.0)
        if len(pauses) == 2:  # the ledger comes back
            executor.ports = replace(executor.ports, ledger=live)

    executor.between_tries = pause
    try:
        executor.execute()
    finally:
        dead.dispose()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.COMPLETED
    outcomes = [a["outcome"] for a in step_attempts(app, payout.id, "LEDGER_POST")]
    # the second try reads the ledger back by key first (its outcome was unknown) and fails there, unrecorded
    assert outcomes == ["TRANSIENT_ERROR", "OK"]
    assert len(ledger_payouts(module_dsns, doc["external_id"])) == 1
    assert len(store.transactions(doc["id"])) == 1


def _ledger_down_through_every_attempt(app: App, store: SandboxState, dsns: Dsns) -> tuple[dict[str, Any], Any]:
    """Plan one payout, then execute it with the ledger unreachable for every attempt the cap allows."""
    doc = add_customer(store, dsns, divest=Decimal("100.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    dead = make_engine(DEAD_LEDGER_DSN, pool_size=1)
    executor = run.executor(max_step_attempts=app.settings.run.max_step_attempts)
    executor.ports = replace(executor.ports, ledger=_unreachable_ledger(dead, app))
    try:
        executor.execute()
    finally:
        dead.dispose()
    return doc, run


def test_ledger_down_for_the_whole_execution_stalls_the_payout_for_the_next_run(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """Ledger down through every attempt: the payout stays PLANNED, stalled for this run, decision kept, no money."""
    doc, run = _ledger_down_through_every_attempt(app, store, module_dsns)

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.PLANNED  # never parked for a person, never cancelled
    assert payout.failing_step == "LEDGER_POST"
    assert payout.last_error is not None and "failed transiently" in payout.last_error
    outcomes = [a["outcome"] for a in step_attempts(app, payout.id, "LEDGER_POST")]
    # the first post failed; every later try failed reading the ledger back by key, before any post
    assert outcomes == ["TRANSIENT_ERROR"]
    decision = _decision(app, run.run_id, doc["id"])
    assert (decision["decision"], decision["final_decision"]) == ("PAY", None)  # the decision is kept
    assert ledger_payouts(module_dsns, doc["external_id"]) == []
    assert route_count(module_sandbox, POST_TX_ROUTE) == 0
    assert app.journal.count_stalled_in_run(run.run_id) == 1


def test_ledger_back_the_next_run_resumes_the_stalled_payout_and_pays_it_exactly_once(
    app: App, module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState
) -> None:
    """After the ledger outage the next run resumes the stalled payout by itself and pays it exactly once."""
    doc, _run_before = _ledger_down_through_every_attempt(app, store, module_dsns)
    result = _run(app)
    assert the_payout(app, doc["id"]).state is PayoutState.COMPLETED
    assert len(ledger_payouts(module_dsns, doc["external_id"])) == 1
    assert len(store.transactions(doc["id"])) == 1
    assert len(withdraw_events(store, doc["id"])) == 1
    assert result.stalled == 0


def test_ledger_down_for_the_whole_run_fails_the_run_and_the_next_run_pays_once(
    module_sandbox: RunningSandbox, module_dsns: Dsns, store: SandboxState, tmp_path: Path
) -> None:
    """A run whose ledger is unreachable fails (exit 1, run FAILED) without paying; the next run pays once."""
    doc = add_customer(store, module_dsns, divest=Decimal("100.00"))
    settings = make_settings(module_sandbox.base_url, tmp_path / "reports")
    with app_for(settings, module_dsns) as good:
        broken = App(
            settings=settings,
            dsns=module_dsns,
            journal_engine=make_engine(module_dsns.journal, pool_size=4),
            ledger_engine=make_engine(DEAD_LEDGER_DSN, pool_size=1),
        )
        try:
            failed = _run(broken)
        finally:
            broken.close()
        assert failed.exit_code is ExitCode.TECHNICAL_FAILURE
        assert failed.status == "FAILED"
        assert failed.error is not None
        assert "core banking ledger at /nonexistent/batch-dead-socket:5432/nowhere unavailable" in failed.error
        run_row = good.journal.get_run(failed.run_id) if failed.run_id else None
        assert run_row is not None and run_row["status"] == "FAILED" and run_row["error"] == failed.error
        assert payouts_of(good, doc["id"]) == []
        assert ledger_payouts(module_dsns, doc["external_id"]) == []

        paid = _run(good)
        assert _decision(good, paid.run_id, doc["id"])["decision"] == "PAY"
        assert the_payout(good, doc["id"]).state is PayoutState.COMPLETED
        assert len(ledger_payouts(module_dsns, doc["external_id"])) == 1


# -- a server that answers HTML, and broken configuration -------------------------------------------------------


class _HtmlHandler(BaseHTTPRequestHandler):
    def _html(self) -> None:
        body = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _html
    do_POST = _html
    do_PATCH = _html

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def html_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_html_page_instead_of_json_fails_the_run_clearly(html_server: str, dsns: Dsns, tmp_path: Path) -> None:
    """An HTML page where the listing's JSON should be: exit 1, run FAILED with a clear error, nothing paid."""
    settings = make_settings(html_server, tmp_path / "reports")
    settings = settings.model_copy(
        update={"investsuite": settings.investsuite.model_copy(update={"access_key_id": None})}
    )
    with app_for(settings, dsns) as app:
        result = _run(app)
        assert result.exit_code is ExitCode.TECHNICAL_FAILURE
        assert result.error is not None
        assert "GET /portfolios/" in result.error and "not JSON" in result.error and "text/html" in result.error
        run_row = app.journal.get_run(result.run_id) if result.run_id else None
        assert run_row is not None and (run_row["status"], run_row["exit_code"]) == ("FAILED", 1)
        assert run_row["error"] == result.error
        assert journal_rows(app, "SELECT id FROM batch.payouts") == []
        assert journal_rows(app, "SELECT id FROM batch.decisions") == []
    with psycopg.connect(dsns.ledger.replace("postgresql+psycopg://", "postgresql://")) as conn:
        transfers = conn.execute("SELECT count(*) FROM ledger.transfers").fetchone()
    assert transfers is not None and transfers[0] == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[run\nconcurrency = 4\n", "is not valid TOML"),
        ("[run]\nconcurency = 4\n", "run.concurency: Extra inputs are not permitted"),
        ("[policy.max_payout]\nEUR = -5\n", "cap for EUR must be positive"),
    ],
    ids=["invalid-toml", "unknown-key", "negative-cap"],
)
def test_broken_config_file_exits_2_naming_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    """`python -m batch --config bad.toml run` exits 2 with a message naming the problem (and the file)."""
    bad = tmp_path / "bad.toml"
    bad.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    completed = subprocess.run(
        [sys.executable, "-m", "batch", "--config", str(bad), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "configuration error" in completed.stderr
    assert expected in completed.stderr
    assert str(bad) in completed.stderr
    assert "Traceback" not in completed.stderr
