"""The benchmarks' shared harness: a private embedded PostgreSQL, seeded books, the job as a measured
subprocess (``launch.py``), and what one measurement collects from the journal and the sandbox.

Imported by the scenarios (``scenarios.py``, ``book.py``, ``deposits.py``), the table (``table.py``), the
listener bench and ``bench.py`` (the command line); it imports none of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import psycopg  # noqa: E402

from batch.adapters.migrations import migrate  # noqa: E402
from batch.adapters.postgres import EmbeddedServer, ensure_database, make_engine, with_database  # noqa: E402
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY  # noqa: E402
from batch.sandbox.seed import seed_scenario  # noqa: E402
from batch.sandbox.server import SandboxProcess  # noqa: E402

BUSINESS_DATE = "2026-11-20"
PYTHON = sys.executable


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def libpq(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


# --------------------------------------------------------------------------- environment


class Env:
    """The private embedded PostgreSQL server and a counter for fresh database names."""

    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="payout-bench-", dir="/tmp"))
        self.server = EmbeddedServer(self.root / "pg")
        self.keep = keep
        self._n = 0
        self.admin = self.server.start()  # max_connections raised to 400 by EmbeddedServer
        log(f"embedded PostgreSQL under {self.root} ({self.admin.split('@')[-1]})")

    def fresh(self, tag: str) -> dict[str, str]:
        self._n += 1
        dsns = {}
        for part in ("journal", "ledger", "sandbox"):
            name = f"b{self._n:02d}_{tag}_{part}"
            ensure_database(self.admin, name)
            dsns[part] = with_database(self.admin, name)
        engine = make_engine(dsns["journal"], pool_size=1, application_name="bench")
        try:
            migrate(engine, "journal")
        finally:
            engine.dispose()
        return dsns

    def fresh_journal(self, tag: str, base: dict[str, str]) -> dict[str, str]:
        """A fresh journal beside an existing (read-only use) ledger and sandbox."""
        self._n += 1
        name = f"b{self._n:02d}_{tag}_journal"
        ensure_database(self.admin, name)
        dsns = dict(base, journal=with_database(self.admin, name))
        engine = make_engine(dsns["journal"], pool_size=1, application_name="bench")
        try:
            migrate(engine, "journal")
        finally:
            engine.dispose()
        return dsns

    def close(self) -> None:
        self.server.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Dataset:
    size: int
    dsns: dict[str, str]
    seed_seconds: float


def seeded(env: Env, tag: str, size: int) -> Dataset:
    dsns = env.fresh(tag)
    started = time.monotonic()
    manifest = seed_scenario(dsns["sandbox"], dsns["ledger"], size=size)
    seconds = time.monotonic() - started
    log(f"seeded {size} portfolios ({tag}) in {seconds:.1f} s")
    del manifest
    return Dataset(size, dsns, seconds)


# --------------------------------------------------------------------------- one job run


@dataclass
class Measurement:
    label: str
    size: int
    concurrency: int
    latency_ms: float
    dry_run: bool = False
    client_rate: float | None = None
    server_rate: float | None = None
    #: processes that executed payouts (the run's recorded ``workers``)
    processes: int = 1
    exit_code: int | None = None
    wall: float = 0.0
    peak_rss_mb: float = 0.0
    peak_rss_polled_mb: float = 0.0
    cpu_seconds: float = 0.0
    load_before: str = ""
    load_after: str = ""
    completed: int = 0
    states: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    plan_seconds: float | None = None
    exec_seconds: float | None = None
    p50: float | None = None
    p95: float | None = None
    sandbox: dict[str, Any] = field(default_factory=dict)
    failures_429: int = 0
    transient_429_attempts: int = 0
    pyspy: str | None = None
    log_path: str = ""
    sandbox_cpu_seconds: float | None = None
    rss_at_plan_end_mb: float | None = None
    pg_waits: dict[str, int] = field(default_factory=dict)
    pg_samples: int = 0

    # derived ----------------------------------------------------------------------------------
    @property
    def api_total(self) -> int:
        return int(self.sandbox.get("total", 0))

    @property
    def api_ok(self) -> int:
        return self.api_total - int(self.sandbox.get("by_status", {}).get("429", 0))

    @property
    def exec_calls(self) -> int:
        routes = self.sandbox.get("by_route", {})
        skip = ("GET /portfolios/", "POST /auth/login/", "POST /auth/refresh-token/", "GET /users/{id}")
        return sum(v for k, v in routes.items() if k not in skip)

    @property
    def payouts_per_s(self) -> float:
        return self.completed / self.wall if self.wall else 0.0

    @property
    def exec_payouts_per_s(self) -> float | None:
        return self.completed / self.exec_seconds if self.exec_seconds else None

    @property
    def calls_per_s(self) -> float:
        return self.api_total / self.wall if self.wall else 0.0

    @property
    def exec_calls_per_s(self) -> float | None:
        return self.exec_calls / self.exec_seconds if self.exec_seconds else None

    @property
    def calls_per_payout(self) -> float | None:
        return self.api_total / self.completed if self.completed else None


#: ``--workers``: processes executing payouts in every job run (None: the job's default, [run] workers = auto)
WORKERS: list[int | None] = [None]


def write_config(
    path: Path, dsns: dict[str, str], base_url: str, concurrency: int, report_dir: Path, client_rate: float | None
) -> None:
    rate = f"rate_limit_per_second = {client_rate}\n" if client_rate else ""
    path.write_text(
        f"""[database]
