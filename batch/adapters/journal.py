"""The job's journal in PostgreSQL: runs, decisions, payouts, step attempts and the audit log.

Every payout state change is a guarded ``UPDATE ... WHERE state = ANY(:expected) RETURNING``; a
writer that lost a race gets InvalidTransitionError instead of silently overwriting. Every change
appends to the hash-chained audit log in the same database transaction, so the audit trail and
the journal can never disagree.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from batch.domain.payout import EXECUTABLE_STATES, OPEN_STATES, PayoutState, Step, check_transition
from batch.errors import InvalidTransitionError, RunLockedError, TransientError

RUN_LOCK_KEY = "batch.run"
# seq, at, prev_hash and hash are assigned by the database trigger (whatever is sent here is replaced)
_AUDIT_INSERT = sa.text(
    "INSERT INTO batch.audit_log (seq, at, actor, action, run_id, payout_id, portfolio_id,"
    " details, prev_hash, hash) VALUES (0, now(), :actor, :action, :run_id, :payout_id,"
    " :portfolio_id, :details, '', '')"
)
GENESIS_HASH = "0" * 64


def canonical_json(data: Mapping[str, Any]) -> str:
    """Stable JSON text (sorted keys, no spaces, Decimals as strings) used in the audit hash."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def audit_hash(
    prev_hash: str,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    run_id: uuid.UUID | None,
    payout_id: uuid.UUID | None,
    portfolio_id: str | None,
    details: str,
) -> str:
    """The same hash the database computes in ``batch.audit_hash`` (used to verify the chain)."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = "|".join(
        [
            prev_hash,
            str(seq),
            stamp,
            actor,
            action,
            str(run_id) if run_id else "",
            str(payout_id) if payout_id else "",
            portfolio_id or "",
            details,
        ]
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PayoutRecord:
    """One row of batch.payouts."""

    id: uuid.UUID
    portfolio_id: str
    business_date: date
    run_id: uuid.UUID
    decision_id: int
    state: PayoutState
    stopped_in_state: str | None
    currency: str
    amount: Decimal
    full_withdrawal: bool
    ledger_account: str
    counter_account: str
    cash_snapshot: Decimal
    divest_snapshot: str
    hold_reason: str | None
    approved_by: str | None
    ledger_reference: str | None
    transaction_id: str | None
    divest_target: str | None
    holdings_base_cash: Decimal | None
    holdings_target_cash: Decimal | None
    failing_step: str | None
    last_error: str | None
    attempts: int
    lease_owner: str | None
    created_at: datetime
    updated_at: datetime
    ledger_posted_at: datetime | None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> PayoutRecord:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, data: Mapping[Any, Any]) -> PayoutRecord:
        values = {f.name: data[f.name] for f in fields(cls)}
        values["state"] = PayoutState(values["state"])
        values["currency"] = values["currency"].strip()
        return cls(**values)


_PAYOUT_COLUMNS = ", ".join(f.name for f in fields(PayoutRecord))
#: SQLSTATE raised by batch.payout_advance when the payout is not in the expected state under our lease
_LOST_RACE = "BJ001"
_STEP_BEGIN = "SELECT batch.step_begin(%(p)s, %(state)s, %(w)s, %(lease)s, %(r)s, %(s)s, %(i)s::jsonb, %(u)s::jsonb)"
_STEP_FINISH = (
    f"SELECT {_PAYOUT_COLUMNS} FROM batch.step_finish(%(a)s, %(o)s, %(d)s::jsonb, %(p)s, %(from)s, %(w)s,"
    " %(through)s::text[], %(u)s::jsonb, %(note)s, %(actor)s, %(action)s, %(r)s, %(portfolio)s, %(audit)s)"
)


@dataclass(frozen=True)
class DecisionRow:
    portfolio_id: str
    decision: str
    reason: str
    currency: str | None
    requested_raw: str | None
    requested_amount: Decimal | None
    full_withdrawal: bool
    ledger_account: str | None
    ledger_available: Decimal | None
    investsuite_cash: Decimal | None
    pay_amount: Decimal | None
    reconciliation_break: bool
    details: Mapping[str, Any]


@dataclass(frozen=True)
class NewPayout:
    """A payout to create together with its decision (PAY -> PLANNED, capped HOLD -> HELD)."""

    id: uuid.UUID
    portfolio_id: str
    state: PayoutState
    currency: str
    amount: Decimal
    full_withdrawal: bool
    ledger_account: str
    counter_account: str
    cash_snapshot: Decimal
    divest_snapshot: str
    hold_reason: str | None = None


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    first_broken_seq: int | None = None
    problem: str | None = None


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, OperationalError):
        return TransientError(f"journal database unavailable: {type(exc.orig).__name__}")
    return exc


class Journal:
    """All reads and writes of the job's journal go through here."""

    def __init__(self, engine: Engine, *, lease_seconds: int = 300) -> None:
        self.engine = engine
        #: how long a claimed payout's lease runs from each step's intent (the executor's heartbeat)
        self.lease_seconds = lease_seconds
        #: intents of attempts begun here and not finished yet (their outcome's audit row carries them)
        self._intents: dict[int, Mapping[str, Any]] = {}

    # -- plumbing ------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise _translate(exc) from exc

    @contextmanager
    def _statement(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A pooled connection in autocommit mode for a one-statement transaction (one round trip).

        The hot path's writes are single calls of the step functions (migration 0003): atomic on
        their own, so neither BEGIN nor COMMIT costs a round trip.
        """
        with self.engine.connect() as conn:
            raw = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
            try:
                raw.autocommit = True
                try:
                    with raw.cursor(row_factory=dict_row) as cursor:
                        yield cursor
                finally:
                    raw.autocommit = False
            except psycopg.OperationalError as exc:
                conn.invalidate()  # never hand a broken connection back to the pool
                raise TransientError(f"journal database unavailable: {type(exc).__name__}") from exc
            except psycopg.DatabaseError as exc:
                if exc.sqlstate == _LOST_RACE:
                    raise InvalidTransitionError(str(exc.diag.message_primary or exc)) from exc
                raise

    @staticmethod
    def _audit(
        conn: Connection,
        *,
        actor: str,
        action: str,
        run_id: uuid.UUID | None = None,
        payout_id: uuid.UUID | None = None,
        portfolio_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        conn.execute(
            _AUDIT_INSERT,
            {
                "actor": actor,
                "action": action,
                "run_id": run_id,
                "payout_id": payout_id,
                "portfolio_id": portfolio_id,
                "details": canonical_json(details or {}),
            },
        )

    def audit(self, *, actor: str, action: str, **kw: Any) -> None:
        with self._tx() as conn:
            self._audit(conn, actor=actor, action=action, **kw)

    # -- run lock and run lifecycle ---------------------------------------------------------------
    @contextmanager
    def run_lock(self, key: str = RUN_LOCK_KEY) -> Iterator[None]:
        """Hold the session advisory lock for the whole run; RunLockedError if someone else has it.

        The lock also proves liveness: a RUNNING run whose process died no longer holds it.
        """
        try:
            conn = self.engine.connect()
        except OperationalError as exc:
            raise _translate(exc) from exc
        try:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": key}).scalar_one()
            conn.commit()
            if not got:
                raise RunLockedError("another run holds the run lock")
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
                conn.commit()
        finally:
            conn.close()

    def abandon_stale_runs(self, actor: str) -> list[uuid.UUID]:
        """Mark runs left RUNNING by a dead process ABANDONED (call only while holding the run lock)."""
        with self._tx() as conn:
            rows = (
                conn.execute(
                    sa.text(
                        "UPDATE batch.runs SET status = 'ABANDONED', finished_at = now(),"
                        " error = coalesce(error, 'process died while running') "
                        "WHERE status = 'RUNNING' AND parameters->>'role' IS DISTINCT FROM 'worker' RETURNING id"
                    )
                )
                .scalars()
                .all()
            )
            for run_id in rows:
                self._audit(conn, actor=actor, action="run.abandoned", run_id=run_id)
            if rows:
                # The dead planner's leases would keep its payouts from this run until they expire
                # (lease_seconds, and at least 60 s after a step began): release them now. The planner
                # leases as "{host}:{pid}:{run id hex[:8]}" (batch.service.run._executor); scale-out
                # workers, which may outlive it, lease under other names and keep theirs.
                conn.execute(
                    sa.text(
                        "UPDATE batch.payouts p SET lease_owner = NULL, lease_expires_at = NULL FROM batch.runs r"
                        " WHERE r.id = ANY(:ids) AND p.lease_owner ="
                        " r.host || ':' || r.pid || ':' || left(replace(r.id::text, '-', ''), 8)"
                    ),
                    {"ids": list(rows)},
                )
        return list(rows)

    def start_run(
        self,
        *,
        run_id: uuid.UUID,
        business_date: date,
        trigger: str,
        operator: str,
        dry_run: bool,
        parameters: Mapping[str, Any],
        software_version: str,
        config_digest: str,
        host: str,
        pid: int,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO batch.runs (id, business_date, trigger, operator, status, dry_run, parameters,"
                    " software_version, config_digest, host, pid) VALUES (:id, :d, :t, :o, 'RUNNING', :dry,"
                    " CAST(:p AS jsonb), :v, :c, :h, :pid)"
                ),
                {
                    "id": run_id,
                    "d": business_date,
                    "t": trigger,
                    "o": operator,
                    "dry": dry_run,
                    "p": canonical_json(parameters),
                    "v": software_version,
                    "c": config_digest,
                    "h": host,
                    "pid": pid,
                },
            )
            self._audit(
                conn,
                actor=operator,
                action="run.started",
                run_id=run_id,
                details={
                    "business_date": business_date,
                    "trigger": trigger,
                    "dry_run": dry_run,
                    "parameters": parameters,
                    "config_digest": config_digest,
                    "software_version": software_version,
                },
            )

    def finish_run(
        self,
        run_id: uuid.UUID,
        *,
        status: str,
        exit_code: int,
        summary: Mapping[str, Any],
        error: str | None,
        actor: str,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                sa.text(
                    "UPDATE batch.runs SET status = :s, exit_code = :e, summary = CAST(:sum AS jsonb),"
                    " error = :err, finished_at = now() WHERE id = :id AND status = 'RUNNING'"
                ),
                {"s": status, "e": exit_code, "sum": canonical_json(summary), "err": error, "id": run_id},
            )
            self._audit(
                conn,
                actor=actor,
                action="run.finished",
                run_id=run_id,
                details={"status": status, "exit_code": exit_code, "error": error, "totals": summary.get("totals", {})},
            )

    def mark_planned(self, run_id: uuid.UUID, actor: str, stats: Mapping[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(sa.text("UPDATE batch.runs SET planned_at = now() WHERE id = :id"), {"id": run_id})
            self._audit(conn, actor=actor, action="run.planned", run_id=run_id, details=stats)

    def current_planned_run(self) -> uuid.UUID | None:
        """The RUNNING, non-dry run whose plan is complete (what scale-out workers work for)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.text(
                    "SELECT id FROM batch.runs WHERE status = 'RUNNING' AND dry_run = false AND planned_at IS NOT NULL"
                    " ORDER BY started_at DESC LIMIT 1"
                )
            ).scalar_one_or_none()
        return value if isinstance(value, uuid.UUID) else None

    def run_status(self, run_id: uuid.UUID) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.text("SELECT status FROM batch.runs WHERE id = :id"), {"id": run_id}).scalar()
        return None if value is None else str(value)

    def get_run(self, run_id: uuid.UUID) -> Mapping[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM batch.runs WHERE id = :id"), {"id": run_id}).first()
        return None if row is None else dict(row._mapping)

    # -- planning ----------------------------------------------------------------------------------
    def open_payout_portfolios(self, portfolio_ids: Sequence[str]) -> dict[str, tuple[uuid.UUID, PayoutState]]:
        """Portfolios (of these) that already have an open payout, with its id and state. One query."""
        if not portfolio_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT portfolio_id, id, state FROM batch.payouts WHERE portfolio_id = ANY(:ids)"
                    " AND state NOT IN ('COMPLETED', 'CANCELLED')"
                ),
                {"ids": list(portfolio_ids)},
            )
            return {r.portfolio_id: (r.id, PayoutState(r.state)) for r in rows}

    def record_decisions(
        self,
        *,
        run_id: uuid.UUID,
        business_date: date,
        dry_run: bool,
        actor: str,
        decisions: Sequence[tuple[DecisionRow, NewPayout | None]],
    ) -> int:
        """Record a page of decisions (the payouts they create, and their audit rows) in one transaction.

        Batched: a handful of round trips per page whatever its size. Returns how many were new; a
        portfolio already decided in this run (offset paging over a live filter can repeat one) is
        not recorded twice.
        """
        with self._tx() as conn:
            seen = set(
                conn.execute(
                    sa.text("SELECT portfolio_id FROM batch.decisions WHERE run_id = :run AND portfolio_id = ANY(:p)"),
                    {"run": run_id, "p": [row.portfolio_id for row, _ in decisions]},
                ).scalars()
            )
            fresh: list[tuple[DecisionRow, NewPayout | None]] = []
            for row, payout in decisions:
                if row.portfolio_id not in seen:
                    seen.add(row.portfolio_id)
                    fresh.append((row, payout))
            if not fresh:
                return 0
            ids = (
                conn.execute(
                    sa.text("SELECT nextval('batch.decisions_id_seq') FROM generate_series(1, :n)"), {"n": len(fresh)}
                )
                .scalars()
                .all()
            )
            conn.execute(
                sa.text(
                    "INSERT INTO batch.decisions (id, run_id, business_date, portfolio_id, decision, reason,"
                    " currency, requested_raw, requested_amount, full_withdrawal, ledger_account,"
                    " ledger_available, investsuite_cash, pay_amount, reconciliation_break, payout_id,"
                    " dry_run, details) VALUES (:id, :run, :d, :pid, :dec, :reason, :ccy, :raw, :req, :full,"
                    " :acct, :lav, :isc, :pay, :brk, :payout, :dry, CAST(:det AS jsonb))"
                ),
                [
                    {
                        "id": decision_id,
                        "run": run_id,
                        "d": business_date,
                        "pid": row.portfolio_id,
                        "dec": row.decision,
                        "reason": row.reason,
                        "ccy": row.currency,
                        "raw": row.requested_raw,
                        "req": row.requested_amount,
                        "full": row.full_withdrawal,
                        "acct": row.ledger_account,
                        "lav": row.ledger_available,
                        "isc": row.investsuite_cash,
                        "pay": row.pay_amount,
                        "brk": row.reconciliation_break,
                        "payout": payout.id if payout else None,
                        "dry": dry_run,
                        "det": canonical_json(row.details),
                    }
                    for decision_id, (row, payout) in zip(ids, fresh, strict=True)
                ],
            )
            payouts = [
                {
                    "id": payout.id,
                    "pid": payout.portfolio_id,
                    "d": business_date,
                    "run": run_id,
                    "dec": decision_id,
                    "state": payout.state.value,
                    "ccy": payout.currency,
                    "amt": payout.amount,
                    "full": payout.full_withdrawal,
                    "acct": payout.ledger_account,
                    "ctr": payout.counter_account,
                    "cash": payout.cash_snapshot,
                    "div": payout.divest_snapshot,
                    "hold": payout.hold_reason,
                }
                for decision_id, (_, payout) in zip(ids, fresh, strict=True)
                if payout is not None
            ]
            if payouts:
                conn.execute(
                    sa.text(
                        "INSERT INTO batch.payouts (id, portfolio_id, business_date, run_id, decision_id,"
                        " state, currency, amount, full_withdrawal, ledger_account, counter_account,"
                        " cash_snapshot, divest_snapshot, hold_reason) VALUES (:id, :pid, :d, :run, :dec,"
                        " :state, :ccy, :amt, :full, :acct, :ctr, :cash, :div, :hold)"
                    ),
                    payouts,
                )
            conn.execute(
                _AUDIT_INSERT,
                [
                    {
                        "actor": actor,
                        "action": "decision.recorded",
                        "run_id": run_id,
                        "payout_id": payout.id if payout else None,
                        "portfolio_id": row.portfolio_id,
                        "details": canonical_json(
                            {
                                "decision": row.decision,
                                "reason": row.reason,
                                "currency": row.currency,
                                "requested": row.requested_amount,
                                "pay_amount": row.pay_amount,
                                "dry_run": dry_run,
                            }
                        ),
                    }
                    for row, payout in fresh
                ],
            )
        return len(fresh)

    def revise_decision(self, conn: Connection, payout_id: uuid.UUID, decision: str, reason: str) -> None:
        conn.execute(
            sa.text("UPDATE batch.decisions SET final_decision = :d, final_reason = :r WHERE payout_id = :p"),
            {"d": decision, "r": reason, "p": payout_id},
        )

    # -- execution: claiming and stepping ----------------------------------------------------------
    def claim_payouts(
        self,
        *,
        worker: str,
        limit: int,
        lease_seconds: int,
        states: Sequence[PayoutState],
        portfolio_ids: Sequence[str] | None = None,
        run_id: uuid.UUID | None = None,
    ) -> list[PayoutRecord]:
        """Lease up to ``limit`` executable payouts nobody else holds (FOR UPDATE SKIP LOCKED)."""
        filters = ""
        params: dict[str, Any] = {"w": worker, "n": limit, "lease": lease_seconds, "states": [s.value for s in states]}
        if portfolio_ids is not None:
            filters += " AND portfolio_id = ANY(:pids)"
            params["pids"] = list(portfolio_ids)
        if run_id is not None:
            filters += " AND run_id = :run"
            params["run"] = run_id
        with self._tx() as conn:
            rows = conn.execute(
                sa.text(
                    "UPDATE batch.payouts SET lease_owner = :w,"
                    " lease_expires_at = now() + make_interval(secs => :lease)"
                    f" WHERE id IN (SELECT id FROM batch.payouts WHERE state = ANY(:states)"
                    f" AND (lease_expires_at IS NULL OR lease_expires_at < now()){filters}"
                    f" ORDER BY created_at, id LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING {_PAYOUT_COLUMNS}"
                ),
                params,
            ).all()
        return [PayoutRecord.from_row(r) for r in rows]

    def release_lease(self, payout_id: uuid.UUID, worker: str) -> None:
        with self._statement() as cursor:
            cursor.execute(
                "UPDATE batch.payouts SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = %(id)s AND lease_owner = %(w)s",
                {"id": payout_id, "w": worker},
            )

    def get_payout(self, payout_id: uuid.UUID) -> PayoutRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(f"SELECT {_PAYOUT_COLUMNS} FROM batch.payouts WHERE id = :id"), {"id": payout_id}
            ).first()
        return None if row is None else PayoutRecord.from_row(row)

    def attempts_by_step(self, payout_ids: Sequence[uuid.UUID]) -> dict[tuple[uuid.UUID, str], tuple[int, int]]:
        """Attempts per (payout, step) for a claimed batch, in one query: (all of them, since the last retry).

        All attempts decide whether to read back first; those since an operator's retry count against
        the attempt cap.
        """
        if not payout_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT a.payout_id, a.step, count(*) AS n,"
                    " count(*) FILTER (WHERE p.retried_at IS NULL OR a.intent_at > p.retried_at) AS budget"
                    " FROM batch.step_attempts a JOIN batch.payouts p ON p.id = a.payout_id"
                    " WHERE a.payout_id = ANY(:ids) GROUP BY a.payout_id, a.step"
                ),
                {"ids": list(payout_ids)},
            )
            return {(r.payout_id, r.step): (int(r.n), int(r.budget)) for r in rows}

    def begin_step(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID,
        step: Step,
        actor: str,
        worker: str,
        intent: Mapping[str, Any],
        payout_updates: Mapping[str, Any] | None = None,
    ) -> int:
        """Record the intent to call an external system (durably, before the call); returns the attempt id.

        One statement (``batch.step_begin``): guard the state and lease, renew the lease, apply the
        column updates, insert the attempt. No audit row here: the intent is durable in step_attempts
        and goes into the audit log with the outcome (one audited transaction per step).
        """
        with self._statement() as cursor:
            cursor.execute(
                _STEP_BEGIN,
                {
                    "p": payout.id,
                    "state": payout.state.value,
                    "w": worker,
                    "lease": self.lease_seconds,
                    "r": run_id,
                    "s": step.value,
                    "i": canonical_json(intent),
                    "u": canonical_json(payout_updates or {}),
                },
            )
            row = cursor.fetchone()
        assert row is not None
        attempt_id = int(row["step_begin"])
        self._intents[attempt_id] = intent
        return attempt_id

    def finish_step(
        self,
        payout: PayoutRecord,
        attempt_id: int,
        *,
        run_id: uuid.UUID,
        step: Step,
        actor: str,
        worker: str,
        outcome: str,
        detail: Mapping[str, Any],
        through: Sequence[PayoutState] = (),
        payout_updates: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> PayoutRecord:
        """Record the outcome of an attempt and move the payout through ``through`` states (guarded).

        ``note`` is added to the decision's details (``execution_note``) so the report shows it.

        Returns the payout as it is afterwards.
        """
        intent = self._intents.pop(attempt_id, None)
        if intent is None:  # begun by another process (or before a restart): read the intent back
            with self.engine.connect() as conn:
                stored = conn.execute(
                    sa.text("SELECT intent FROM batch.step_attempts WHERE id = :id"), {"id": attempt_id}
                ).scalar()
            intent = stored or {}
        current = payout
        for target in through:
            check_transition(current.state, target)
            current = replace(current, state=target)
        # one audit row per outcome; it names the state transitions it made
        states: dict[str, Any] = {"from": payout.state, "through": list(through)} if through else {}
        states |= {"attempt": attempt_id, "intent": intent}
        with self._statement() as cursor:
            cursor.execute(
                _STEP_FINISH,
                {
                    "a": attempt_id,
                    "o": outcome,
                    "d": canonical_json(detail),
                    "p": payout.id,
                    "from": payout.state.value,
                    "w": worker,
                    "through": [s.value for s in through],
                    "u": canonical_json(payout_updates or {}),
                    "note": note,
                    "actor": actor,
                    "action": f"step.{step.value.lower()}.{outcome.lower()}",
                    "r": run_id,
                    "portfolio": payout.portfolio_id,
                    "audit": canonical_json({**detail, **states}),
                },
            )
            row = cursor.fetchone()
        if row is None or row["id"] is None:
            return payout  # nothing to apply (e.g. a transient error's outcome)
        return PayoutRecord.from_mapping(row)

    _STAMP = {
        PayoutState.LEDGER_POSTED: "ledger_posted_at",
        PayoutState.TRANSACTION_RECORDED: "transaction_recorded_at",
        PayoutState.DIVEST_CLEARED: "divest_cleared_at",
        PayoutState.HOLDINGS_UPDATED: "holdings_updated_at",
        PayoutState.EVENT_SENT: "event_sent_at",
        PayoutState.COMPLETED: "completed_at",
    }

    def _transition(
        self,
        conn: Connection,
        payout: PayoutRecord,
        target: PayoutState,
        *,
        worker: str | None,
        updates: Mapping[str, Any],
    ) -> PayoutRecord:
        check_transition(payout.state, target)
        sets = [f"{k} = :u_{k}" for k in updates]
        stamp = self._STAMP.get(target)
        if stamp:
            sets.append(f"{stamp} = coalesce({stamp}, now())")
        if target is PayoutState.NEEDS_ATTENTION:
            sets.append("stopped_in_state = :from_state")
        if target in (PayoutState.NEEDS_ATTENTION, PayoutState.CANCELLED):
            sets.append("stopped_at = now()")
        owner = " AND lease_owner = :w" if worker is not None else ""
        row = conn.execute(
            sa.text(
                f"UPDATE batch.payouts SET state = :to, updated_at = now(){''.join(', ' + s for s in sets)}"
                f" WHERE id = :id AND state = :from_state{owner} RETURNING {_PAYOUT_COLUMNS}"
            ),
            {
                "to": target.value,
                "id": payout.id,
                "from_state": payout.state.value,
                "w": worker,
                **{f"u_{k}": v for k, v in updates.items()},
            },
        ).first()
        if row is None:
            raise InvalidTransitionError(f"payout {payout.id}: {payout.state} -> {target} lost a race")
        return PayoutRecord.from_row(row)

    def needs_attention(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID | None,
        step: Step | None,
        actor: str,
        worker: str | None,
        error: str,
        evidence: Mapping[str, Any] | None = None,
        attempt_id: int | None = None,
    ) -> PayoutRecord:
        """Stop a payout for a human: the exact step, the error and the evidence are recorded."""
        if attempt_id is not None:
            self._intents.pop(attempt_id, None)
        with self._tx() as conn:
            if attempt_id is not None:
                conn.execute(
                    sa.text(
                        "UPDATE batch.step_attempts SET outcome = 'PERMANENT_ERROR', outcome_at = now(),"
                        " detail = CAST(:d AS jsonb) WHERE id = :id AND outcome IS NULL"
                    ),
                    {"d": canonical_json({"error": error, **(evidence or {})}), "id": attempt_id},
                )
            updated = self._transition(
                conn,
                payout,
                PayoutState.NEEDS_ATTENTION,
                worker=worker,
                updates={
                    "failing_step": step.value if step else None,
                    "last_error": error[:2000],
                    "lease_owner": None,
                    "lease_expires_at": None,
                },
            )
            self._audit(
                conn,
                actor=actor,
                action="payout.needs_attention",
                run_id=run_id,
                payout_id=payout.id,
                portfolio_id=payout.portfolio_id,
                details={"from": payout.state, "step": step, "error": error, "evidence": evidence or {}},
            )
        return updated

    def cancel_before_ledger(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID | None,
        actor: str,
        worker: str | None,
        reason: str,
        revise: tuple[str, str] | None,
        attempt_id: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> PayoutRecord:
        """CANCEL a payout that has not reached the ledger (the only kind that may be cancelled)."""
        if attempt_id is not None:
            self._intents.pop(attempt_id, None)
        with self._tx() as conn:
            if attempt_id is not None:
                conn.execute(
                    sa.text(
                        "UPDATE batch.step_attempts SET outcome = 'REFUSED', outcome_at = now(),"
                        " detail = CAST(:d AS jsonb) WHERE id = :id AND outcome IS NULL"
                    ),
                    {"d": canonical_json(detail or {}), "id": attempt_id},
                )
            if payout.ledger_reference is not None:
                raise InvalidTransitionError(f"payout {payout.id} reached the ledger; it cannot be cancelled")
            updated = self._transition(
                conn,
                payout,
                PayoutState.CANCELLED,
                worker=worker,
                updates={"last_error": reason, "lease_owner": None, "lease_expires_at": None},
            )
            if revise is not None:
                self.revise_decision(conn, payout.id, *revise)
            self._audit(
                conn,
                actor=actor,
                action="payout.cancelled",
                run_id=run_id,
                payout_id=payout.id,
                portfolio_id=payout.portfolio_id,
                details={"reason": reason, **(detail or {})},
            )
        return updated

    # -- operator controls ---------------------------------------------------------------------------
    def operator_transition(
        self,
        payout_id: uuid.UUID,
        *,
        target: PayoutState | None,
        actor: str,
        action: str,
        reason: str,
        updates: Mapping[str, Any] | None = None,
    ) -> PayoutRecord:
        """An operator's change (approve, retry, cancel), guarded and audited with who did it."""
        with self._tx() as conn:
            row = conn.execute(
                sa.text(f"SELECT {_PAYOUT_COLUMNS} FROM batch.payouts WHERE id = :id FOR UPDATE"),
                {"id": payout_id},
            ).first()
            if row is None:
                raise InvalidTransitionError(f"no payout {payout_id}")
            payout = PayoutRecord.from_row(row)
            if target is PayoutState.CANCELLED and payout.ledger_reference is not None:
                raise InvalidTransitionError(
                    f"payout {payout_id} reached the ledger ({payout.ledger_reference}); it cannot be cancelled"
                )
            resolved = target
            extra: dict[str, Any] = {}
            if action == "payout.retry":
                if payout.state is not PayoutState.NEEDS_ATTENTION or not payout.stopped_in_state:
                    raise InvalidTransitionError(f"payout {payout_id} is {payout.state}, not NEEDS_ATTENTION")
                resolved = PayoutState(payout.stopped_in_state)
                extra["retried_at"] = datetime.now(UTC)
            assert resolved is not None
            updated = self._transition(
                conn,
                payout,
                resolved,
                worker=None,
                updates={"lease_owner": None, "lease_expires_at": None, **extra, **(updates or {})},
            )
            if resolved is PayoutState.CANCELLED:
                self.revise_decision(conn, payout_id, "DEFER", "CANCELLED_BY_OPERATOR")
            self._audit(
                conn,
                actor=actor,
                action=action,
                payout_id=payout_id,
                portfolio_id=payout.portfolio_id,
                details={"from": payout.state, "to": resolved, "reason": reason},
            )
        return updated

    def list_payouts(self, states: Sequence[PayoutState], limit: int = 1000) -> list[PayoutRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    f"SELECT {_PAYOUT_COLUMNS} FROM batch.payouts WHERE state = ANY(:s)"
                    " ORDER BY created_at, id LIMIT :n"
                ),
                {"s": [s.value for s in states], "n": limit},
            ).all()
        return [PayoutRecord.from_row(r) for r in rows]

    def count_open_of_run(self, run_id: uuid.UUID) -> int:
        """Payouts of a run still to be executed or in flight (for progress across worker processes)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.text("SELECT count(*) FROM batch.payouts WHERE run_id = :r AND state = ANY(:s)"),
                {"r": run_id, "s": sorted(s.value for s in EXECUTABLE_STATES)},
            ).scalar_one()
        return int(value)

    def count_open(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT state, count(*) AS n FROM batch.payouts WHERE state = ANY(:s) GROUP BY state"),
                {"s": [s.value for s in OPEN_STATES]},
            )
            return {r.state: int(r.n) for r in rows}

    # -- audit verification ---------------------------------------------------------------------------
    def verify_audit(self, batch_size: int = 5000) -> AuditVerification:
        """Recompute the whole hash chain in seq order; name the first row that does not verify."""
        prev, expected_seq, count, head_hash = GENESIS_HASH, 1, 0, GENESIS_HASH
        last_seq = 0
        with self.engine.connect() as conn:
            while True:
                rows = conn.execute(
                    sa.text(
                        "SELECT seq, at, actor, action, run_id, payout_id, portfolio_id, details, prev_hash,"
                        " hash FROM batch.audit_log WHERE seq > :after ORDER BY seq LIMIT :n"
                    ),
                    {"after": last_seq, "n": batch_size},
                ).all()
                if not rows:
                    break
                for r in rows:
                    count += 1
                    if r.seq != expected_seq:
                        return AuditVerification(
                            False,
                            count,
                            last_seq,
                            head_hash,
                            r.seq,
                            f"sequence gap: expected {expected_seq}, found {r.seq} (row deleted?)",
                        )
                    if r.prev_hash != prev:
                        return AuditVerification(
                            False, count, last_seq, head_hash, r.seq, "prev_hash does not match the previous row's hash"
                        )
                    computed = audit_hash(
                        prev, r.seq, r.at, r.actor, r.action, r.run_id, r.payout_id, r.portfolio_id, r.details
                    )
                    if computed != r.hash:
                        return AuditVerification(
                            False, count, last_seq, head_hash, r.seq, "row content does not match its hash (edited?)"
                        )
                    prev = head_hash = r.hash
                    last_seq = r.seq
                    expected_seq += 1
        return AuditVerification(True, count, last_seq, head_hash)

    def audit_head(self) -> tuple[int, str]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT seq, hash FROM batch.audit_log ORDER BY seq DESC LIMIT 1")).first()
        return (0, GENESIS_HASH) if row is None else (int(row.seq), str(row.hash))
