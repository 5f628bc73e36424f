"""The run trusts nothing it has not checked against something outside the database (issue 22).

Real PostgreSQL and the real sandbox over HTTP. A tamperer is a superuser bypassing the append-only
triggers in its own transaction (``session_replication_role = replica``): it edits rows, recomputes
hashes and rewrites the journal's own checkpoints to match. The anchors (``[audit] anchor_file``) and
the recorded full verification are what stop the money.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.anchors import append_anchor, read_anchors
from batch.adapters.journal import Anchor, Journal
from batch.adapters.postgres import Dsns
from batch.domain.payout import PayoutState
from batch.service.audit_checks import full_verification
from batch.service.nightly.run import ExitCode, RunRequest, run_job
from batch.settings import AuditSettings
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

V2_HASH = (
    "batch.audit_hash_v2(prev_hash, seq, at, actor, application_name, display_name, action, run_id, payout_id,"
    " portfolio_id, details)"
)


def _behind_the_back(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            conn.execute(sa.text(statement))


def _rehash_from(seq: int) -> list[str]:
    """Recompute row ``seq``'s hash and re-chain every later row, then rewrite the checkpoints to match."""
    return [
        f"UPDATE batch.audit_log SET hash = {V2_HASH} WHERE seq = {seq}",
        f"""DO $$ DECLARE s bigint; BEGIN
              FOR s IN SELECT seq FROM batch.audit_log WHERE seq > {seq} ORDER BY seq LOOP
                UPDATE batch.audit_log SET prev_hash = (SELECT hash FROM batch.audit_log WHERE seq = s - 1)
                 WHERE seq = s;
                UPDATE batch.audit_log SET hash = {V2_HASH} WHERE seq = s;
              END LOOP; END $$""",
        "UPDATE batch.audit_checkpoints c SET hash = a.hash FROM batch.audit_log a WHERE a.seq = c.seq",
    ]


def _anchor(journal: Journal, path: Path) -> Anchor:
    """What `batch audit anchor --to` does: verify, then append the head to the file."""
    verified = journal.verify_audit(since_checkpoint=True, anchors=read_anchors(path) if path.exists() else ())
    assert verified.ok, verified.problem
    anchor = Anchor(verified.head_seq, verified.head_hash, "test")
    append_anchor(path, anchor)
    return anchor


def _nothing_moved(sandbox: RunningSandbox, dsns: Dsns, store: SandboxState, portfolio: dict[str, object]) -> None:
    assert ledger_payouts(dsns, str(portfolio["external_id"])) == []
    assert sum(route_count(sandbox, r) for r in (POST_TX_ROUTE, PATCH_ROUTE, POST_EVENT_ROUTE)) == 0
    assert store.transactions(str(portfolio["id"])) == []


def test_a_consistent_rehash_with_rewritten_checkpoints_stops_the_run_when_anchors_are_configured(
    sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns, tmp_path: Path
) -> None:
    """A re-hash that also rewrote the checkpoints passes on its own; with [audit] anchor_file the run moves nothing."""
    paid = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    waiting = add_customer(sandbox_store, dsns, divest=Decimal("200.00"))
    anchors = tmp_path / "anchors.jsonl"
    settings = make_settings(sandbox.base_url, tmp_path / "reports").model_copy(
        update={"audit": AuditSettings(anchor_file=anchors)}
    )
    with app_for(settings, dsns) as app:
        assert not anchors.exists()
        refused = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))
        assert refused.exit_code is ExitCode.USAGE and "batch audit anchor --to" in str(refused.error)
        anchors.touch()
        first = run_job(app, RunRequest(business_date=BUSINESS_DATE, portfolio_ids=(paid["id"],), trigger="test"))
        assert first.exit_code is ExitCode.OK, first.error
        anchored = _anchor(app.journal, anchors)
        OneRun(app).plan([waiting["id"]])
        assert app.journal.verify_audit(since_checkpoint=True, record_checkpoint=True).checkpointed
        edited = anchored.seq - 2
        _behind_the_back(
            app.journal_engine,
            f"UPDATE batch.audit_log SET details = '{{}}' WHERE seq = {edited}",
            *_rehash_from(edited),
        )
        assert app.journal.verify_audit(since_checkpoint=True).ok, "the re-hash passes without the anchors"
        assert app.journal.verify_audit().ok, "even the full verification, with the checkpoints rewritten"
        sandbox.admin.reset_stats()

        result = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))

        assert (result.exit_code, result.status) == (ExitCode.TECHNICAL_FAILURE, "FAILED")
        assert f"{anchors} line 1" in str(result.error), "the anchor that disagreed is named"
        assert f"rewritten from a row in 1..{anchored.seq}" in str(result.error)
        assert result.plan is None and result.execution == []
        assert the_payout(app, waiting["id"]).state is PayoutState.PLANNED
        _nothing_moved(sandbox, dsns, sandbox_store, waiting)


