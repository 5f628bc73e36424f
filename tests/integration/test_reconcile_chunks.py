"""The run's reconciliation streams the journal's payouts and matches them a chunk at a time.

Real PostgreSQL and the sandbox over HTTP: one run pays seven portfolios; outside the job one divest is
set back and one payout transfer is posted in the ledger by hand. Matched three at a time (three chunks,
the ledger's transfers looked up three at a time too) the reconciliation finds the same breaks and the
same figures as in one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batch.adapters.postgres import Dsns
from batch.bootstrap import App
from batch.sandbox.seed import libpq_dsn
from batch.sandbox.server import SandboxProcess
from batch.service.reconcile import readback as reconciling
from batch.service.reconcile.readback import reconcile_payouts
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.payout_support import (
    ACTOR,
    OneRun,
    add_customer,
    app_for,
    faults_cleared,
    make_settings,
    set_portfolio_doc,
    the_payout,
)


@pytest.fixture
def dsns(module_dsns: Dsns) -> Dsns:
    return module_dsns


@pytest.fixture
def sandbox(module_dsns: Dsns) -> Iterator[RunningSandbox]:
    with (
        SandboxProcess(module_dsns.sandbox) as process,
        faults_cleared(RunningSandbox(process, module_dsns.sandbox)) as running,
    ):
        yield running


@pytest.fixture
def app(sandbox: RunningSandbox, module_dsns: Dsns, tmp_path: Path) -> Iterator[App]:
    with app_for(make_settings(sandbox.base_url, tmp_path / "reports"), module_dsns) as built:
        yield built


def test_reconciliation_in_chunks_finds_what_one_chunk_finds(
    app: App, sandbox_store: SandboxState, module_dsns: Dsns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven payouts and eight ledger transfers matched three at a time: the same breaks and figures as at once."""
    customers = [add_customer(sandbox_store, module_dsns, divest=Decimal(f"{10 + i}.00")) for i in range(7)]
    run = OneRun(app)
    run.plan([c["id"] for c in customers])
    run.execute()
    run.finish()
    changed = customers[4]["id"]

    def divest_back(doc: dict[str, Any]) -> None:
        doc["config"]["manager_settings"]["divest_amount"] = 14.0

    set_portfolio_doc(sandbox_store, changed, divest_back)
    first = the_payout(app, customers[0]["id"])
    with psycopg.connect(libpq_dsn(module_dsns.ledger)) as conn:  # a payout transfer posted outside the job
        conn.execute(
            """INSERT INTO ledger.transfers (idempotency_key, debit_account_id, credit_account_id, amount, currency,
                                             value_date, counterparty, description)
               SELECT 'manual-outside-the-job', d.id, c.id, 1.23, 'EUR', t.value_date, 'BE00 0000 0000 0000', 'by hand'
                 FROM ledger.accounts d, ledger.accounts c, ledger.transfers t
                WHERE d.reference = %s AND c.reference = 'CLEARING-EUR' AND t.idempotency_key = %s""",
            [first.ledger_account, str(first.id)],
        )

    def reconciled() -> tuple[int, list[tuple[str, str | None]], dict[str, Any]]:
        found = reconcile_payouts(app, actor=ACTOR, run_id=run.run_id, record=False)
        breaks = sorted((b.type.value, b.payout_id) for b in found.breaks)
        return found.checked, breaks, found.figures()["currencies"]

    whole = reconciled()
    monkeypatch.setattr(reconciling, "_PAYOUT_CHUNK", 3)
    chunked = reconciled()
    assert chunked == whole
    assert whole[0] == 7
    assert whole[1] == [("DIVEST_NOT_CLEARED", str(the_payout(app, changed).id)), ("UNKNOWN_LEDGER_PAYOUT", None)]
    assert Decimal(whole[2]["EUR"]["ledger"]) == sum(Decimal(f"{10 + i}.00") for i in range(7))
