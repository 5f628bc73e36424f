"""Audit actions belong to roles (migration 0014): the job's login appends only the job's actions, and an
operator's action (approve, retry, cancel, re-anchor) or the verifier's exists only as the function that
performs it, stamping its own action name. One test per role x action, each against real login roles.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.journal import Journal
from batch.adapters.postgres import Dsns
from tests.fixtures.roles import job_dsn, operator_dsn

OPERATOR_ACTIONS = (
    "payout.approved",
    "payout.approval_recorded",
    "payout.retry",
    "payout.cancelled_by_operator",
    "audit.reanchored",
)
VERIFIER_ACTIONS = ("audit.full_verification",)
JOB_ACTIONS = (
    "run.started",
    "step.ledger_post.ok",
    "decision.recorded",
    "payout.needs_attention",
    "payout.cancelled",
    "policy.four_eyes_threshold",
)
APPEND = "SELECT batch.audit_append(%s, NULL, NULL, NULL, '{}', 'someone')"
STAMPED = "SELECT batch.audit_append_stamped(%s, NULL, NULL, NULL, '{}', 'someone')"


def _libpq(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


def _as(dsns: Dsns, who: str) -> str:
    if who == "job":
        return _libpq(job_dsn(dsns.journal))
    if who == "operator":
        return _libpq(operator_dsn(dsns.journal, "olga"))
    return _libpq(dsns.journal)  # the test's superuser (the migrations' owner)


def _actions(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT action, appended_by FROM batch.audit_actions"))]


def test_the_registry_names_exactly_the_operator_and_verifier_actions_tested_here(journal_engine: Engine) -> None:
    """batch.audit_actions lists these operator and verifier actions and no other: each is tested below."""
    registered = _actions(journal_engine)
    assert sorted(a for a, kind in registered if kind == "operator") == sorted(OPERATOR_ACTIONS)
    assert sorted(a for a, kind in registered if kind == "verifier") == sorted(VERIFIER_ACTIONS)


@pytest.mark.parametrize("action", OPERATOR_ACTIONS + VERIFIER_ACTIONS)
def test_the_job_cannot_append_an_operator_or_verifier_action(dsns: Dsns, journal_engine: Engine, action: str) -> None:
    """The job's login calling audit_append with an operator's (or the verifier's) action is refused, no row kept."""
    with psycopg.connect(_as(dsns, "job")) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        conn.execute(APPEND, (action,))
    assert "only by the function that performs it" in str(refused.value)
    assert Journal(journal_engine).audit_head()[0] == 0


@pytest.mark.parametrize("action", ["test.anything", "payout.approve", "audit.checkpointed", "run"])
def test_the_job_cannot_append_an_action_nobody_registered(dsns: Dsns, journal_engine: Engine, action: str) -> None:
    """An action outside batch.audit_actions (a near-miss of a real one included) is refused to the job."""
    with psycopg.connect(_as(dsns, "job")) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege, match="not"):
        conn.execute(APPEND, (action,))
    assert Journal(journal_engine).audit_head()[0] == 0


@pytest.mark.parametrize("action", JOB_ACTIONS)
def test_the_job_appends_its_own_actions(dsns: Dsns, journal_engine: Engine, action: str) -> None:
    """The job's login appends each of its own actions through audit_append, stamped as itself."""
    with psycopg.connect(_as(dsns, "job")) as conn:
        conn.execute(APPEND, (action,))
    with journal_engine.connect() as conn:
        row = conn.execute(sa.text("SELECT actor, action FROM batch.audit_log")).one()
    assert tuple(row) == ("payout_job", action)
    assert Journal(journal_engine).verify_audit().ok


