"""A lease with a fencing token held in the journal (migration 0012), over one dedicated connection.

The connection also holds the lease's session advisory lock (the quick proof that the holder lives);
after a database restart it is reopened and the lock taken again at the next heartbeat. Who may take a
lease is ``batch.domain.lease.judge``; this module only gathers the facts and applies the verdict.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from batch.adapters.journal.base import AUDIT, audit_row, unavailable
from batch.adapters.sqlfiles import load_queries
from batch.domain.lease import Facts, LeaseRow, Verdict, judge
from batch.errors import RunLockedError

Q = load_queries("journal_leases")
log = structlog.get_logger("batch.lease")

#: the nightly run's lease (also the name of the advisory lock older versions took)
RUN_LEASE = "batch.run"


def listener_lease(instance: str) -> str:
    """The lease (and session lock) of one listener instance."""
    return f"batch.listener.{instance}"


@dataclass(frozen=True)
class Taken:
    token: int
    verdict: Verdict
    why: str
    #: the run that held it before and was fenced (a take-over), if any
    fenced_run: uuid.UUID | None
    #: payout leases released: with a take-over, or those of gone processes of this host (nightly run only)
    released_payouts: int


def _row(mapping: Any) -> LeaseRow | None:
    if mapping is None or mapping["released"]:
        return None
    return LeaseRow(
        run_id=mapping["run_id"],
        run_status=mapping["run_status"],
        host=mapping["host"],
        pid=int(mapping["pid"]),
        token=int(mapping["token"]),
        expires_at=mapping["expires_at"],
        lock_epoch=mapping["lock_epoch"],
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (ours counts as alive; a zombie does not)."""
    if pid == os.getpid():
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # no such process (or not ours to look at: then it is not a job of this user)
        return False