journal_dsn = "{dsns["journal"]}"
ledger_dsn = "{dsns["ledger"]}"
sandbox_dsn = "{dsns["sandbox"]}"

[investsuite]
base_url = "{base_url}"
access_key_id = "{DEFAULT_ACCESS_KEY_ID}"
secret_access_key = "{DEFAULT_SECRET_ACCESS_KEY}"
{rate}
[run]
concurrency = {concurrency}
report_dir = "{report_dir}"
progress_interval_seconds = 10.0
""",
        encoding="utf-8",
    )


def run_job(
    env: Env,
    data: Dataset,
    sandbox: SandboxProcess,
    *,
    label: str,
    concurrency: int,
    latency_ms: float,
    dry_run: bool = False,
    client_rate: float | None = None,
    server_rate: float | None = None,
    pyspy_after: float | None = None,
    extra_faults: dict[str, Any] | None = None,
    workers: int | None = None,
    run_args: tuple[str, ...] = (),
) -> Measurement:
    m = Measurement(label, data.size, concurrency, latency_ms, dry_run, client_rate, server_rate)
    work = env.root / f"{label}-{int(time.time() * 1000)}"
    work.mkdir()
    config = work / "batch.toml"
    write_config(config, data.dsns, sandbox.base_url, concurrency, work / "reports", client_rate)
    faults: dict[str, Any] = {"latency_ms": latency_ms}
    if server_rate:
        faults["rate_limit_per_second"] = server_rate
    faults.update(extra_faults or {})
    sandbox.admin.set_faults(**faults)
    sandbox.admin.reset_stats()
    command = [
        PYTHON,
        "-m",
        "batch",
        "--config",
        str(config),
        "--log-level",
        "INFO",
        "run",
        "--date",
        BUSINESS_DATE,
        "--trigger",
        "test",
        *run_args,
    ]
    if dry_run:
        command.append("--dry-run")
    workers = WORKERS[0] if workers is None else workers
    if workers is not None:
        command += ["--workers", str(workers)]
    m.log_path = str(work / "job.log")
    m.load_before = load()
    sandbox_cpu = _cpu(sandbox.pid)
    log(
        f"{label}: N={data.size} c={concurrency} latency={latency_ms} ms"
        f"{' dry-run' if dry_run else ''}{f' client-rate={client_rate}' if client_rate else ''}"
        f"{f' server-rate={server_rate}' if server_rate else ''} (load {m.load_before})"
    )
    env_vars = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    usage_file = work / "usage.json"
    launcher = [PYTHON, str(Path(__file__).with_name("launch.py")), str(usage_file)]
    with open(m.log_path, "wb") as out:
        proc = subprocess.Popen(launcher + command, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env_vars)
    peak = [0]
    stop = threading.Event()

    def poll() -> None:
        try:
            p = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    # the job's processes: the launcher's descendants (the planner and its workers)
                    rss = sum(c.memory_info().rss for c in p.children(recursive=True))
                except psutil.Error:
                    break
                peak[0] = max(peak[0], rss)
                stop.wait(0.2)
        except psutil.Error:
            pass

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    dbnames = {part: urlsplit(data.dsns[part]).path.lstrip("/") for part in ("journal", "ledger", "sandbox")}

    def pg_sample() -> None:
        """What the job's and sandbox's PostgreSQL backends are doing (pg_stat_activity every 0.25 s)."""
        try:
            with psycopg.connect(libpq(env.admin), autocommit=True) as conn:
                while not stop.wait(0.25):
                    rows = conn.execute(
                        "SELECT datname, state, coalesce(wait_event_type || ':' || wait_event, 'CPU') "
                        "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = ANY(%s) "
                        "AND state <> 'idle'",
                        (list(dbnames.values()),),
                    ).fetchall()
                    m.pg_samples += 1
                    names = {v: k for k, v in dbnames.items()}
                    for datname, state, wait in rows:
                        key = f"{names.get(datname, datname)} {state} {wait}"
                        m.pg_waits[key] = m.pg_waits.get(key, 0) + 1
        except psycopg.Error:
            pass

    threading.Thread(target=pg_sample, daemon=True).start()

    def plan_watch() -> None:
        """Peak RSS up to the moment the plan is recorded (streaming planning should keep this flat in N)."""
        try:
            with psycopg.connect(libpq(data.dsns["journal"]), autocommit=True) as conn:
                while not stop.wait(0.5):
                    row = conn.execute("SELECT bool_or(planned_at IS NOT NULL) FROM batch.runs").fetchone()
                    if row and row[0]:
                        m.rss_at_plan_end_mb = peak[0] / 1024.0 / 1024.0
                        return
        except psycopg.Error:
            pass

    threading.Thread(target=plan_watch, daemon=True).start()
    spy: subprocess.Popen[bytes] | None = None
    if pyspy_after is not None and shutil.which("py-spy", path=str(Path(PYTHON).parent)):

        def start_spy() -> None:
            nonlocal spy
            if stop.wait(pyspy_after):
                return
            target = work / "pyspy.txt"
            m.pyspy = str(target)
            try:
                job_pid = psutil.Process(proc.pid).children()[0].pid  # the planner, not the launcher
            except (psutil.Error, IndexError):
                return
            spy = subprocess.Popen(
                [
                    str(Path(PYTHON).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(job_pid),
                    "--format",
                    "raw",
                    "--rate",
                    "50",
                    "--nonblocking",
                    "--gil",
                    "--threads",
                    "-o",
                    str(target),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        threading.Thread(target=start_spy, daemon=True).start()
    _, status, _launcher_usage = os.wait4(proc.pid, 0)
    m.wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    poller.join(timeout=2)
    if spy is not None:
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
    m.exit_code = proc.returncode
    usage = json.loads(usage_file.read_text(encoding="utf-8")) if usage_file.exists() else {}
    m.peak_rss_mb = usage.get("maxrss_kb", 0) / 1024.0
    m.peak_rss_polled_mb = peak[0] / 1024.0 / 1024.0
    m.cpu_seconds = usage.get("cpu_seconds", 0.0)
    after_cpu = _cpu(sandbox.pid)
    if sandbox_cpu is not None and after_cpu is not None:
        m.sandbox_cpu_seconds = after_cpu - sandbox_cpu
    m.load_after = load()
    m.sandbox = sandbox.admin.stats()
    sandbox.admin.set_faults()
    collect(m, data.dsns["journal"])
    log(
        f"{label}: exit {m.exit_code} in {m.wall:.1f} s, completed {m.completed}, "
        f"states {m.states}, API {m.api_total}, peak RSS {m.peak_rss_mb:.0f} MB (load {m.load_after})"
    )
    if m.exit_code not in (0, 3):
        tail = Path(m.log_path).read_text(errors="replace")[-3000:]
        log(f"{label}: job log tail:\n{tail}")
    return m


def _cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def collect(m: Measurement, journal_dsn: str) -> None:
    with psycopg.connect(libpq(journal_dsn)) as conn:
        m.states = {str(s): int(n) for s, n in conn.execute("SELECT state, count(*) FROM batch.payouts GROUP BY 1")}
        m.completed = m.states.get("COMPLETED", 0)
        m.decisions = {
            str(d): int(n) for d, n in conn.execute("SELECT decision, count(*) FROM batch.decisions GROUP BY 1")
        }
        row = conn.execute(
            "SELECT details FROM batch.audit_log WHERE action = 'run.planned' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row:
            try:
                m.plan = json.loads(row[0])
            except (TypeError, ValueError):
                m.plan = {"raw": str(row[0])[:300]}
        row = conn.execute(
            "SELECT extract(epoch FROM planned_at - started_at), extract(epoch FROM finished_at - planned_at),"
            " (parameters ->> 'workers')::int FROM batch.runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        if row and row[0] is not None:
            m.plan_seconds = float(row[0])
        if row and row[2] is not None:
            m.processes = int(row[2])
        row = conn.execute(
            """
            WITH firsts AS (
                SELECT p.id, p.completed_at, min(a.intent_at) AS first_intent
                FROM batch.payouts p JOIN batch.step_attempts a ON a.payout_id = p.id
                WHERE p.state = 'COMPLETED' GROUP BY p.id, p.completed_at)
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - first_intent)),
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - first_intent)),
                   extract(epoch FROM max(completed_at) - min(first_intent))
            FROM firsts
            """
        ).fetchone()
        if row and row[0] is not None:
            m.p50, m.p95, m.exec_seconds = float(row[0]), float(row[1]), float(row[2])
        ((failures_429,),) = conn.execute(
            "SELECT count(*) FROM batch.payouts WHERE state IN ('NEEDS_ATTENTION', 'CANCELLED') "
            "AND coalesce(last_error, '') LIKE '%429%'"
        ).fetchall()
        m.failures_429 = int(failures_429)
        ((attempts_429,),) = conn.execute(
            "SELECT count(*) FROM batch.step_attempts WHERE detail::text LIKE '%HTTP 429%'"
        ).fetchall()
        m.transient_429_attempts = int(attempts_429)


# --------------------------------------------------------------------------- report


def with_sandbox(data: Dataset, pool_size: int) -> SandboxProcess:
    return SandboxProcess(data.dsns["sandbox"], pool_size=pool_size)  # started by `with`
