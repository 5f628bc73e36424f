"""Benchmark of the audit chain's verification (issue 15): incremental (one night's rows after the last
checkpoint) against the length of the history, and the full verification's rate and memory.

    .venv/bin/python bench/audit_bench.py                       # histories of 0.1M, 1M and 10M rows
    .venv/bin/python bench/audit_bench.py --sizes 100000,1000000 --night 100000 --json audit.json

A private embedded PostgreSQL under /tmp gets a migrated journal. The synthetic chain is generated in
Python (every row hashed with the same hash version 2 the trigger computes, continuing from the head)
and loaded with COPY, the chain trigger bypassed for the load (``session_replication_role = replica``,
superuser): the rows are exactly what the trigger would have written, at ~10^5 rows/s instead of one
INSERT, one advisory lock and one trigger call per row. For each history length H:

1. extend the chain to H rows (COPY);
2. full verification (``verify_audit()`` whole chain, records a checkpoint at the head): time, rows/s,
   peak RSS of the verifying process;
3. ``--repeat`` times (default 3): append one night (``--night`` rows, default 100,000) and verify
   incrementally (``verify_audit(since_checkpoint=True)``, as a run does): time, peak RSS;
4. one more night, verified through the CLI (``batch audit verify``): wall clock including the
   interpreter's start and imports.

Every verification runs in its own process started through ``launch.py`` (its own ``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from batch.adapters.migrations import migrate  # noqa: E402
from batch.adapters.postgres import EmbeddedServer, ensure_database, make_engine, with_database  # noqa: E402
from batch.domain.audit import GENESIS_HASH  # noqa: E402

PYTHON = sys.executable
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
ACTIONS = ("decision.recorded", "step.ledger_post.ok", "step.record_transaction.ok", "step.update_portfolio.ok")
COLUMNS = (
    "seq, at, actor, action, run_id, payout_id, portfolio_id, details, prev_hash, hash, hash_version,"
    " application_name, display_name"
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def libpq(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


def _field(value: str | None) -> str:
    return "~" if value is None else f"{len(value)}:{value}"


def extend_chain(dsn: str, until: int) -> float:
    """Append synthetic rows (hash version 2, chained from the current head) until seq ``until``; seconds."""
    started = time.perf_counter()
    with psycopg.connect(libpq(dsn)) as conn:
        head = conn.execute("SELECT seq, hash FROM batch.audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
        conn.execute("SET session_replication_role = replica")  # the load bypasses the chain trigger
        conn.execute("SET synchronous_commit = off")
        sha256 = hashlib.sha256
        while seq < until:
            batch_end = min(until, seq + 200_000)
            with conn.cursor().copy(f"COPY batch.audit_log ({COLUMNS}) FROM STDIN") as copy:
                run_id = str(uuid.uuid4())
                payout_id = str(uuid.uuid4())
                for n in range(seq + 1, batch_end + 1):
                    if n % 100_000 == 0:
                        run_id = str(uuid.uuid4())
                    if n % 4 == 0:
                        payout_id = str(uuid.uuid4())
                    at = (EPOCH + timedelta(microseconds=n * 250)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    action = ACTIONS[n % 4]
                    portfolio = f"P{n:026d}"
                    details = (
                        f'{{"attempt":{n},"currency":"EUR","decision":"PAY","dry_run":false,'
                        f'"pay_amount":"{n % 9000 + 10}.25","reason":"PARTIAL","requested":"{n % 9000 + 10}.25"}}'
                    )
                    fields = (prev, str(n), at, "payout_job", "batch-journal", "nightly", action, run_id, payout_id)
                    text = "v2|" + "|".join(map(_field, (*fields, portfolio, details)))
                    digest = sha256(text.encode()).hexdigest()
                    copy.write_row(
                        (n, at, "payout_job", action, run_id, payout_id, portfolio, details, prev, digest, 2,
                         "batch-journal", "nightly")
                    )  # fmt: skip
                    prev = digest
            conn.commit()
            seq = batch_end
        conn.execute("RESET session_replication_role")
    return time.perf_counter() - started


def child(dsn: str, mode: str, processes: int) -> None:
    """In the measured process: one verification, its figures as one JSON line on stdout.

    ``parallel``: ``Journal.verify_full`` (what ``batch audit verify --full`` runs) with ``processes``
    processes, one segment of the chain each (issue 22).
    """
    from batch.adapters.journal import Journal  # noqa: PLC0415

    engine = make_engine(dsn, pool_size=1)
    try:
        journal = Journal(engine)
        started = time.perf_counter()
        if mode == "parallel":
            result = journal.verify_full(processes=processes)
        else:
            result = journal.verify_audit(since_checkpoint=mode == "incremental", record_checkpoint=True)
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    print(json.dumps({"seconds": seconds, "rows": result.rows, "ok": result.ok, "head": result.head_seq}))


def measured(out_dir: Path, command: list[str]) -> dict[str, Any]:
    """Run ``command`` through launch.py; its stdout JSON plus peak RSS (MB) and wall seconds."""
    usage = out_dir / f"usage-{uuid.uuid4().hex[:8]}.json"
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "launch.py"), str(usage), *command],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0,):
        raise RuntimeError(f"{command} exited {done.returncode}: {done.stdout}\n{done.stderr}")
    figures = json.loads(usage.read_text())
    last = done.stdout.strip().splitlines()[-1]
    parsed: dict[str, Any] = json.loads(last) if last.startswith("{") else {"stdout": last}
    return parsed | {"maxrss_mb": figures["maxrss_kb"] / 1024, "wall_seconds": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="history lengths (rows), ascending")
    parser.add_argument("--night", type=int, default=100_000, help="rows one night appends")
    parser.add_argument("--repeat", type=int, default=3, help="incremental verifications per history length")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the /tmp folder (the database)")
    parser.add_argument(
        "--processes", default="1,2", help="process counts of the parallel full verification (verify --full)"
    )
    parser.add_argument("--child", choices=["full", "incremental", "parallel"], help=argparse.SUPPRESS)
    parser.add_argument("--child-processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dsn, args.child, args.child_processes)
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="audit-bench-", dir="/tmp"))
    server = EmbeddedServer(root / "pg")
    admin = server.start()
    ensure_database(admin, "journal")
    dsn = with_database(admin, "journal")
    engine = make_engine(dsn, pool_size=1)
    migrate(engine, "journal")
    engine.dispose()
    log(f"embedded PostgreSQL under {root}; sizes {sizes}, one night = {args.night} rows")
    config = root / "batch.toml"
    config.write_text(f'[database]\njournal_dsn = "{dsn}"\nledger_dsn = "{dsn}"\nsandbox_dsn = "{dsn}"\n')
    results: list[dict[str, Any]] = []
    try:
        for size in sizes:
            with psycopg.connect(libpq(dsn)) as conn:
                ((max_seq,),) = conn.execute("SELECT coalesce(max(seq), 0) FROM batch.audit_log").fetchall()
                have = int(max_seq)
            load = extend_chain(dsn, size)
            log(f"history {size:,}: loaded {size - have:,} rows in {load:.1f} s ({(size - have) / load:,.0f} rows/s)")
            with psycopg.connect(libpq(dsn), autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE batch.audit_log")
                ((table_mb,),) = conn.execute("SELECT pg_total_relation_size('batch.audit_log') / 1048576.0").fetchall()
            full = measured(root, [PYTHON, __file__, "--child", "full", "--dsn", dsn])
            rate = full["rows"] / full["seconds"]
            log(f"  full: {full['rows']:,} rows in {full['seconds']:.2f} s = {rate:,.0f} rows/s")
            log(f"        peak RSS {full['maxrss_mb']:.0f} MB, ok={full['ok']}")
            parallel: dict[int, dict[str, Any]] = {}
            for processes in [int(p) for p in args.processes.split(",")]:
                command = [PYTHON, __file__, "--child", "parallel", "--child-processes", str(processes), "--dsn", dsn]
                parallel[processes] = measured(root, command)
                done = parallel[processes]
                per_core = done["rows"] / done["seconds"] / processes
                log(
                    f"  verify --full, {processes} process(es): {done['rows']:,} rows in {done['seconds']:.2f} s"
                    f" = {done['rows'] / done['seconds']:,.0f} rows/s ({per_core:,.0f} rows/s per process),"
                    f" ok={done['ok']}"
                )
            nights: list[dict[str, Any]] = []
            for _ in range(args.repeat):
                extend_chain(dsn, size + (len(nights) + 1) * args.night)
                nights.append(measured(root, [PYTHON, __file__, "--child", "incremental", "--dsn", dsn]))
                night = nights[-1]
                log(
                    f"  incremental ({args.night:,} new rows): {night['rows']:,} rows in {night['seconds']:.3f} s,"
                    f" peak RSS {night['maxrss_mb']:.0f} MB, ok={night['ok']}"
                )
            extend_chain(dsn, size + (args.repeat + 1) * args.night)
            cli = measured(root, [PYTHON, "-m", "batch", "--config", str(config), "audit", "verify"])
            log(f"  CLI `batch audit verify` ({args.night:,} new rows): {cli['wall_seconds']:.2f} s wall")
            log(f"        {cli['stdout']}")
            seconds = sorted(n["seconds"] for n in nights)
            results.append(
                {
                    "history_rows": size,
                    "table_mb": float(table_mb),
                    "load_rows_per_s": (size - have) / load if size > have else None,
                    "full": full,
                    "parallel_full": parallel,
                    "incremental": nights,
                    "incremental_median_s": seconds[len(seconds) // 2],
                    "incremental_max_s": seconds[-1],
                    "incremental_max_rss_mb": max(n["maxrss_mb"] for n in nights),
                    "cli_incremental_wall_s": cli["wall_seconds"],
                }
            )
            # the next history length continues from this chain
    finally:
        if args.json:
            args.json.write_text(json.dumps({"night": args.night, "results": results}, indent=2))
        server.stop(mode="fast")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print("| history rows | table | full verify | full rows/s | full peak RSS | incremental, one night (median / max) |"
          " incr. peak RSS | CLI incremental |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        full = r["full"]
        print(
            f"| {r['history_rows']:,} | {r['table_mb']:,.0f} MB | {full['seconds']:.1f} s"
            f" | {full['rows'] / full['seconds']:,.0f} | {full['maxrss_mb']:.0f} MB"
            f" | {r['incremental_median_s']:.2f} / {r['incremental_max_s']:.2f} s"
            f" | {r['incremental_max_rss_mb']:.0f} MB | {r['cli_incremental_wall_s']:.2f} s |"
        )
    print()
    print("| history rows | `verify --full` processes | seconds | rows/s | rows/s per process |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        for processes, done in r["parallel_full"].items():
            rate = done["rows"] / done["seconds"]
            print(
                f"| {r['history_rows']:,} | {processes} | {done['seconds']:.1f} | {rate:,.0f}"
                f" | {rate / processes:,.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
