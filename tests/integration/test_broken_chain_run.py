"""No money moves on a broken chain: a run whose audit verification fails stops before resuming or planning.

Real PostgreSQL and the real sandbox over HTTP. A first run pays one portfolio (and checkpoints the
chain); a second portfolio is planned but not executed (an open PLANNED payout a run would resume);
then an audit row after the checkpoint is edited behind the job's back. Once an operator re-anchors
(accepts the row after an investigation), the next run pays again.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from batch.adapters.postgres import Dsns
from batch.domain.payout import PayoutState
from batch.errors import OperatorRefusedError
from batch.service.nightly.run import ExitCode, RunRequest, run_job
from tests.fixtures.roles import journal_as
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.payout_support import (
    BUSINESS_DATE,
    PATCH_ROUTE,
    POST_EVENT_ROUTE,
    POST_TX_ROUTE,
    OneRun,
    add_customer,
    app_for,
    ledger_payouts,
    make_settings,
    route_count,
    the_payout,
)


def test_a_run_on_a_broken_chain_exits_1_and_moves_nothing(
    sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns, tmp_path: Path
) -> None:
    """Exit 1, FAILED naming the row, an audit.chain_broken alert, nothing moved; re-anchored, the next run pays."""
    paid = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    waiting = add_customer(sandbox_store, dsns, divest=Decimal("200.00"))
    with app_for(make_settings(sandbox.base_url, tmp_path / "reports"), dsns) as app:
        first = run_job(app, RunRequest(business_date=BUSINESS_DATE, portfolio_ids=(paid["id"],), trigger="test"))
        assert first.exit_code is ExitCode.OK
        run = OneRun(app)
        run.plan([waiting["id"]])  # planned, not executed: the next run would resume it first
        assert the_payout(app, waiting["id"]).state is PayoutState.PLANNED
        with app.journal_engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
            tampered = conn.execute(
                sa.text(
                    "UPDATE batch.audit_log SET details = replace(details, 'PAY', 'SKIP')"
                    " WHERE seq = (SELECT max(seq) FROM batch.audit_log WHERE action = 'decision.recorded')"
                    " RETURNING seq"
                )
            ).scalar_one()
        sandbox.admin.reset_stats()

        with capture_logs() as logs:
            result = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))

        assert (result.exit_code, result.status) == (ExitCode.TECHNICAL_FAILURE, "FAILED")
        assert result.error is not None and f"audit chain broken at seq {tampered}:" in result.error
        (alert,) = [e for e in logs if e["event"] == "audit.chain_broken"]
        assert (alert["log_level"], alert["first_broken_seq"]) == ("error", tampered)
        assert result.plan is None and result.execution == []
        assert the_payout(app, waiting["id"]).state is PayoutState.PLANNED
        assert ledger_payouts(dsns, waiting["external_id"]) == []
        writes = (route_count(sandbox, route) for route in (POST_TX_ROUTE, PATCH_ROUTE, POST_EVENT_ROUTE))
        assert sum(writes) == 0
        assert sandbox_store.transactions(waiting["id"]) == []
        with app.journal_engine.connect() as conn:
            recorded = conn.execute(
                sa.text("SELECT status, exit_code, error FROM batch.runs WHERE id = :id"), {"id": result.run_id}
            ).one()
            decided = conn.execute(
                sa.text("SELECT count(*) FROM batch.decisions WHERE run_id = :id"), {"id": result.run_id}
            ).scalar_one()
        assert (recorded.status, recorded.exit_code, decided) == ("FAILED", 1, 0)
        assert result.report is not None and result.report.audit["verified"] is False

        # once investigated, an operator re-anchors (the job's login, here a superuser, may not); money moves again
        with pytest.raises(OperatorRefusedError, match="batch_job"):
            app.journal.reanchor(broken_seq=tampered, problem="edited", reason="INC-9", display_name=None)
        with journal_as(dsns.journal, "alice") as alice:
            alice.reanchor(
                broken_seq=tampered, problem="edited", reason="INC-9: decision row edited", display_name=None
            )
        after = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))
        assert after.exit_code is ExitCode.OK, after.error
        assert the_payout(app, waiting["id"]).state is PayoutState.COMPLETED
        assert [p["amount"] for p in ledger_payouts(dsns, waiting["external_id"])] == [Decimal("200.00")]
