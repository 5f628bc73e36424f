"""How many processes a run may start without exhausting a database server's connections (issue 27).

Each process executing payouts holds up to ``[run] concurrency + 4`` connections on the journal and as many on
the ledger (one per thread that works: its lanes and a few of its own), plus its lease's own connection.
Sixteen processes of 32 threads asked ~1,150 connections of a server allowing 400: workers died at start-up
("too many clients") and payouts stalled on the connection errors: the issue's 16 x 32 run that completed
fewer payouts and exited 3. A run therefore starts at most as many worker processes as the servers can
connect now, with a margin for operators and the listener, and says so (``run.workers_capped``); the
planner itself is already connected.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from sqlalchemy.engine import Engine

from batch.adapters.sqlfiles import load_queries
from batch.service.context import Services

Q = load_queries("server")
log = structlog.get_logger("batch.run")

#: connections left free on each server for operators, the listener and monitoring
MARGIN = 5


def processes_that_fit(asked: int, servers: Iterable[tuple[int, int]], margin: int = MARGIN) -> int:
    """The processes (planner included) that fit: ``servers`` is (connections free now, needed per worker) each."""
    fit = asked
    for free, per_worker in servers:
        workers = max(free - margin, 0) // max(per_worker, 1)
        fit = min(fit, 1 + workers)
    return max(fit, 1)


def _server(engine: Engine) -> tuple[str | None, int | None, str | None]:
    url = engine.url
    return url.host, url.port, str(url.query.get("host", ""))


def _free(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(Q.connection_headroom.text).mappings().one()
    return int(row["allowed"]), int(row["in_use"])


def fit_processes(app: Services, asked: int) -> int:
    """``asked`` capped to what the journal's and the ledger's servers can connect now (one server counted once)."""
    if asked <= 1:
        return asked
    # a process's threads (its lanes and a few of its own) hold at most one connection of each pool at a time
    pool = app.settings.run.concurrency + 4
    needs: dict[tuple[str | None, int | None, str | None], tuple[Engine, int]] = {}
    for engine, extra in ((app.journal_engine, 1), (app.ledger_engine, 0)):  # the journal also holds the lease
        key = _server(engine)
        known = needs.get(key)
        needs[key] = (engine, (known[1] if known else 0) + pool + extra)
    free = {key: _free(engine) for key, (engine, _) in needs.items()}
    servers = [(allowed - in_use, needs[key][1]) for key, (allowed, in_use) in free.items()]
    fit = processes_that_fit(asked, servers)
    if fit < asked:
        log.warning(
            "run.workers_capped",
            asked=asked,
            processes=fit,
            servers=[{"allowed": a, "in_use": u, "per_process": needs[k][1]} for k, (a, u) in free.items()],
            why="the database server cannot take that many connections: raise max_connections or lower concurrency",
        )
    return fit
