"""Four-eyes approvals, enforced by the database, with the job and the operators each under their own login.

One module world: the job runs as ``payout_job`` (a member of batch_job) on the real sandbox with a
payout cap of 5,000 EUR (larger payouts are HELD) and a four-eyes threshold of 50,000 EUR. Operators
``alice``, ``bob`` and ``carol`` (members of batch_operator) act through the CLI with their own DSNs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from batch.adapters.journal import Journal
from batch.adapters.postgres import Dsns, make_engine
from batch.bootstrap import App, build_app
from batch.errors import OperatorRefusedError
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.server import SandboxProcess
from batch.service.nightly.run import RunRequest, run_job
from batch.settings import InvestSuiteSettings, PolicySettings, RunSettings, Settings
from tests.fixtures.pg import fresh_dsns
from tests.fixtures.roles import JOB_LOGIN, dsn_as, job_dsn, login_role, operator_dsn
from tests.fixtures.sandbox import SandboxState
from tests.integration.payout_support import add_customer, ledger_payouts

D1, D2, D3 = date(2026, 5, 4), date(2026, 5, 5), date(2026, 5, 6)


@dataclass
class World:
    dsns: Dsns
    job: App
    admin: App
    tmp: Path
    big: dict[str, Any]
    small: dict[str, Any]
    spare: dict[str, Any]

    def payout_of(self, portfolio: dict[str, Any]) -> Any:
        with self.admin.journal_engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT * FROM batch.payouts WHERE portfolio_id = :p ORDER BY created_at DESC LIMIT 1"),
                {"p": portfolio["id"]},
            ).one()

    def run(self, business_date: date) -> int:
        result = run_job(self.job, RunRequest(business_date=business_date, trigger="test", operator="nightly"))
        return int(result.exit_code)

    def cli(self, role: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``batch ARGS`` with the journal DSN of operator ``role``."""
        config = self.tmp / f"{role}.toml"
        config.write_text(
            f'[database]\njournal_dsn = "{operator_dsn(self.dsns.journal, role)}"\n'
            f'ledger_dsn = "{self.dsns.ledger}"\nsandbox_dsn = "{self.dsns.sandbox}"\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
        return subprocess.run(
            [sys.executable, "-m", "batch", "--config", str(config), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    def audit(self, payout_id: uuid.UUID) -> list[tuple[str, str, dict[str, Any]]]:
        with self.admin.journal_engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT actor, action, details FROM batch.audit_log WHERE payout_id = :p ORDER BY seq"),
                {"p": payout_id},
            ).all()
        return [(r.actor, r.action, json.loads(r.details)) for r in rows]


@pytest.fixture(scope="module")
def world(pg_admin_dsn: str, pg_templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The job (as payout_job) ran once: three payouts above the cap are HELD."""
    tmp = tmp_path_factory.mktemp("four-eyes")
    dsns = fresh_dsns(pg_admin_dsn, pg_templates)
    store = SandboxState(dsns.sandbox)
    big = add_customer(store, dsns, divest=Decimal("60000.00"), cash=Decimal("100000.00"))
    small = add_customer(store, dsns, divest=Decimal("6000.00"), cash=Decimal("10000.00"))
    spare = add_customer(store, dsns, divest=Decimal("70000.00"), cash=Decimal("100000.00"))
    with SandboxProcess(dsns.sandbox) as sandbox:
        settings = Settings(
            investsuite=InvestSuiteSettings(
                base_url=sandbox.base_url,
                access_key_id=DEFAULT_ACCESS_KEY_ID,
                secret_access_key=SecretStr(DEFAULT_SECRET_ACCESS_KEY),
            ),
            policy=PolicySettings(max_payout={"EUR": Decimal("5000")}, four_eyes_threshold={"EUR": Decimal("50000")}),
            run=RunSettings(report_dir=tmp / "reports", concurrency=2),
        )
        as_job = Dsns(journal=job_dsn(dsns.journal), ledger=dsns.ledger, sandbox=dsns.sandbox)
        job = build_app(settings, dsns=as_job, migrate_schemas=False)
        admin = build_app(settings, dsns=dsns, migrate_schemas=False)
        try:
            built = World(dsns, job, admin, tmp, big, small, spare)
            assert built.run(D1) == 3
            assert {built.payout_of(p).state for p in (big, small, spare)} == {"HELD"}
            yield built
        finally:
            job.close()
            admin.close()


def test_the_job_runs_under_its_own_login_and_every_audit_row_carries_it(world: World) -> None:
    """Every audit row of the job's run (decisions, steps, run rows) is stamped payout_job, 'nightly' beside it."""
    with world.admin.journal_engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT DISTINCT actor, display_name, hash_version FROM batch.audit_log WHERE run_id IS NOT NULL")
        ).all()
    assert {tuple(r) for r in rows} == {(JOB_LOGIN, "nightly", 2)}
    assert world.admin.journal.verify_audit().ok


def test_the_threshold_the_job_ran_with_is_recorded_and_audited(world: World) -> None:
    """The run recorded {EUR: 50000} as the four-eyes policy, audited as a change made by the job's login."""
    with world.admin.journal_engine.connect() as conn:
        policy = conn.execute(sa.text("SELECT four_eyes_threshold, recorded_by FROM batch.approval_policy")).one()
        audited = conn.execute(
            sa.text("SELECT actor, details FROM batch.audit_log WHERE action = 'policy.four_eyes_threshold'")
        ).all()
    assert (policy.four_eyes_threshold, policy.recorded_by) == ({"EUR": "50000"}, JOB_LOGIN)
    assert [(r.actor, json.loads(r.details)) for r in audited] == [
        (JOB_LOGIN, {"from": None, "to": {"EUR": "50000"}, "version": 1, "held_payouts_raised": 0})
    ]


def test_a_payout_above_the_threshold_is_paid_only_after_two_different_operators_approve(world: World) -> None:
    """alice approves (still HELD, not paid by a run), alice again is refused, bob's approval releases it to be paid."""
    payout_id = world.payout_of(world.big).id
    first = world.cli("alice", "payout", "approve", str(payout_id), "--reason", "customer called", "--operator", "Al")
    assert first.returncode == 0, first.stderr
    expected = f"approval 1 of 2 recorded for payout {payout_id}, 60,000.00 EUR; a second operator must approve"
    assert expected in first.stdout
    assert "recorded as database role alice (application 'batch-journal'; display name 'Al')" in first.stdout
    assert world.payout_of(world.big).state == "HELD"

    again = world.cli("alice", "payout", "approve", str(payout_id), "--reason", "really")
    assert again.returncode == 2
    assert "role alice already approved payout" in again.stderr and "different operator" in again.stderr

    world.run(D2)
    assert world.payout_of(world.big).state == "HELD", "one approval of two releases nothing"
    assert ledger_payouts(world.dsns, world.big["external_id"]) == []

    second = world.cli("bob", "payout", "approve", str(payout_id), "--reason", "checked the KYC file")
    assert second.returncode == 0, second.stderr
    assert f"approval 2 of 2 recorded for payout {payout_id}, 60,000.00 EUR; released: the next run pays it" in (
        second.stdout
    )
    released = world.payout_of(world.big)
    assert (released.state, released.approved_by) == ("PLANNED", "alice, bob")
    assert released.approval_reason == "alice: customer called; bob: checked the KYC file"
    assert [(actor, action, d["approval"]) for actor, action, d in world.audit(payout_id) if "approv" in action] == [
        ("alice", "payout.approval_recorded", 1),
        ("bob", "payout.approved", 2),
    ]

    world.run(D3)
    assert world.payout_of(world.big).state == "COMPLETED"
    assert [p["amount"] for p in ledger_payouts(world.dsns, world.big["external_id"])] == [Decimal("60000.00")]


def test_a_payout_below_the_threshold_is_released_by_one_approval(world: World) -> None:
    """At 6,000 EUR (above the cap, below the threshold) one operator's approval releases the payout."""
    payout_id = world.payout_of(world.small).id
    done = world.cli("carol", "payout", "approve", str(payout_id), "--reason", "known customer")
    assert done.returncode == 0, done.stderr
    assert f"approval 1 of 1 recorded for payout {payout_id}, 6,000.00 EUR; released: the next run pays it" in (
        done.stdout
    )
    assert world.payout_of(world.small).state == "PLANNED"


@pytest.mark.parametrize("action", ["approve", "retry", "cancel"])
def test_blank_reasons_are_refused(world: World, action: str) -> None:
    """approve, retry and cancel refuse an empty or whitespace reason, in the CLI and in the database."""
    payout_id = world.payout_of(world.spare).id
    for reason in ("", "   \t"):
        done = world.cli("alice", "payout", action, str(payout_id), "--reason", reason)
        assert done.returncode == 2 and "a reason is required" in done.stderr
    with (
        psycopg.connect(operator_dsn(world.dsns.journal, "alice").replace("+psycopg", "")) as conn,
        pytest.raises(psycopg.DatabaseError, match="a reason is required"),
    ):
        conn.execute(f"SELECT batch.payout_{action}(%s, ' ', 'x')", [payout_id])
    assert world.payout_of(world.spare).state == "HELD"


@pytest.mark.parametrize(
    ("who", "refusal"),
    [
        ("job", "is a member of batch_job"),
        ("superuser", "a superuser is a member of every role"),
        ("outsider", "only members of batch_operator may approve"),
    ],
)
def test_the_jobs_role_a_superuser_and_non_operators_cannot_approve(world: World, who: str, refusal: str) -> None:
    """Approvals by the job's login, by a superuser and by a login outside batch_operator are refused in SQL."""
    payout_id = world.payout_of(world.spare).id
    if who == "job":
        journal = world.job.journal
    elif who == "superuser":
        journal = world.admin.journal
    else:
        engine = make_engine(dsn_as(world.dsns.journal, login_role(world.dsns.journal, "eve")), pool_size=1)
        journal = Journal(engine)
    with pytest.raises(OperatorRefusedError, match=refusal):
        journal.operator_action("approve", payout_id, reason="looks fine", display_name="x")
    if who == "outsider":
        journal.engine.dispose()
    assert world.payout_of(world.spare).state == "HELD"
    assert not [a for a in world.audit(payout_id) if "approv" in a[1]]


def test_the_job_cannot_release_a_held_payout_behind_the_functions(world: World) -> None:
    """As payout_job, moving a HELD payout on by UPDATE or inserting an approval is refused by the database."""
    payout_id = world.payout_of(world.spare).id
    with psycopg.connect(job_dsn(world.dsns.journal).replace("+psycopg", "")) as conn:
        with pytest.raises(psycopg.DatabaseError, match="0 of 2 approvals recorded"):
            conn.execute("UPDATE batch.payouts SET state = 'PLANNED' WHERE id = %s", [payout_id])
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO batch.payout_approvals (payout_id, approver, application_name, reason, required,"
                " approved_at) VALUES (%s, 'alice', 'x', 'ok', 1, now())",
                [payout_id],
            )
    assert world.payout_of(world.spare).state == "HELD"


@pytest.mark.parametrize(
    ("reason", "approver", "error"),
    [("  ", "zed", "payout_approvals_reason_check"), ("ok", "dup", "payout_approvals_payout_id_approver_key")],
)
def test_the_approvals_table_refuses_blank_reasons_and_a_second_row_per_role(
    world: World, reason: str, approver: str, error: str
) -> None:
    """Even written directly by the owner, an approval needs a reason and is unique per (payout, role)."""
    payout_id = world.payout_of(world.spare).id
    insert = sa.text(
        "INSERT INTO batch.payout_approvals (payout_id, approver, application_name, reason, required, approved_at)"
        " VALUES (:p, :a, 'test', :r, 2, now())"
    )
    with pytest.raises(sa.exc.IntegrityError, match=error), world.admin.journal_engine.begin() as conn:
        if approver == "dup":
            conn.execute(insert, {"p": payout_id, "a": approver, "r": reason})
        conn.execute(insert, {"p": payout_id, "a": approver, "r": reason})


def test_operator_actions_and_appends_are_definer_functions_not_granted_to_public(world: World) -> None:
    """payout_approve / retry / cancel (operators, and the job to be refused) and audit_append (the job only)."""
    with world.admin.journal_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT p.proname, has_function_privilege('batch_operator', p.oid, 'EXECUTE') AS op,"
                " has_function_privilege('batch_job', p.oid, 'EXECUTE') AS job, p.prosecdef"
                " FROM pg_proc p WHERE p.pronamespace = 'batch'::regnamespace"
                " AND p.proname IN ('payout_approve', 'payout_retry', 'payout_cancel', 'audit_append')"
            )
        ).all()
    assert {r.proname: (r.op, r.job, r.prosecdef) for r in rows} == {
        "payout_approve": (True, True, True),
        "payout_retry": (True, True, True),
        "payout_cancel": (True, True, True),
        "audit_append": (False, True, True),
    }


