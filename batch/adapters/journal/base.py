"""Plumbing shared by the journal's stores: transactions, one-statement autocommit calls, audit rows.

Every change appends to the hash-chained audit log in the same database transaction as the change
itself, so the audit trail and the journal can never disagree. Rows are appended through
``batch.audit_append`` (migration 0005): the database stamps the login role, the application name and
the time; the ``actor`` the callers pass is only a display name stored beside them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg.rows import dict_row
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from batch.adapters.sqlfiles import load_queries
from batch.codec import canonical
from batch.errors import FenceLostError, InvalidTransitionError, OperatorRefusedError, TransientError

#: SQLSTATE raised by the journal's SQL functions when a payout is not in the expected state under our lease
LOST_RACE = "BJ001"
#: SQLSTATE of an operator's action the database refused (who acts, the reason, the four-eyes rule)
REFUSED = "BJ002"
#: SQLSTATE of a write by a run whose lease was taken over (migration 0012: batch.check_fence)
FENCED = "BJ003"

AUDIT = load_queries("journal_audit")


def unavailable(exc: Exception) -> TransientError:
    """The journal database could not be used (connection refused, dropped, timed out)."""
    orig = getattr(exc, "orig", None) or exc
    return TransientError(f"journal database unavailable: {type(orig).__name__}: {str(orig).strip()[:200]}")


class JournalBase:
    """The engine, the lease length, and the transaction helpers every store uses."""

    def __init__(self, engine: Engine, *, lease_seconds: int = 300) -> None:
        self.engine = engine
        #: how long a claimed payout's lease runs from each step's intent (the executor's heartbeat)
        self.lease_seconds = lease_seconds
        #: intents of attempts begun here and not finished yet (their outcome's audit row carries them)
        self._intents: dict[int, Mapping[str, Any]] = {}

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise unavailable(exc) from exc
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == FENCED:
                raise FenceLostError(str(exc.orig).strip().splitlines()[0]) from exc
            raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise unavailable(exc) from exc

    @contextmanager
    def _statement(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A pooled connection in autocommit mode for a one-statement transaction (one round trip).

        The hot path's writes are single calls of the step functions (migration 0003): atomic on
        their own, so neither BEGIN nor COMMIT costs a round trip.
        """
        try:
            connected = self.engine.connect()
        except OperationalError as exc:  # e.g. the journal restarting: a transient error the step retries
            raise unavailable(exc) from exc
        with connected as conn:
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
                raise unavailable(exc) from exc
            except psycopg.DatabaseError as exc:
                if exc.sqlstate == LOST_RACE:
                    raise InvalidTransitionError(str(exc.diag.message_primary or exc)) from exc
                if exc.sqlstate == REFUSED:
                    raise OperatorRefusedError(str(exc.diag.message_primary or exc)) from exc
                if exc.sqlstate == FENCED:
                    raise FenceLostError(str(exc.diag.message_primary or exc)) from exc
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
        conn.execute(AUDIT.append.text, audit_row(actor, action, run_id, payout_id, portfolio_id, details))

    def audit(self, *, actor: str, action: str, **kw: Any) -> None:
        """Append one audit row in its own transaction (``actor``: the display name)."""
        with self._tx() as conn:
            self._audit(conn, actor=actor, action=action, **kw)


def audit_row(
    actor: str,
    action: str,
    run_id: uuid.UUID | None = None,
    payout_id: uuid.UUID | None = None,
    portfolio_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The parameters of the ``append`` audit query (``actor`` is stored as the display name)."""
    return {
        "display_name": actor,
        "action": action,
        "run_id": run_id,
        "payout_id": payout_id,
        "portfolio_id": portfolio_id,
        "details": canonical(details or {}),
    }
