"""The audit log's hash chain against tampering behind the job's back.

A superuser can bypass the append-only triggers (``session_replication_role = replica`` skips
ordinary triggers); the chain must still expose an edited, deleted or reordered row, both through
``Journal.verify_audit`` and ``batch audit verify`` (exit code 1, naming the first broken seq).
The job's own role, ``batch_job``, may append and read but never rewrite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.journal import AuditVerification, Journal
from batch.adapters.postgres import Dsns

ROWS = 6


@pytest.fixture
def journal(journal_engine: Engine) -> Journal:
    """A journal whose audit log holds ROWS chained rows."""
    journal = Journal(journal_engine)
    run_id = uuid.uuid4()
    for n in range(1, ROWS + 1):
        journal.audit(actor="tester", action="test.event", run_id=run_id, portfolio_id=f"P{n}", details={"n": n})
    return journal


@pytest.fixture
def config(dsns: Dsns, tmp_path: Path) -> Path:
    """A config file pointing the CLI at this test's databases."""
    path = tmp_path / "batch.toml"
    path.write_text(
        f'[database]\njournal_dsn = "{dsns.journal}"\nledger_dsn = "{dsns.ledger}"\nsandbox_dsn = "{dsns.sandbox}"\n',
        encoding="utf-8",
    )
    return path


