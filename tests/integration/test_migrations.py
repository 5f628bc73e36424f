"""Forward-only SQL migrations: ordered, recorded with checksums, tamper-refusing, safe to run at once."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.migrations import migrate, sql_root
from batch.adapters.postgres import make_engine, with_database
from batch.errors import ConfigError
from tests.fixtures.pg import _admin_exec

_names = itertools.count()


@pytest.fixture
def scratch_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a brand-new empty database, dropped after the test."""
    name = f"scratch_migrations_{os.getpid()}_{next(_names)}"
    _admin_exec(pg_admin_dsn, f'CREATE DATABASE "{name}"')
    yield with_database(pg_admin_dsn, name)
    _admin_exec(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def scratch_engine(scratch_dsn: str) -> Iterator[Engine]:
    engine = make_engine(scratch_dsn, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three migrations whose second and third only work after the first (order matters)."""
    folder = tmp_path / "ledger"
    folder.mkdir()
    (folder / "0001_create.sql").write_text("CREATE TABLE ledger.things (a integer);\n")
    (folder / "0002_add_column.sql").write_text("ALTER TABLE ledger.things ADD COLUMN b text;\n")
    (folder / "0010_fill.sql").write_text("INSERT INTO ledger.things (a, b) VALUES (1, '100%');\n")
    return folder


def _recorded(engine: Engine, schema: str = "ledger") -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT version, name, checksum FROM {schema}.schema_migrations ORDER BY 1"))
        return [(r.version, r.name, r.checksum.strip()) for r in rows]


def test_migrate_applies_files_in_order_and_records_checksums(scratch_engine: Engine, folder: Path) -> None:
    """Pending files are applied in number order and each is recorded with its SHA-256."""
    applied = migrate(scratch_engine, "ledger", folder)
    assert applied == ["0001_create.sql", "0002_add_column.sql", "0010_fill.sql"]
    expected = [
        (int(p.name[:4]), p.name, hashlib.sha256(p.read_text().encode()).hexdigest())
        for p in sorted(folder.glob("*.sql"))
    ]
    assert _recorded(scratch_engine) == expected
    with scratch_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT a, b FROM ledger.things")).one() == (1, "100%")


def test_migrate_twice_is_a_no_op(scratch_engine: Engine, folder: Path) -> None:
    """Running migrate again on an up-to-date database applies nothing."""
    migrate(scratch_engine, "ledger", folder)
    assert migrate(scratch_engine, "ledger", folder) == []
    with scratch_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger.things")).scalar_one() == 1


def test_new_migration_is_applied_after_the_old_ones(scratch_engine: Engine, folder: Path) -> None:
    """A file added later is the only one applied on the next run."""
    migrate(scratch_engine, "ledger", folder)
    (folder / "0011_more.sql").write_text("ALTER TABLE ledger.things ADD COLUMN c date;\n")
    assert migrate(scratch_engine, "ledger", folder) == ["0011_more.sql"]


def test_edited_applied_migration_is_refused(scratch_engine: Engine, tmp_path: Path) -> None:
    """Changing a file that was already applied makes migrate refuse with a ConfigError."""
    folder = tmp_path / "journal"
    shutil.copytree(sql_root() / "journal", folder)
    migrate(scratch_engine, "journal", folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- a harmless-looking edit\n")
    with pytest.raises(ConfigError, match="edited after it was applied"):
        migrate(scratch_engine, "journal", folder)


def test_missing_applied_migration_is_refused(scratch_engine: Engine, folder: Path) -> None:
    """A recorded migration whose file disappeared makes migrate refuse with a ConfigError."""
    migrate(scratch_engine, "ledger", folder)
    (folder / "0002_add_column.sql").unlink()
    with pytest.raises(ConfigError, match="missing"):
        migrate(scratch_engine, "ledger", folder)


@pytest.mark.parametrize("name", ["1_init.sql", "0003-bad-name.sql", "0003_Upper.sql", "abcd_x.sql"])
def test_badly_named_migration_is_refused(scratch_engine: Engine, folder: Path, name: str) -> None:
    """A .sql file not named NNNN_lower_case.sql is refused before anything is applied."""
    (folder / name).write_text("SELECT 1;\n")
    with pytest.raises(ConfigError, match="not understood"):
        migrate(scratch_engine, "ledger", folder)
    with scratch_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('ledger.things')")).scalar_one() is None


def test_duplicate_migration_number_is_refused(scratch_engine: Engine, folder: Path) -> None:
    """Two files with the same number are refused."""
    (folder / "0002_other.sql").write_text("SELECT 1;\n")
    with pytest.raises(ConfigError, match="duplicate"):
        migrate(scratch_engine, "ledger", folder)


def test_failing_migration_applies_nothing(scratch_engine: Engine, folder: Path) -> None:
    """A run whose last file fails leaves the database as it was: the run is one transaction."""
    (folder / "0020_broken.sql").write_text("ALTER TABLE ledger.no_such_table ADD COLUMN x int;\n")
    # migrate() runs the file on the raw DB-API cursor, so the driver's own error may surface.
    with pytest.raises((sa.exc.DBAPIError, psycopg.Error, ConfigError)):
        migrate(scratch_engine, "ledger", folder)
    with scratch_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('ledger.things')")).scalar_one() is None


@pytest.mark.parametrize("component", ["journal", "ledger"])
def test_concurrent_migrations_apply_once(scratch_dsn: str, component: str) -> None:
    """Two migrate() calls started at once on a fresh database both succeed and apply each file once."""
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        engine = make_engine(scratch_dsn, pool_size=1)
        try:
            barrier.wait()
            results.append(migrate(engine, component))
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    files = sorted(p.name for p in (sql_root() / component).glob("*.sql"))
    assert sorted(results, key=len) == [[], files]
    engine = make_engine(scratch_dsn, pool_size=1)
    try:
        schema = {"journal": "batch", "ledger": "ledger"}[component]
        assert [name for _, name, _ in _recorded(engine, schema)] == files
    finally:
        engine.dispose()


# What the code expects of the migrated schemas: column -> information_schema data_type.
EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    "batch.runs": {
        "id": "uuid",
        "business_date": "date",
        "trigger": "text",
        "operator": "text",
        "status": "text",
        "exit_code": "integer",
        "dry_run": "boolean",
        "parameters": "jsonb",
        "software_version": "text",
        "config_digest": "text",
        "host": "text",
        "pid": "integer",
        "started_at": "timestamp with time zone",
        "finished_at": "timestamp with time zone",
        "summary": "jsonb",
        "error": "text",
    },
    "batch.decisions": {
        "id": "bigint",
        "run_id": "uuid",
        "business_date": "date",
        "portfolio_id": "text",
        "decision": "text",
        "reason": "text",
        "final_decision": "text",
        "final_reason": "text",
        "currency": "text",
        "requested_raw": "text",
        "requested_amount": "numeric",
        "full_withdrawal": "boolean",
        "ledger_account": "text",
        "ledger_available": "numeric",
        "investsuite_cash": "numeric",
        "pay_amount": "numeric",
        "reconciliation_break": "boolean",
        "payout_id": "uuid",
        "dry_run": "boolean",
        "details": "jsonb",
        "created_at": "timestamp with time zone",
    },
    "batch.payouts": {
        "id": "uuid",
        "portfolio_id": "text",
        "business_date": "date",
        "run_id": "uuid",
        "decision_id": "bigint",
        "state": "text",
        "stopped_in_state": "text",
        "currency": "character",
        "amount": "numeric",
        "full_withdrawal": "boolean",
        "ledger_account": "text",
        "counter_account": "text",
        "cash_snapshot": "numeric",
        "divest_snapshot": "text",
        "hold_reason": "text",
        "approved_by": "text",
        "approved_at": "timestamp with time zone",
        "approval_reason": "text",
        "ledger_reference": "text",
        "transaction_id": "text",
        "divest_target": "text",
        "holdings_base_cash": "numeric",
        "holdings_target_cash": "numeric",
        "event_status": "integer",
        "failing_step": "text",
        "last_error": "text",
        "attempts": "integer",
        "lease_owner": "text",
        "lease_expires_at": "timestamp with time zone",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
        "ledger_posted_at": "timestamp with time zone",
        "transaction_recorded_at": "timestamp with time zone",
        "divest_cleared_at": "timestamp with time zone",
        "holdings_updated_at": "timestamp with time zone",
        "event_sent_at": "timestamp with time zone",
        "completed_at": "timestamp with time zone",
    },
    "batch.step_attempts": {
        "id": "bigint",
        "payout_id": "uuid",
        "run_id": "uuid",
        "step": "text",
        "intent_at": "timestamp with time zone",
        "intent": "jsonb",
        "outcome": "text",
        "outcome_at": "timestamp with time zone",
        "detail": "jsonb",
    },
    "batch.audit_log": {
        "seq": "bigint",
        "at": "timestamp with time zone",
        "actor": "text",
        "action": "text",
        "run_id": "uuid",
        "payout_id": "uuid",
        "portfolio_id": "text",
        "details": "text",
        "prev_hash": "character",
        "hash": "character",
        "hash_version": "smallint",
        "application_name": "text",
        "display_name": "text",
    },
    "batch.audit_checkpoints": {
        "seq": "bigint",
        "hash": "character",
        "from_seq": "bigint",
        "rows_checked": "bigint",
        "full_chain": "boolean",
        "verified_at": "timestamp with time zone",
        "verified_by": "text",
        "application_name": "text",
        "display_name": "text",
    },
    "batch.payout_approvals": {
        "payout_id": "uuid",
        "approver": "text",
        "display_name": "text",
        "application_name": "text",
        "reason": "text",
        "required": "integer",
        "approved_at": "timestamp with time zone",
    },
    "batch.approval_policy": {
        "four_eyes_threshold": "jsonb",
        "recorded_at": "timestamp with time zone",
        "recorded_by": "text",
        "application_name": "text",
    },
    "ledger.accounts": {
        "id": "bigint",
        "reference": "text",
        "currency": "character",
        "owner": "text",
        "kind": "text",
        "balance": "numeric",
        "created_at": "timestamp with time zone",
    },
    "ledger.transfers": {
        "id": "bigint",
        "reference": "text",
        "idempotency_key": "text",
        "debit_account_id": "bigint",
        "credit_account_id": "bigint",
        "amount": "numeric",
        "currency": "character",
        "value_date": "date",
        "counterparty": "text",
        "description": "text",
        "created_at": "timestamp with time zone",
        "beneficiary_reference": "text",
    },
    "ledger.holds": {
        "id": "bigint",
        "account_id": "bigint",
        "amount": "numeric",
        "reason": "text",
        "created_at": "timestamp with time zone",
        "released_at": "timestamp with time zone",
    },
}


def _columns(engine: Engine, table: str) -> dict[str, str]:
    schema, name = table.split(".")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """SELECT column_name, data_type FROM information_schema.columns
                    WHERE table_schema = :s AND table_name = :t"""
            ),
            {"s": schema, "t": name},
        )
        return {r.column_name: r.data_type for r in rows}


@pytest.mark.parametrize("table", sorted(EXPECTED_COLUMNS))
def test_migrated_schema_has_the_columns_the_code_expects(
    journal_engine: Engine, ledger_engine: Engine, table: str
) -> None:
    """Each table the code uses exists after migration with every expected column and type."""
    engine = journal_engine if table.startswith("batch.") else ledger_engine
    actual = _columns(engine, table)
    assert actual, f"{table} does not exist"
    expected = EXPECTED_COLUMNS[table]
    assert {c: actual.get(c) for c in expected} == expected


def test_money_columns_keep_eight_decimals(journal_engine: Engine, ledger_engine: Engine) -> None:
    """Every amount column of a table is numeric(38, 8): money is never a float in the database."""
    query = sa.text(
        """SELECT c.table_schema || '.' || c.table_name || '.' || c.column_name AS col,
                  c.data_type, c.numeric_precision, c.numeric_scale
             FROM information_schema.columns c
             JOIN information_schema.tables t USING (table_schema, table_name)
            WHERE c.table_schema IN ('batch', 'ledger') AND t.table_type = 'BASE TABLE'
              AND c.data_type IN ('numeric', 'real', 'double precision')"""
    )
    for engine in (journal_engine, ledger_engine):
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        assert rows
        for row in rows:
            assert (row.data_type, row.numeric_precision, row.numeric_scale) == ("numeric", 38, 8), row.col
