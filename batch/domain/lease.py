"""Who may take a lease (the right to run): the rules, pure, with the facts passed in.

A lease row names its holder (run, host, pid), its heartbeat's expiry and ``lock_epoch``: the start
time of the database server in which the holder last held the lease's session lock. A contender first
locks the row and tries the session lock, then asks ``judge``:

1. someone else holds the session lock: a live process (the holder, or an older version of the job) -> HELD;
2. no holder (never taken, or released) or the holder's run is finished -> FREE;
3. the heartbeat expired: the holder stopped renewing (dead, or stuck and self-fenced) -> EXPIRED;
4. the holder ran on this host and its process is gone -> DEAD;
5. otherwise -> HELD until the heartbeat expires: the server restarted and the holder has not come back
   yet, or the holder's session is gone although the server never restarted — which is no proof of death
   (a dropped or reset connection of a live holder looks the same, and its calls may be in flight), so it
   is not taken over before its own watchdog has stopped it (at 3/4 of the TTL without a renewal).

EXPIRED and DEAD are take-overs: the old holder's run is fenced (it can change nothing more) before
the new one starts.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

#: run states after which a run holds nothing
FINISHED_RUN_STATES = frozenset({"SUCCEEDED", "SUCCEEDED_WITH_EXCEPTIONS", "FAILED", "ABANDONED", "INTERRUPTED"})


class Verdict(enum.StrEnum):
    FREE = "FREE"
    EXPIRED = "EXPIRED"
    DEAD = "DEAD"
    HELD = "HELD"

    @property
    def may_take(self) -> bool:
        return self is not Verdict.HELD

    @property
    def takes_over(self) -> bool:
        """The old holder may still be alive somewhere: it is fenced first."""
        return self in (Verdict.EXPIRED, Verdict.DEAD)


@dataclass(frozen=True)
class LeaseRow:
    """A lease held (not released), with its holder run's status (None: no such run recorded yet).

    ``run_id`` is None for a listener instance's lease (its runs rotate under it)."""

    run_id: uuid.UUID | None
    run_status: str | None
    host: str
    pid: int
    token: int
    expires_at: datetime
    lock_epoch: datetime | None


@dataclass(frozen=True)
class Facts:
    """What the contender saw, in the same transaction as the locked row."""

    now: datetime
    got_session_lock: bool
    server_epoch: datetime
    host: str
    #: whether a process of this host with that pid is alive (asked only for the holder's own host)
    holder_pid_alive: bool | None = None


def judge(row: LeaseRow | None, facts: Facts) -> tuple[Verdict, str]:
    """The verdict on a lease and why, in a few words (for the log and the audit row)."""
    if not facts.got_session_lock:
        return Verdict.HELD, "another process holds the session lock"
    if row is None:  # never taken, or released
        return Verdict.FREE, "no holder"
    if row.run_status in FINISHED_RUN_STATES:
        return Verdict.FREE, f"the holder's run is {row.run_status}"
    if row.expires_at < facts.now:
        return Verdict.EXPIRED, f"the holder's heartbeat expired at {row.expires_at.isoformat()}"
    if row.host == facts.host and facts.holder_pid_alive is False:
        return Verdict.DEAD, f"the holder's process {row.pid} on this host is gone"
    return Verdict.HELD, f"held by run {row.run_id} on {row.host} (pid {row.pid}) until {row.expires_at.isoformat()}"