def _behind_the_back(engine: Engine, *statements: str) -> None:
    """Run statements as the superuser with the append-only triggers bypassed."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            conn.execute(sa.text(statement))


def _cli_verify(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "batch", "--config", str(config), "audit", "verify"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _assert_broken_at(
    journal: Journal, config: Path, seq: int, problem: str, *, last_good: int | None = None
) -> AuditVerification:
    result = journal.verify_audit()
    assert (result.ok, result.first_broken_seq) == (False, seq)
    assert result.problem is not None and problem in result.problem
    assert result.head_seq == (seq - 1 if last_good is None else last_good), "the last row that still verified"
    done = _cli_verify(config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"audit chain BROKEN at seq {seq}:" in done.stdout
    return result


def test_intact_chain_verifies_in_code_and_cli(journal: Journal, config: Path) -> None:
    """An untouched chain verifies: every row counted, the head is the last row, `batch audit verify` exits 0."""
    result = journal.verify_audit()
    seq, head = journal.audit_head()
    assert result == AuditVerification(True, ROWS, ROWS, head)
    assert seq == ROWS
    done = _cli_verify(config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"audit chain verified: {ROWS} rows, head {ROWS} {head}" in done.stdout


def test_verification_pages_through_long_chains(journal: Journal) -> None:
    """The chain verifies across page boundaries (batch size smaller than the chain)."""
    assert journal.verify_audit(batch_size=4).ok
    assert journal.verify_audit(batch_size=1).rows == ROWS


def test_edited_row_is_detected(journal: Journal, journal_engine: Engine, config: Path) -> None:
    """A row whose content was changed no longer matches its hash: broken at that row."""
    _behind_the_back(journal_engine, "UPDATE batch.audit_log SET actor = 'mallory' WHERE seq = 3")
    _assert_broken_at(journal, config, 3, "does not match its hash")


def test_edited_row_with_recomputed_hash_breaks_the_next_link(
    journal: Journal, journal_engine: Engine, config: Path
) -> None:
    """Recomputing the edited row's own hash does not help: the next row's prev_hash no longer matches."""
    _behind_the_back(
        journal_engine,
        "UPDATE batch.audit_log SET details = replace(details, '3', '300') WHERE seq = 3",
        "UPDATE batch.audit_log SET hash = batch.audit_hash(prev_hash, seq, at, actor, action, run_id, payout_id,"
        " portfolio_id, details) WHERE seq = 3",
    )
    _assert_broken_at(journal, config, 4, "prev_hash")


def test_deleted_row_is_detected(journal: Journal, journal_engine: Engine, config: Path) -> None:
    """A deleted row leaves a gap in seq: broken at the row after it."""
    _behind_the_back(journal_engine, "DELETE FROM batch.audit_log WHERE seq = 3")
    _assert_broken_at(journal, config, 4, "sequence gap: expected 3", last_good=2)


def test_reordered_rows_are_detected(journal: Journal, journal_engine: Engine, config: Path) -> None:
    """Two rows that swapped places (their seq exchanged) break the chain at the first of them."""
    _behind_the_back(
        journal_engine,
        "UPDATE batch.audit_log SET seq = -1 WHERE seq = 3",
        "UPDATE batch.audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE batch.audit_log SET seq = 4 WHERE seq = -1",
    )
    _assert_broken_at(journal, config, 3, "prev_hash")


def test_swapped_row_contents_are_detected(journal: Journal, journal_engine: Engine, config: Path) -> None:
    """Two rows that swapped their contents (seq kept) break the chain at the first of them."""
    columns = "at, actor, action, run_id, payout_id, portfolio_id, details, prev_hash, hash"
    _behind_the_back(
        journal_engine,
        f"CREATE TEMP TABLE swap AS SELECT seq, {columns} FROM batch.audit_log WHERE seq IN (3, 4)",
        # hash is UNIQUE: park row 3's hash first
        "UPDATE batch.audit_log SET hash = repeat('x', 64) WHERE seq = 3",
        *(
            f"UPDATE batch.audit_log a SET ({columns}) = (SELECT {columns} FROM swap s WHERE s.seq = {other})"
            f" WHERE a.seq = {seq}"
            for seq, other in ((4, 3), (3, 4))
        ),
    )
    _assert_broken_at(journal, config, 3, "prev_hash")


def test_deleting_the_newest_rows_needs_the_anchored_head(journal: Journal, journal_engine: Engine) -> None:
    """Cutting the tail leaves a valid shorter chain: only the head anchored outside the database shows it."""
    anchored = journal.audit_head()
    _behind_the_back(journal_engine, f"DELETE FROM batch.audit_log WHERE seq = {ROWS}")
    result = journal.verify_audit()
    assert result.ok
    assert (result.head_seq, result.head_hash) != anchored


def test_superuser_without_bypass_is_refused_by_the_trigger(journal: Journal, journal_engine: Engine) -> None:
    """Even the table owner cannot UPDATE, DELETE or TRUNCATE audit rows while the triggers are on."""
    for statement in (
        "UPDATE batch.audit_log SET actor = 'mallory' WHERE seq = 1",
        "DELETE FROM batch.audit_log WHERE seq = 1",
        "TRUNCATE batch.audit_log",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), journal_engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert journal.verify_audit().ok


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE batch.audit_log SET actor = 'mallory' WHERE seq = 1",
        "DELETE FROM batch.audit_log WHERE seq = 1",
        "TRUNCATE batch.audit_log",
    ],
)
def test_job_role_cannot_rewrite_the_audit_log(journal: Journal, dsns: Dsns, statement: str) -> None:
    """As batch_job, rewriting audit rows fails on privileges (before any trigger runs)."""
    with psycopg.connect(_libpq(dsns.journal)) as conn:
        conn.execute("SET ROLE batch_job")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table audit_log"):
            conn.execute(statement)
    assert journal.verify_audit().ok


def test_job_role_can_append_and_read_and_the_chain_still_verifies(journal: Journal, dsns: Dsns) -> None:
    """batch_job may INSERT (the trigger assigns seq and hash) and SELECT; the chain stays valid."""
    with psycopg.connect(_libpq(dsns.journal)) as conn:
        conn.execute("SET ROLE batch_job")
        conn.execute(
            "INSERT INTO batch.audit_log (seq, at, actor, action, details, prev_hash, hash)"
            " VALUES (0, now(), 'job', 'test.appended', '{}', '', '')"
        )
        row = conn.execute("SELECT max(seq), count(*) FROM batch.audit_log").fetchone()
        conn.commit()
    assert row == (ROWS + 1, ROWS + 1)
    result = journal.verify_audit()
    assert result.ok and result.head_seq == ROWS + 1


def _libpq(dsn: str) -> str:
    """The test DSN in the form psycopg accepts (no SQLAlchemy driver suffix)."""
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)
