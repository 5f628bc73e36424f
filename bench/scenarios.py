"""The paying scenarios of ``bench.py``: throughput (with the concurrency-1 baseline), capacity (the job,
then the load generator alone), rate limit, dry run and memory. Each returns its measurements by name."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import psutil

from bench.harness import Dataset, Env, Measurement, load, log, run_job, seeded, with_sandbox
from bench.loadgen import portfolios_from_db, run_load


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
