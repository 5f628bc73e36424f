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
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from batch.settings import RunSettings  # noqa: E402
from bench.harness import WORKERS, Dataset, Env, Measurement, load, log  # noqa: E402
from bench.scenarios import (  # noqa: E402
    scenario_capacity,
    scenario_dryrun,
    scenario_memory,
    scenario_ratelimit,
    scenario_throughput,
)
from bench.table import HEADER, details, fmt, row, summarize_pyspy  # noqa: E402

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