class LeaseSession:
    """One lease, held over its own connection: acquire, renew (the heartbeat), release."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        ttl_seconds: float,
        host: str,
        pid: int,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.engine = engine
        self.name = name
        self.ttl_seconds = ttl_seconds
        self.host = host
        self.pid = pid
        self._alive = alive
        self._conn: Connection | None = None
        self._locked = False
        self.token: int | None = None

    # -- the connection ---------------------------------------------------------------------------------
    def _connection(self) -> Connection:
        if self._conn is None:
            try:
                self._conn = self.engine.connect()
            except (OperationalError, InterfaceError) as exc:
                raise unavailable(exc) from exc
            self._locked = False
        return self._conn

    def _drop(self) -> None:
        """Forget a broken connection (its session lock went with it)."""
        conn, self._conn, self._locked = self._conn, None, False
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception as exc:  # already gone: nothing to clean
                log.debug("lease.close_failed", error=str(exc))

    def _try_lock(self, conn: Connection) -> bool:
        if not self._locked:
            self._locked = bool(conn.execute(Q.try_lock.text, {"name": self.name}).scalar_one())
        return self._locked

    def _unlock(self, conn: Connection) -> None:
        if self._locked:
            conn.execute(Q.unlock.text, {"name": self.name})
            self._locked = False

    # -- the lease ----------------------------------------------------------------------------------------
    def _owner_gone(self, owner: str) -> bool:
        """Whether a payout lease's owner (``host:pid:…``) is a process of this host that is gone."""
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        return host == self.host and pid.isdigit() and not self._alive(int(pid))

    def acquire(self, run_id: uuid.UUID | None, *, actor: str, release_payouts: bool = False) -> Taken:
        """Take the lease for ``run_id`` (fencing a dead or expired holder), or RunLockedError."""
        conn = self._connection()
        try:
            conn.execute(Q.ensure.text, {"name": self.name, "host": self.host, "pid": self.pid})
            conn.commit()
            current = conn.execute(Q.row_for_update.text, {"name": self.name}).mappings().first()
            assert current is not None
            row = _row(current)
            got = self._try_lock(conn)
            facts = Facts(
                now=current["db_now"],
                got_session_lock=got,
                server_epoch=current["server_epoch"],
                host=self.host,
                holder_pid_alive=self._alive(row.pid) if row is not None and row.host == self.host else None,
            )
            verdict, why = judge(row, facts)
            if not verdict.may_take:
                conn.rollback()
                self._unlock(conn)
                conn.commit()
                raise RunLockedError(f"lease {self.name} is held: {why}")
            fenced = None
            if verdict.takes_over and row is not None and row.run_id is not None:
                reason = f"taken over: {why}"
                if conn.execute(Q.fence_run.text, {"id": row.run_id, "reason": reason}).first() is not None:
                    fenced = row.run_id
            released = 0
            if release_payouts:
                owners = [str(o) for o in conn.execute(Q.payout_lease_owners.text).scalars()]
                dead = [owner for owner in owners if self._owner_gone(owner)]
                if dead or verdict.takes_over:
                    params = {"dead_owners": dead, "take_over": verdict.takes_over}
                    released = len(conn.execute(Q.release_payout_leases.text, params).all())
            token = int(
                conn.execute(
                    Q.take.text,
                    {"name": self.name, "run_id": run_id, "host": self.host, "pid": self.pid, "ttl": self.ttl_seconds},
                ).scalar_one()
            )
            if verdict.takes_over:
                details = {"lease": self.name, "why": why, "fenced_run": fenced, "payout_leases_released": released}
                conn.execute(AUDIT.append.text, audit_row(actor, "lease.taken_over", run_id=fenced, details=details))
            conn.commit()
        except (OperationalError, InterfaceError) as exc:
            self._drop()
            raise unavailable(exc) from exc
        self.token = token
        if verdict.takes_over:
            log.warning("lease.taken_over", lease=self.name, why=why, fenced_run=str(fenced), released=released)
        elif released:
            log.warning("lease.dead_payout_leases_released", lease=self.name, released=released)
        return Taken(token, verdict, why, fenced, released)

    def renew(self) -> bool:
        """The heartbeat: extend the lease (and take the session lock again after a restart).

        False when the lease is no longer ours (taken over, or our run fenced); TransientError when the
        journal cannot be reached (the connection is reopened at the next call).
        """
        assert self.token is not None
        try:
            conn = self._connection()
            locked = self._try_lock(conn)
            got = conn.execute(
                Q.renew.text, {"name": self.name, "token": self.token, "ttl": self.ttl_seconds, "locked": locked}
            ).first()
            conn.commit()
        except (OperationalError, InterfaceError) as exc:
            self._drop()
            raise unavailable(exc) from exc
        return got is not None

    def set_run(self, run_id: uuid.UUID | None) -> None:
        """A listener instance's lease names the run it currently records under."""
        assert self.token is not None
        try:
            conn = self._connection()
            conn.execute(Q.set_run.text, {"name": self.name, "token": self.token, "run_id": run_id})
            conn.commit()
        except (OperationalError, InterfaceError) as exc:
            self._drop()
            raise unavailable(exc) from exc

    def release(self) -> None:
        """Give the lease back and close the connection. Never raises: failures are logged (the outcome
        of the run is already recorded; a lease left behind expires, and its dead session proves nothing)."""
        try:
            if self._conn is not None or self.token is not None:
                conn = self._connection()
                if self.token is not None:
                    conn.execute(Q.release.text, {"name": self.name, "token": self.token})
                self._unlock(conn)
                conn.commit()
        except Exception as exc:  # a dead connection after a restart: nothing to undo
            log.warning("lease.release_failed", lease=self.name, error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            self._drop()


def lease_is_live(probe: Connection, name: str, *, host: str) -> tuple[bool, str]:
    """Whether someone else's lease is live (for the listeners' sweep), judged like a contender would.

    ``probe`` tries the session lock and lets it go again.
    """
    got = bool(probe.execute(Q.try_lock.text, {"name": name}).scalar_one())
    try:
        current = probe.execute(Q.row.text, {"name": name}).mappings().first()
        row = _row(current)
        if current is None:
            return (not got), "no lease row"
        facts = Facts(
            now=current["db_now"],
            got_session_lock=got,
            server_epoch=current["server_epoch"],
            host=host,
            holder_pid_alive=pid_alive(row.pid) if row is not None and row.host == host else None,
        )
        verdict, why = judge(row, facts)
        return verdict is Verdict.HELD, why
    finally:
        if got:
            probe.execute(Q.unlock.text, {"name": name})
        probe.commit()
