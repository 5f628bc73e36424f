"""Benchmark of the nightly payout job (issue 6): throughput, API capacity, calls per payout, memory,
rate limit and dry run, against the local sandbox and an embedded PostgreSQL of its own.

    .venv/bin/python bench/bench.py --quick
    .venv/bin/python bench/bench.py --sizes 10000,20000,100000 --latency-ms 100 --baseline 300 --scenario all

Every measurement gets fresh databases (journal, ledger, sandbox) on a private embedded PostgreSQL
under /tmp; the job runs as a subprocess (``python -m batch --config <toml> run --date 2026-11-20``)
started through ``launch.py``, so its peak RSS is its own (``os.wait4`` ru_maxrss of its largest
process, see launch.py for why it needs a launcher; psutil polls the sum of its processes). See
bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from batch.settings import RunSettings  # noqa: E402

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


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


HEADER = (
    f"{'label':<18} {'N':>7} {'proc':>4} {'conc':>4} {'lat':>4} {'wall s':>7} {'plan s':>6} {'exec s':>7} {'paid':>6} "
    f"{'pay/s':>6} {'exec pay/s':>10} {'API/s':>6} {'execAPI/s':>9} {'calls/pay':>9} {'p50 s':>6} {'p95 s':>6} "
    f"{'RSS MB':>6} {'cpu s':>6} {'x c1':>6} {'load':>15}"
)


def row(m: Measurement, baseline: Measurement | None) -> str:
    ratio = None
    if baseline is not None and baseline.payouts_per_s and m.completed:
        ratio = m.payouts_per_s / baseline.payouts_per_s
    return (
        f"{m.label:<18} {m.size:>7} {m.processes:>4} {m.concurrency:>4} {m.latency_ms:>4.0f} {m.wall:>7.1f} "
        f"{fmt(m.plan_seconds):>6} "
        f"{fmt(m.exec_seconds):>7} {m.completed:>6} {m.payouts_per_s:>6.1f} {fmt(m.exec_payouts_per_s):>10} "
        f"{m.calls_per_s:>6.1f} {fmt(m.exec_calls_per_s):>9} {fmt(m.calls_per_payout, '.3f'):>9} "
        f"{fmt(m.p50, '.3f'):>6} {fmt(m.p95, '.3f'):>6} {m.peak_rss_mb:>6.0f} {m.cpu_seconds:>6.0f} "
        f"{fmt(ratio):>6} {m.load_before + '>' + m.load_after.split('/')[0]:>15}"
    )


def details(m: Measurement) -> str:
    routes = ", ".join(f"{k}={v}" for k, v in sorted(m.sandbox.get("by_route", {}).items()))
    statuses = ", ".join(f"{k}={v}" for k, v in sorted(m.sandbox.get("by_status", {}).items()))
    plan = {k: m.plan.get(k) for k in ("candidates", "pages", "ledger_queries") if k in m.plan}
    return (
        f"  {m.label}: exit={m.exit_code} states={m.states} decisions={m.decisions}\n"
        f"    sandbox requests total={m.api_total} [{routes}] status [{statuses}]\n"
        f"    plan {plan}  (ledger queries per page = "
        f"{fmt((m.plan.get('ledger_queries') or 0) / m.plan['pages'] if m.plan.get('pages') else None, '.2f')})\n"
        f"    peak RSS wait4={m.peak_rss_mb:.1f} MB psutil={m.peak_rss_polled_mb:.1f} MB (until the plan was "
        f"recorded: {fmt(m.rss_at_plan_end_mb)} MB); job CPU {m.cpu_seconds:.1f} s "
        f"over {m.wall:.1f} s wall ({m.cpu_seconds / m.wall * 100 if m.wall else 0:.0f}% of one core), "
        f"sandbox CPU {fmt(m.sandbox_cpu_seconds)} s; CPU per paid payout: job "
        f"{fmt(m.cpu_seconds / m.completed * 1000 if m.completed else None)} ms, sandbox "
        f"{fmt(m.sandbox_cpu_seconds / m.completed * 1000 if m.completed and m.sandbox_cpu_seconds else None)} ms; "
        f"job CPU per candidate "
        f"{fmt(m.cpu_seconds / m.plan['candidates'] * 1000 if m.plan.get('candidates') else None, '.2f')} ms; "
        f"429 attempts in journal={m.transient_429_attempts}, payouts stopped by 429={m.failures_429}\n"
        f"    log {m.log_path}"
        + (f"\n    py-spy {m.pyspy}" if m.pyspy else "")
        + (
            "\n    PostgreSQL non-idle backends, mean per sample ("
            + str(m.pg_samples)
            + " samples): "
            + ", ".join(
                f"{k}={v / m.pg_samples:.2f}" for k, v in sorted(m.pg_waits.items(), key=lambda kv: -kv[1])[:10]
            )
            if m.pg_samples
            else ""
        )
    )


def summarize_pyspy(path: str, top: int = 25) -> str:
    """Self and inclusive time per function from a py-spy raw (collapsed) file, over all threads."""
    p = Path(path)
    if not p.exists():
        return f"(no py-spy output at {path})"
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in p.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith("thread (") and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count
    lines = [f"  py-spy samples (all threads, idle included): {total}"]
    lines.append("  top self (leaf) frames:")
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {count / total * 100:5.1f}%  {name}")
    interesting = (
        "journal.py",
        "ledger.py",
        "investsuite.py",
        "httpx",
        "httpcore",
        "json",
        "sqlalchemy",
        "psycopg",
        "structlog",
        "execute.py",
        "plan.py",
        "pydantic",
        "report.py",
        "ssl",
        "socket",
    )
    lines.append("  inclusive time of selected frames (non-idle share matters; threads waiting on I/O count too):")
    for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1]):
        if any(k in name for k in interesting) and count / total > 0.02:
            lines.append(f"    {count / total * 100:5.1f}%  {name}")
    return "\n".join(lines[: top + 60])


# --------------------------------------------------------------------------- scenarios


def with_sandbox(data: Dataset, pool_size: int) -> SandboxProcess:
    return SandboxProcess(data.dsns["sandbox"], pool_size=pool_size)  # started by `with`


def scenario_throughput(env: Env, args: argparse.Namespace, results: list[Measurement]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base_data = seeded(env, "base", args.baseline)
    with with_sandbox(base_data, args.pool_size) as sandbox:
        baseline = run_job(
            env, base_data, sandbox, label="baseline-c1", concurrency=1, latency_ms=args.latency_ms, workers=1
        )
    results.append(baseline)
    out["baseline"] = baseline
    for size in [s for s in args.sizes if s <= args.throughput_max]:
        data = seeded(env, f"tp{size}", size)
        with with_sandbox(data, args.pool_size) as sandbox:
            m = run_job(
                env,
                data,
                sandbox,
                label=f"throughput-c{args.concurrency}",
                concurrency=args.concurrency,
                latency_ms=args.latency_ms,
                pyspy_after=args.pyspy_after,
            )
        results.append(m)
        out[f"n{size}"] = m
    return out


def scenario_capacity(env: Env, args: argparse.Namespace, results: list[Measurement]) -> dict[str, Any]:
    import asyncio  # noqa: PLC0415

    from bench.loadgen import portfolios_from_db, run_load  # noqa: PLC0415

    data = seeded(env, "cap", args.capacity_size)
    out: dict[str, Any] = {}
    with with_sandbox(data, args.pool_size) as sandbox:
        m = run_job(
            env,
            data,
            sandbox,
            label=f"capacity-c{args.concurrency}",
            concurrency=args.concurrency,
            latency_ms=0,
            pyspy_after=args.pyspy_after,
        )
        results.append(m)
        out["job"] = m
        ids = portfolios_from_db(data.dsns["sandbox"], limit=5000)
        loads = []
        for conc in sorted({args.concurrency, 16}):
            sandbox.admin.reset_stats()
            before = load()
            cpu_before = psutil.Process(sandbox.pid).cpu_times() if sandbox.pid else None
            result = asyncio.run(
                run_load(sandbox.base_url, ids, concurrency=conc, seconds=args.loadgen_seconds, listing_every=100)
            )
            if cpu_before is not None and sandbox.pid:
                cpu_after = psutil.Process(sandbox.pid).cpu_times()
                used = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
                result["sandbox_cpu_share"] = round(used / (result["seconds"] + args_warmup()), 2)
            result["load"] = f"{before} -> {load()}"
            log(
                f"loadgen c={conc}: {result['requests_per_second']} req/s, {result['payouts_per_second']} payouts/s, "
                f"status {result['by_status']}, latency {result['latency_ms']}, errors {result['errors'][:2]}"
            )
            loads.append(result)
        out["loadgen"] = loads
    return out


def args_warmup() -> float:
    return 2.0


def scenario_ratelimit(env: Env, args: argparse.Namespace, results: list[Measurement]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rate = args.rate_limit
    for mode, client_rate in (("429-only", None), ("client-limit", round(rate * 0.95, 1))):
        data = seeded(env, f"rl{mode.replace('-', '')}", args.ratelimit_size)
        with with_sandbox(data, args.pool_size) as sandbox:
            m = run_job(
                env,
                data,
                sandbox,
                label=f"ratelimit-{mode}",
                concurrency=args.concurrency,
                latency_ms=0,
                server_rate=rate,
                client_rate=client_rate,
            )
        results.append(m)
        out[mode] = m
    return out


def scenario_dryrun(
    env: Env, args: argparse.Namespace, results: list[Measurement], cache: dict[int, Dataset]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in args.sizes:
        if size not in cache:
            cache[size] = seeded(env, f"ro{size}", size)
        data = cache[size]
        dsns = env.fresh_journal(f"dry{size}", data.dsns)
        run_data = Dataset(size, dsns, data.seed_seconds)
        with with_sandbox(run_data, args.pool_size) as sandbox:
            m = run_job(
                env,
                run_data,
                sandbox,
                label="dryrun",
                concurrency=args.concurrency,
                latency_ms=0,
                dry_run=True,
                pyspy_after=args.pyspy_after if size == max(args.sizes) else None,
            )
        results.append(m)
        out[f"n{size}"] = m
    return out


def scenario_memory(env: Env, args: argparse.Namespace, results: list[Measurement]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in args.memory_sizes:
        data = seeded(env, f"mem{size}", size)
        with with_sandbox(data, args.pool_size) as sandbox:
            m = run_job(env, data, sandbox, label="memory-run", concurrency=args.concurrency, latency_ms=0)
        results.append(m)
        out[f"n{size}"] = m
    return out


# --------------------------------------------------------------------------- main


def verdicts(args: argparse.Namespace, found: dict[str, dict[str, Any]], results: list[Measurement]) -> list[str]:
    lines: list[str] = []
    tp = found.get("throughput")
    if tp:
        base: Measurement = tp["baseline"]
        for key, m in tp.items():
            if key == "baseline" or not base.payouts_per_s:
                continue
            ratio = m.payouts_per_s / base.payouts_per_s
            exec_ratio = (m.exec_payouts_per_s or 0) / (base.exec_payouts_per_s or 1)
            lines.append(
                f"throughput N={m.size} {m.processes} process(es) x c={m.concurrency} @{args.latency_ms:.0f} ms: "
                f"{m.payouts_per_s:.1f} payouts/s "
                f"vs c=1 {base.payouts_per_s:.2f}/s -> x{ratio:.1f} "
                f"(target >= 30: {'MET' if ratio >= 30 else 'MISSED'}); "
                f"execution phase only: x{exec_ratio:.1f}"
            )
    cap = found.get("capacity")
    if cap:
        job: Measurement = cap["job"]
        best = max((r["requests_per_second"] for r in cap["loadgen"]), default=0)
        job_rate = job.exec_calls_per_s or 0
        lines.append(
            f"capacity: job {job_rate:.0f} calls/s in its execution phase ({job.calls_per_s:.0f}/s over the whole run) "
            f"vs loadgen {best:.0f} req/s -> fraction {job_rate / best if best else 0:.2f} "
            f"(whole run {job.calls_per_s / best if best else 0:.2f})"
        )
    for m in results:
        if m.dry_run or not m.completed:
            continue
        cpp = m.calls_per_payout or 0
        lines.append(
            f"calls per paid withdrawal {m.label} N={m.size}: {cpp:.3f} "
            f"(target <= 4: {'MET' if cpp <= 4 else 'MISSED'}); "
            f"ledger queries {m.plan.get('ledger_queries')} for {m.plan.get('pages')} pages"
        )
        break
    rl = found.get("ratelimit")
    if rl:
        for mode, m in rl.items():
            ok = m.api_ok
            refused = int(m.sandbox.get("by_status", {}).get("429", 0))
            # accepted per-payout calls only: a 429 is counted under its route too
            sustained = ((m.exec_calls - refused) / m.exec_seconds) if m.exec_seconds else 0
            frac = sustained / args.rate_limit
            lines.append(
                f"rate limit R={args.rate_limit:.0f}/s {mode}: sustained {sustained:.1f} accepted calls/s in execution "
                f"({frac * 100:.0f}% of R, target >= 90%: {'MET' if frac >= 0.9 else 'MISSED'}); whole run "
                f"{ok / m.wall:.1f}/s; 429 answers {refused}; payouts stopped by 429 "
                f"{m.failures_429}; states {m.states}"
            )
    dr = found.get("dryrun")
    if dr:
        for m in dr.values():
            lines.append(
                f"dry run N={m.size}: {m.wall:.1f} s wall (plan {fmt(m.plan_seconds)} s), exit {m.exit_code}, "
                f"peak RSS {m.peak_rss_mb:.0f} MB"
                + (f" (target < 60 s: {'MET' if m.wall < 60 else 'MISSED'})" if m.size >= 100000 else "")
            )
        sizes = sorted(dr.values(), key=lambda x: x.size)
        if len(sizes) >= 2:
            small, large = sizes[0], sizes[-1]
            r = large.peak_rss_mb / small.peak_rss_mb if small.peak_rss_mb else 0
            lines.append(
                f"memory (dry run) N={large.size} vs N={small.size}: {large.peak_rss_mb:.0f} / "
                f"{small.peak_rss_mb:.0f} MB = x{r:.2f} (target <= 1.3: {'MET' if r <= 1.3 else 'MISSED'})"
            )
    mem = found.get("memory")
    runs = sorted(
        (m for m in results if not m.dry_run and m.completed and m.label != "baseline-c1"), key=lambda x: x.size
    )
    if mem:
        runs = sorted(mem.values(), key=lambda x: x.size)
    runs = [m for m in runs if m.exit_code in (0, 3)]  # a failed run's peak says nothing
    if len(runs) >= 2 and runs[0].size != runs[-1].size:
        small, large = runs[0], runs[-1]
        r = large.peak_rss_mb / small.peak_rss_mb if small.peak_rss_mb else 0
        lines.append(
            f"memory (paying runs) N={large.size} vs N={small.size}: {large.peak_rss_mb:.0f} / "
            f"{small.peak_rss_mb:.0f} MB = x{r:.2f} (target <= 1.3: {'MET' if r <= 1.3 else 'MISSED'})"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the nightly payout job (issue 6).")
    parser.add_argument("--sizes", default="10000,20000,100000")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=RunSettings.model_fields["concurrency"].default,
        help="the job's [run] concurrency (default: its own default)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="the job's --workers (default: its own default, auto)"
    )
    parser.add_argument("--baseline", type=int, default=300, help="portfolios of the concurrency-1 baseline")
    parser.add_argument(
        "--scenario",
        default="all",
        help="comma list of throughput, capacity, ratelimit, dryrun, memory, book (bench/book.py),"
        " deposits (bench/deposits.py), or all",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes to validate the harness")
    parser.add_argument("--throughput-max", type=int, default=20000, help="largest N run with injected latency")
    parser.add_argument("--capacity-size", type=int, default=5000)
    parser.add_argument("--loadgen-seconds", type=float, default=20.0)
    parser.add_argument("--rate-limit", type=float, default=100.0, help="sandbox rate limit R (requests/s)")
    parser.add_argument("--ratelimit-size", type=int, default=1000)
    parser.add_argument(
        "--memory-sizes", default=None, help="N of the paying memory runs (default: smallest and largest of --sizes)"
    )
    parser.add_argument("--pool-size", type=int, default=20, help="sandbox DB pool size")
    parser.add_argument(
        "--pyspy-after", type=float, default=None, help="py-spy record the job from this many seconds in"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, reports, py-spy output)")
    parser.add_argument("--json", type=Path, help="write the measurements as JSON here")
    args = parser.parse_args(argv)
    WORKERS[0] = args.workers
    if args.quick:
        args.sizes = "2000"
        args.baseline = min(args.baseline, 200)
        args.capacity_size = min(args.capacity_size, 2000)
        args.ratelimit_size = min(args.ratelimit_size, 400)
        args.loadgen_seconds = min(args.loadgen_seconds, 8.0)
        args.memory_sizes = args.memory_sizes or "500,2000"
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    args.memory_sizes = (
        [int(s) for s in args.memory_sizes.split(",") if s]
        if args.memory_sizes
        else sorted({min(args.sizes), max(args.sizes)})
    )
    chosen = (
        {"throughput", "capacity", "ratelimit", "dryrun", "memory"}
        if args.scenario == "all"
        else set(args.scenario.split(","))
    )
    log(
        f"bench on {platform.node()} ({os.cpu_count()} CPUs), python {platform.python_version()}, load {load()}; "
        f"scenarios {sorted(chosen)}, sizes {args.sizes}, latency {args.latency_ms} ms, concurrency {args.concurrency}"
    )
    env = Env(keep=args.keep or args.pyspy_after is not None)
    results: list[Measurement] = []
    found: dict[str, dict[str, Any]] = {}
    cache: dict[int, Dataset] = {}
    try:
        for name in ("throughput", "capacity", "ratelimit", "dryrun", "memory"):
            if name not in chosen:
                continue
            try:
                if name == "throughput":
                    found[name] = scenario_throughput(env, args, results)
                elif name == "capacity":
                    found[name] = scenario_capacity(env, args, results)
                elif name == "ratelimit":
                    found[name] = scenario_ratelimit(env, args, results)
                elif name == "dryrun":
                    found[name] = scenario_dryrun(env, args, results, cache)
                elif name == "memory":
                    found[name] = scenario_memory(env, args, results)
            except Exception as exc:  # report what we have
                log(f"scenario {name} failed: {type(exc).__name__}: {exc}")
        if "deposits" in chosen:  # the deposit flow (issue 16) at the same latency, in the same table
            from bench.deposits import scenario_deposits  # noqa: PLC0415

            found["deposits"] = scenario_deposits(env, args, results)
        if "book" in chosen:  # the full-book cash reconciliation (issue 13), one N per --sizes
            from bench.book import scenario_book  # noqa: PLC0415

            found["book"] = {f"n{size}": scenario_book(env, size, args.latency_ms) for size in args.sizes}
            print("== book\n" + json.dumps(found["book"], indent=1))
    finally:
        baseline = found.get("throughput", {}).get("baseline")
        print()
        print(f"== results (load average 1/5/15 min now {load()}; {os.cpu_count()} CPUs shared)")
        print(HEADER)
        for m in results:
            print(row(m, baseline if m.latency_ms == (baseline.latency_ms if baseline else -1) else None))
        print()
        print("== details")
        for m in results:
            print(details(m))
        cap = found.get("capacity")
        if cap:
            print("== loadgen (plain asyncio raw-socket client, same call mix, 1 listing page per 100 payouts)")
            for r in cap["loadgen"]:
                print("  " + json.dumps(r))
        print()
        print("== targets")
        for line in verdicts(args, found, results):
            print("  " + line)
        for m in results:
            if m.pyspy:
                print(f"\n== py-spy of {m.label} N={m.size}")
                print(summarize_pyspy(m.pyspy))
        if args.json:
            args.json.write_text(json.dumps([m.__dict__ for m in results], default=str, indent=1))
        env.close()
        if env.keep:
            print(f"\n(kept {env.root})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
