"""Benchmark scenario "book": ``batch reconcile --book`` over a seeded book at injected API latency.

Seeds N portfolios (every one REAL_MONEY but the paper-money case), injects ``--latency-ms`` per
sandbox request, then runs the full-book cash reconciliation as the job does it (a subprocess through
``launch.py``, so its peak RSS is its own) and reports wall time, InvestSuite calls (the sandbox's
own count), ledger queries (the reconcile's own count), breaks found and peak RSS.

    .venv/bin/python bench/book.py --size 100000 --latency-ms 100
    .venv/bin/python bench/bench.py --scenario book --sizes 100000 --latency-ms 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.harness import PYTHON, Env, libpq, load, log, seeded, with_sandbox, write_config  # noqa: E402


def scenario_book(env: Env, size: int, latency_ms: float, pool_size: int = 20) -> dict[str, Any]:
    """Seed ``size`` portfolios, reconcile the whole book once, return the figures."""
    data = seeded(env, f"book{size}", size)
    # a freshly seeded table is not vacuumed yet (a production one is): its index-only scans need the
    # visibility map, or every deep page of the listing reads the heap
    with psycopg.connect(libpq(data.dsns["sandbox"]), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE sandbox.portfolios")
    work = env.root / f"book-{size}-{int(time.time())}"
    work.mkdir()
    with with_sandbox(data, pool_size) as sandbox:
        config = work / "batch.toml"
        write_config(config, data.dsns, sandbox.base_url, 48, work / "reports", None)
        sandbox.admin.set_faults(latency_ms=latency_ms)
        sandbox.admin.reset_stats()
        usage = work / "usage.json"
        command = [PYTHON, str(Path(__file__).with_name("launch.py")), str(usage)]
        command += [PYTHON, "-m", "batch", "--config", str(config), "--log-level", "WARNING"]
        command += ["reconcile", "--book", "--format", "json"]
        log(f"book: N={size} latency={latency_ms} ms (load {load()})")
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT), env=dict(os.environ), check=False)
        wall = time.monotonic() - started
        stats = sandbox.admin.stats()
    if done.returncode not in (0, 3):
        raise RuntimeError(f"reconcile --book exited {done.returncode}: {done.stderr[-2000:]}")
    document = json.loads(done.stdout)
    used = json.loads(usage.read_text(encoding="utf-8"))
    result = {
        "size": size,
        "latency_ms": latency_ms,
        "exit_code": done.returncode,
        "wall_s": round(wall, 1),
        "checked": document["checked"],
        "breaks": len(document["breaks"]),
        "break_types": document["break_types"],
        "pages": document["stats"]["pages"],
        "investsuite_calls": document["stats"]["investsuite_calls"],
        "sandbox_requests": stats.get("total") if isinstance(stats, dict) else None,
        "ledger_queries": document["stats"]["ledger_queries"],
        "reconcile_s": document["stats"]["seconds"],
        "peak_rss_mb": round(used["maxrss_kb"] / 1024, 1),
        "cpu_s": round(used["cpu_seconds"], 1),
        "load_after": load(),
    }
    log(f"book: {json.dumps(result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the full-book cash reconciliation.")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    env = Env(keep=args.keep)
    try:
        print(json.dumps(scenario_book(env, args.size, args.latency_ms), indent=1))
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
