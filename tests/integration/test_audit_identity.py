"""Who wrote an audit row is what the database says: the login role and the application name are stamped
by the chain trigger, rows are appended only through batch.audit_append, and the hash covers them
(hash version 2) while rows written before migration 0005 still verify as version 1.

Real PostgreSQL with real login roles: ``payout_job`` (a member of batch_job) and operators (members of
batch_operator), each connecting under its own name.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.journal import Journal
from batch.adapters.migrations import migrate, sql_root
from batch.adapters.postgres import Dsns, make_engine, with_database
from batch.domain.audit import hash_v1
from tests.fixtures.pg import _admin_exec
from tests.fixtures.roles import JOB_LOGIN, job_dsn, operator_dsn

_names = itertools.count()


def _libpq(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


def _rows(engine: Engine, sql: str) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql)).all())


def test_no_role_but_the_owner_holds_insert_on_the_audit_log(journal_engine: Engine) -> None:
    """INSERT on batch.audit_log is revoked from PUBLIC, batch_job and batch_operator: only the owner keeps it."""
    (row,) = _rows(
        journal_engine,
        """SELECT array_agg(DISTINCT acl.grantee::regrole::text) FILTER (WHERE acl.grantee <> c.relowner),
                  has_table_privilege('batch_job', 'batch.audit_log', 'INSERT'),
                  has_table_privilege('batch_operator', 'batch.audit_log', 'INSERT')
             FROM pg_class c, aclexplode(c.relacl) acl
            WHERE c.oid = 'batch.audit_log'::regclass AND acl.privilege_type = 'INSERT'""",
    )
    assert tuple(row) == (None, False, False)


@pytest.mark.parametrize("who", ["job", "operator"])
def test_job_and_operator_logins_cannot_insert_audit_rows_directly(journal: Journal, dsns: Dsns, who: str) -> None:
    """As payout_job or an operator, a direct INSERT into the audit log fails on privileges."""
    dsn = job_dsn(dsns.journal) if who == "job" else operator_dsn(dsns.journal, "dora")
    with psycopg.connect(_libpq(dsn)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO batch.audit_log (seq, at, actor, action, details, prev_hash, hash)"
            " VALUES (0, now(), 'forged', 'run.test_forged', '{}', '', '')"
        )
    assert journal.verify_audit().ok


def test_operators_cannot_append_through_the_function_either(dsns: Dsns) -> None:
    """batch.audit_append is granted to batch_job only: an operator acts through the payout functions."""
    with (
        psycopg.connect(_libpq(operator_dsn(dsns.journal, "dora"))) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="audit_append"),
    ):
        conn.execute("SELECT batch.audit_append('run.test_forged', NULL, NULL, NULL, '{}', 'dora')")


@pytest.fixture
def journal(journal_engine: Engine) -> Journal:
    return Journal(journal_engine)


def test_stamped_actor_is_the_login_role_whatever_the_client_sends(dsns: Dsns, journal: Journal) -> None:
    """The job's login appends with display name 'root': actor and application name are the connection's own."""
    engine = make_engine(job_dsn(dsns.journal), pool_size=1, application_name="nightly-payouts")
    try:
        Journal(engine).audit(actor="root", action="run.test_appended", details={"n": 1})
    finally:
        engine.dispose()
    (row,) = _rows(journal.engine, "SELECT actor, application_name, display_name, hash_version FROM batch.audit_log")
    assert tuple(row) == (JOB_LOGIN, "nightly-payouts", "root", 2)
    assert journal.verify_audit().ok


def test_set_role_and_a_forged_actor_do_not_change_the_stamp(journal: Journal) -> None:
    """A superuser inserting 'forged' as actor after SET ROLE batch_job is still stamped as its login role."""
    with journal.engine.begin() as conn:
        login = conn.execute(sa.text("SELECT session_user")).scalar_one()
        conn.execute(sa.text("SET LOCAL ROLE batch_job"))
        conn.execute(sa.text("SELECT batch.audit_append('run.test_as_job', NULL, NULL, NULL, '{}', 'job')"))
        conn.execute(sa.text("RESET ROLE"))
        conn.execute(
            sa.text(
                "INSERT INTO batch.audit_log (seq, at, actor, action, details, prev_hash, hash)"
                " VALUES (0, now(), 'forged', 'run.test_forged', '{}', '', '')"
            )
        )
    actors = [r.actor for r in _rows(journal.engine, "SELECT actor FROM batch.audit_log ORDER BY seq")]
    assert actors == [login, login]
    assert journal.verify_audit().ok


def test_the_stamped_identity_is_part_of_the_hash(journal: Journal, journal_engine: Engine) -> None:
    """Changing only the stamped application name of a row breaks the chain at that row."""
    journal.audit(actor="tester", action="run.test_event", details={})
    journal.audit(actor="tester", action="run.test_event", details={})
    with journal_engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text("UPDATE batch.audit_log SET application_name = 'other' WHERE seq = 1"))
    result = journal.verify_audit()
    assert (result.ok, result.first_broken_seq) == (False, 1)


@pytest.fixture
def unmigrated_dsn(pg_admin_dsn: str) -> Iterator[str]:
    name = f"scratch_identity_{os.getpid()}_{next(_names)}"
    _admin_exec(pg_admin_dsn, f'CREATE DATABASE "{name}"')
    yield with_database(pg_admin_dsn, name)
    _admin_exec(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_rows_written_before_the_migration_still_verify(unmigrated_dsn: str, tmp_path: Path) -> None:
    """Rows chained by the 0001 trigger (hash version 1) and rows after 0005 (version 2) verify as one chain."""
    before = tmp_path / "journal"
    before.mkdir()
    for path in sorted((sql_root() / "journal").glob("*.sql")):
        if int(path.name[:4]) < 5:
            shutil.copy(path, before / path.name)
    engine = make_engine(unmigrated_dsn, pool_size=2)
    try:
        migrate(engine, "journal", folder=before)
        with engine.begin() as conn:
            for n in range(3):
                conn.execute(
                    sa.text(
                        "INSERT INTO batch.audit_log (seq, at, actor, action, details, prev_hash, hash)"
                        " VALUES (0, now(), 'legacy', 'test.before', :d, '', '')"
                    ),
                    {"d": f'{{"n":{n}}}'},
                )
        migrate(engine, "journal")
        journal = Journal(engine)
        journal.audit(actor="tester", action="run.test_after", details={})
        journal.audit(actor="tester", action="run.test_after", details={})
        rows = _rows(engine, "SELECT * FROM batch.audit_log ORDER BY seq")
        assert [(r.hash_version, r.actor) for r in rows][:3] == [(1, "legacy")] * 3
        assert rows[3].hash_version == 2 and rows[3].prev_hash == rows[2].hash
        first = rows[0]
        at = first.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert hash_v1(first.prev_hash, 1, at, "legacy", "test.before", None, None, None, '{"n":0}') == first.hash
        result = journal.verify_audit()
        assert (result.ok, result.rows) == (True, 5)
        # a version 2 row rewritten as version 1 (hash recomputed with the old formula) is refused
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
            conn.execute(
                sa.text(
                    "UPDATE batch.audit_log SET hash_version = 1, hash = batch.audit_hash(prev_hash, seq, at, actor,"
                    " action, run_id, payout_id, portfolio_id, details) WHERE seq = 5"
                )
            )
        downgraded = journal.verify_audit()
        assert (downgraded.ok, downgraded.first_broken_seq) == (False, 5)
        assert "hash version 1 after version 2 rows" in str(downgraded.problem)
    finally:
        engine.dispose()


def _whoami(dsn: str, dsns: Dsns, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / f"whoami-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f'[database]\njournal_dsn = "{dsn}"\nledger_dsn = "{dsns.ledger}"\nsandbox_dsn = "{dsns.sandbox}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "batch", "--config", str(config), "whoami"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_whoami_shows_the_login_role_and_whether_it_may_act(dsns: Dsns, tmp_path: Path) -> None:
    """`batch whoami` as an operator says it may act; as the job's login it says why not."""
    operator = _whoami(operator_dsn(dsns.journal, "dora"), dsns, tmp_path)
    assert operator.returncode == 0, operator.stderr
    assert "login role:       dora" in operator.stdout
    assert "member of:        batch_operator" in operator.stdout
    assert "may approve, retry and cancel payouts: yes" in operator.stdout
    job = _whoami(job_dsn(dsns.journal), dsns, tmp_path)
    assert job.returncode == 0, job.stderr
    assert f"login role:       {JOB_LOGIN}" in job.stdout
    assert "no: a member of batch_job" in job.stdout