def test_four_eyes_is_frozen_with_the_hold_and_survives_a_config_change(world: World) -> None:
    """Held under 50,000 EUR: a later run recording no threshold leaves 2 approvals needed; one releases nothing."""
    payout_id = world.payout_of(world.spare).id
    held = world.payout_of(world.spare)
    assert (held.approvals_required, held.approval_policy_version) == (2, 1)
    relaxed = world.job.settings.model_copy(
        update={"policy": world.job.settings.policy.model_copy(update={"four_eyes_threshold": {}})}
    )
    as_job = Dsns(journal=job_dsn(world.dsns.journal), ledger=world.dsns.ledger, sandbox=world.dsns.sandbox)
    later = build_app(relaxed, dsns=as_job, migrate_schemas=False)
    try:
        run_job(later, RunRequest(business_date=date(2026, 5, 7), trigger="test", operator="nightly"))
    finally:
        later.close()
    with world.admin.journal_engine.connect() as conn:
        policy = conn.execute(sa.text("SELECT four_eyes_threshold, version FROM batch.approval_policy")).one()
    assert (policy.four_eyes_threshold, policy.version) == ({}, 2)
    assert world.payout_of(world.spare).approvals_required == 2

    done = world.cli("carol", "payout", "approve", str(payout_id), "--reason", "known customer")
    assert done.returncode == 0, done.stderr
    assert "approval 1 of 2 recorded" in done.stdout
    assert world.payout_of(world.spare).state == "HELD"
    with psycopg.connect(job_dsn(world.dsns.journal).replace("+psycopg", "")) as conn:
        with pytest.raises(psycopg.DatabaseError, match="may be raised, never lowered"):
            conn.execute("UPDATE batch.payouts SET approvals_required = 1 WHERE id = %s", [payout_id])
        conn.rollback()
        with pytest.raises(psycopg.DatabaseError, match="1 of 2 approvals recorded"):
            conn.execute("UPDATE batch.payouts SET state = 'PLANNED' WHERE id = %s", [payout_id])