@pytest.mark.parametrize(
    ("who", "action"),
    [(who, action) for who in ("job", "operator") for action in OPERATOR_ACTIONS + VERIFIER_ACTIONS + JOB_ACTIONS[:1]]
    + [("superuser", action) for action in OPERATOR_ACTIONS + JOB_ACTIONS[:1]],
)
def test_nobody_calls_the_stamping_function_directly(dsns: Dsns, journal_engine: Engine, who: str, action: str) -> None:
    """audit_append_stamped is granted to no role; even a superuser gets no operator's or job's action through it."""
    with psycopg.connect(_as(dsns, who)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(STAMPED, (action,))
    assert Journal(journal_engine).audit_head()[0] == 0


@pytest.mark.parametrize("action", OPERATOR_ACTIONS + VERIFIER_ACTIONS + JOB_ACTIONS[:1])
def test_an_operator_cannot_append_through_audit_append(dsns: Dsns, action: str) -> None:
    """An operator's login has no EXECUTE on audit_append, whatever the action."""
    with (
        psycopg.connect(_as(dsns, "operator")) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="audit_append"),
    ):
        conn.execute(APPEND, (action,))


@pytest.mark.parametrize("action", OPERATOR_ACTIONS)
def test_a_superuser_inserting_an_operator_action_directly_is_refused(journal_engine: Engine, action: str) -> None:
    """The chain trigger refuses an operator's action from a member of batch_job (a superuser is one)."""
    with (
        pytest.raises(sa.exc.ProgrammingError, match="is not an operator"),
        journal_engine.begin() as conn,
    ):
        conn.execute(
            sa.text(
                "INSERT INTO batch.audit_log (seq, at, actor, action, details, prev_hash, hash)"
                " VALUES (0, now(), 'x', :action, '{}', '', '')"
            ),
            {"action": action},
        )


def test_a_superuser_inserting_an_unknown_action_directly_is_refused(journal_engine: Engine) -> None:
    """The chain trigger refuses an action no row of batch.audit_actions names, even from the owner."""
    with pytest.raises(sa.exc.ProgrammingError, match="is not known"), journal_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO batch.audit_log (seq, at, actor, action, details, prev_hash, hash)"
                " VALUES (0, now(), 'x', 'payout.approve', '{}', '', '')"
            )
        )


@pytest.mark.parametrize("function", ["payout_approve", "payout_retry", "payout_cancel"])
def test_the_job_calling_an_operator_function_is_refused_in_words(dsns: Dsns, function: str) -> None:
    """The job's login calling payout_approve / retry / cancel is told the job never acts as an operator."""
    sql = f"SELECT * FROM batch.{function}(gen_random_uuid(), 'looks fine', 'nightly')"
    with psycopg.connect(_as(dsns, "job")) as conn, pytest.raises(psycopg.DatabaseError, match="batch_job") as refused:
        conn.execute(sql)
    assert refused.value.sqlstate == "BJ002"


def test_the_job_cannot_reanchor(dsns: Dsns) -> None:
    """audit_reanchor is an operator's function only: the job's login has no EXECUTE on it."""
    with (
        psycopg.connect(_as(dsns, "job")) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="audit_reanchor"),
    ):
        conn.execute("SELECT * FROM batch.audit_reanchor(1, 'x', 'covering it up', 'nightly')")


@pytest.mark.parametrize("who", ["job", "operator"])
def test_the_verifier_action_is_stamped_by_its_function(dsns: Dsns, journal_engine: Engine, who: str) -> None:
    """The job's or an operator's login records a full verification; its audit row carries its own action."""
    with psycopg.connect(_as(dsns, who)) as conn:
        conn.execute(
            "SELECT * FROM batch.audit_record_verification(now(), true, 0, 0, %s, NULL, NULL, 1, 0, 'v')", ("0" * 64,)
        )
    with journal_engine.connect() as conn:
        row = conn.execute(sa.text("SELECT actor, action FROM batch.audit_log")).one()
        kept = conn.execute(sa.text("SELECT verified_by, ok, audit_seq FROM batch.audit_verifications")).one()
    expected = "payout_job" if who == "job" else "olga"
    assert tuple(row) == (expected, "audit.full_verification")
    assert tuple(kept) == (expected, True, 1)