def test_an_old_row_edit_is_found_by_the_full_verification_and_the_next_run_moves_no_money(
    sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns, tmp_path: Path
) -> None:
    """An edit before the checkpoint passes the run's check; `verify --full` records it; the next run stops."""
    paid = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    waiting = add_customer(sandbox_store, dsns, divest=Decimal("200.00"))
    with app_for(make_settings(sandbox.base_url, tmp_path / "reports"), dsns) as app:
        first = run_job(app, RunRequest(business_date=BUSINESS_DATE, portfolio_ids=(paid["id"],), trigger="test"))
        assert first.exit_code is ExitCode.OK, first.error
        OneRun(app).plan([waiting["id"]])
        assert app.journal.verify_audit(since_checkpoint=True, record_checkpoint=True).checkpointed
        _behind_the_back(app.journal_engine, "UPDATE batch.audit_log SET details = '{}' WHERE seq = 2")
        assert app.journal.verify_audit(since_checkpoint=True).ok, "the incremental check starts after row 2"

        result, recorded = full_verification(app, processes=2, anchors=[], display_name="nightly-verify")
        assert (result.ok, result.first_broken_seq, recorded) == (False, 2, True)
        sandbox.admin.reset_stats()

        stopped = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))

        assert (stopped.exit_code, stopped.status) == (ExitCode.TECHNICAL_FAILURE, "FAILED")
        assert "found the chain broken at seq 2" in str(stopped.error)
        assert "batch audit reanchor" in str(stopped.error)
        assert stopped.plan is None and stopped.execution == []
        _nothing_moved(sandbox, dsns, sandbox_store, waiting)

        # after an investigation an operator re-anchors: the next run pays, and the next full check passes
        with journal_as(dsns.journal, "alice") as alice:
            alice.reanchor(broken_seq=2, problem="edited", reason="INC-12: row 2 edited by a DBA", display_name=None)
        after = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test"))
        assert after.exit_code is ExitCode.OK, after.error
        assert the_payout(app, waiting["id"]).state is PayoutState.COMPLETED
        assert [p["amount"] for p in ledger_payouts(dsns, waiting["external_id"])] == [Decimal("200.00")]
        again, _ = full_verification(app, processes=2, anchors=[], display_name="nightly-verify")
        assert again.ok and again.accepted


def _cli(dsns: Dsns, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "batch.toml"
    config.write_text(
        f'[database]\njournal_dsn = "{dsns.journal}"\nledger_dsn = "{dsns.ledger}"\nsandbox_dsn = "{dsns.sandbox}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "batch", "--config", str(config), "audit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _append(journal: Journal, count: int) -> None:
    run_id = uuid.uuid4()
    for n in range(count):
        journal.audit(actor="tester", action="run.test_event", run_id=run_id, details={"n": n})


def test_rehash_with_rewritten_checkpoints_blames_the_edited_row_in_verify_and_anchor(
    journal_engine: Engine, dsns: Dsns, tmp_path: Path
) -> None:
    """Anchors at 6 and 9, row 7 edited, 7..9 re-hashed, the checkpoint at 9 rewritten: both commands blame row 7."""
    journal = Journal(journal_engine)
    anchors = tmp_path / "anchors.jsonl"
    _append(journal, 6)
    _anchor(journal, anchors)
    _append(journal, 3)
    assert journal.verify_audit(since_checkpoint=True, record_checkpoint=True).checkpointed  # at seq 9
    _anchor(journal, anchors)
    _behind_the_back(
        journal_engine, "UPDATE batch.audit_log SET details = '{\"n\": 99}' WHERE seq = 7", *_rehash_from(7)
    )
    assert journal.verify_audit(since_checkpoint=True).ok, "the rewritten checkpoint agrees with the re-hash"

    result = journal.verify_audit(since_checkpoint=True, anchors=read_anchors(anchors))
    assert (result.ok, result.first_broken_seq, result.head_seq) == (False, 7, 6)
    assert f"{anchors} line 2" in str(result.problem)
    verify = _cli(dsns, tmp_path, "verify", "--anchors", str(anchors))
    anchor = _cli(dsns, tmp_path, "anchor", "--to", str(anchors))
    for done in (verify, anchor):
        assert done.returncode == 1, done.stdout + done.stderr
        assert "audit chain BROKEN at seq 7:" in done.stdout
        assert f"{anchors} line 2" in done.stdout and "last good row 6" in done.stdout
    assert len(read_anchors(anchors)) == 2, "nothing anchored on a broken chain"


def test_the_parallel_full_verification_agrees_with_the_sequential_one(journal_engine: Engine) -> None:
    """Two processes over 1,200 rows: the same rows and head as one walk; an edit is blamed on the same row."""
    journal = Journal(journal_engine)
    with journal_engine.begin() as conn:
        conn.execute(
            sa.text(
                "SELECT batch.audit_append('run.test_event', NULL, NULL, 'P' || n, '{}', 'bench')"
                " FROM generate_series(1, 1200) n"
            )
        )
    parallel = journal.verify_full(processes=2, min_rows=500)
    sequential = journal.verify_audit()
    assert (parallel.ok, parallel.rows, parallel.head_seq, parallel.head_hash) == (
        True,
        1200,
        sequential.head_seq,
        sequential.head_hash,
    )
    _behind_the_back(journal_engine, "UPDATE batch.audit_log SET details = '{\"x\": 1}' WHERE seq = 900")
    broken = journal.verify_full(processes=2, min_rows=500)
    assert (broken.ok, broken.first_broken_seq) == (False, 900)


def test_verify_full_from_the_cli_records_its_result(journal_engine: Engine, dsns: Dsns, tmp_path: Path) -> None:
    """`batch audit verify --full --processes 2` exits 0, says it recorded the result, and the journal has it."""
    _append(Journal(journal_engine), 5)
    done = _cli(dsns, tmp_path, "verify", "--full", "--processes", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit chain verified: 5 rows checked (the whole chain)" in done.stdout
    assert "full verification with 2 process(es) recorded in the journal" in done.stdout
    with journal_engine.connect() as conn:
        kept = conn.execute(
            sa.text("SELECT ok, rows_checked, head_seq, processes, first_broken_seq FROM batch.audit_verifications")
        ).one()
        audited = conn.execute(sa.text("SELECT action FROM batch.audit_log WHERE seq = 6")).scalar_one()
    assert tuple(kept) == (True, 5, 5, 2, None)
    assert audited == "audit.full_verification"
