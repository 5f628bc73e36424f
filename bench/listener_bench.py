"""The bus listener under a burst: throughput and event-to-completed latency at 100 ms API latency.

    .venv/bin/python bench/listener_bench.py [--events 1000] [--latency-ms 100] [--bus rabbitmq]
                                             [--concurrency 32] [--kill-at 0.4] [--paced-rate 0]

Everything runs on this machine: an embedded PostgreSQL (journal, ledger, sandbox databases), the sandbox
answering every request after ``--latency-ms`` and publishing InvestSuite's events to the bus (RabbitMQ or
Mosquitto on 127.0.0.1), and ``batch listen`` as a child process.

1. **burst + SIGKILL**: ``--events`` portfolios get a divest amount as fast as the sandbox's admin endpoint
   takes them (the sandbox publishes one withdrawal event each); once ``--kill-at`` of them are paid the
   listener is SIGKILLed and started again; the run ends when every portfolio is paid. Checked: each
   portfolio paid exactly once in the journal, the ledger, InvestSuite's transactions and its events.
2. **backlog** (``--backlog``): every event queued before the listener(s) start: how fast they drain it
   (the listener's capacity here; latency is then mostly the wait in the queue).
3. **paced** (``--paced-rate`` events/s, 0 = skip): the same number of events spread over time, no kill:
   the latency a customer sees when the listener keeps up.

Latency is the event's ``created`` (set by the sandbox when the divest changed) to the end of its
payout's completion (``completed_at``), per portfolio (whichever listener process completed it: an event
redelivered after the kill may find its payout already paid, or open and finish it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from batch.adapters.migrations import migrate  # noqa: E402
from batch.adapters.postgres import Dsns, make_engine  # noqa: E402
from batch.sandbox.server import free_port  # noqa: E402
from bench.harness import Env, log  # noqa: E402
from tests.e2e.helpers import fetch  # noqa: E402
from tests.e2e.listener_support import (  # noqa: E402
    ListenerProcess,
    ListenerWorld,
    broker_missing,
    completed,
    listener_world,
    paid_counts,
    wait_until,
)
from tests.fixtures.sandbox import SandboxState  # noqa: E402
from tests.integration.payout_support import add_customer  # noqa: E402


def customers(dsns: Dsns, n: int) -> list[dict[str, Any]]:
    engine = make_engine(dsns.ledger, pool_size=1)
    try:
        migrate(engine, "ledger")
    finally:
        engine.dispose()
    store = SandboxState(dsns.sandbox)
    return [add_customer(store, dsns, divest=None) for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(dsns: Dsns, docs: list[dict[str, Any]], started: float) -> dict[str, Any]:
    # per portfolio: its withdrawal event (divest > 0) and its payout's completion (whichever listener process
    # completed it: an event redelivered after the kill may find it already paid)
    rows = fetch(
        dsns.journal,
        "SELECT i.created, p.completed_at AS handled_at, i.attempts FROM batch.bus_inbox i"
        " JOIN batch.payouts p ON p.portfolio_id = i.portfolio_id AND p.state = 'COMPLETED'"
        " WHERE i.kind = 'withdrawal' AND (i.payload->>'divest_amount')::numeric > 0",
    )
    latencies = [(r["handled_at"] - r["created"]).total_seconds() for r in rows]
    first = min(r["created"] for r in rows)
    last = max(r["handled_at"] for r in rows)
    counts = paid_counts(dsns, {d["id"]: d["external_id"] for d in docs})
    once = all(
        (counts.journal[d["id"]], counts.ledger[d["id"]], counts.transactions[d["id"]], counts.events[d["id"]])
        == (1, 1, 1, 1)
        for d in docs
    )
    return {
        "payouts_completed": len(rows),
        "redelivered": sum(1 for r in rows if r["attempts"] > 1),
        "seconds": round((last - first).total_seconds(), 2),
        "throughput_per_s": round(len(rows) / (last - first).total_seconds(), 1),
        "latency_p50_s": round(percentile(latencies, 0.50), 3),
        "latency_p95_s": round(percentile(latencies, 0.95), 3),
        "latency_max_s": round(max(latencies), 3),
        "latency_mean_s": round(statistics.fmean(latencies), 3),
        "each_paid_exactly_once": once,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def burst(world: ListenerWorld, docs: list[dict[str, Any]], kill_at: float, listeners: int) -> dict[str, Any]:
    ids = [d["id"] for d in docs]
    first = world.listener().start()
    first.wait_ready()
    others = [world.listener(free_port()).start() for _ in range(listeners - 1)]  # competing consumers
    for other in others:
        other.wait_ready()
    started = time.monotonic()
    killed: dict[str, Any] = {}

    def killer() -> None:
        if kill_at <= 0:
            return
        wait_until(lambda: completed(world.dsns, ids) >= kill_at * len(ids), 600, "the kill point", 0.1)
        first.kill()
        killed["paid_at_kill"] = completed(world.dsns, ids)
        killed["after_s"] = round(time.monotonic() - started, 2)
        second = world.listener().start()
        killed["second"] = second

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    for d in docs:
        world.set_divest(d["id"], "25.00")
    log(f"burst published in {time.monotonic() - started:.1f} s")
    thread.join()
    wait_until(lambda: completed(world.dsns, ids) == len(ids), 1800, "the whole burst", 0.5)
    for process in (first, killed.get("second"), *others):
        if process is not None:
            process.stop()
    result = measure(world.dsns, docs, started)
    result |= {"killed_after_paid": killed.get("paid_at_kill"), "killed_after_s": killed.get("after_s")}
    return result


def backlog(world: ListenerWorld, docs: list[dict[str, Any]], listeners: int) -> dict[str, Any]:
    """Capacity: every event is queued before the listeners start; how fast do they drain the queue?"""
    ids = [d["id"] for d in docs]
    for d in docs:
        world.set_divest(d["id"], "25.00")
    started = time.monotonic()
    processes = [world.listener(None if i == 0 else free_port()).start() for i in range(listeners)]
    wait_until(lambda: completed(world.dsns, ids) == len(ids), 1800, "the backlog", 0.5)
    drained = time.monotonic() - started
    cpu = sum(listener_cpu_seconds(process) for process in processes)
    for process in processes:
        process.stop()
    result = measure(world.dsns, docs, started)
    batches = [size for process in processes for size in batch_sizes(process)]
    planned = [t for process in processes for t in batch_sizes(process, "listener.batch_planned", "seconds")]
    whole = [t for process in processes for t in batch_sizes(process, "listener.batch", "seconds")]
    return result | {
        "drain_seconds": round(drained, 1),
        "drain_per_s": round(len(ids) / drained, 1),
        "listener_cpu_ms_per_event": round(1000 * cpu / len(ids), 1),
        "batches_of_2_or_more": len(batches),
        "mean_batch": round(statistics.mean(batches), 1) if batches else 1,
        "mean_batch_plan_s": round(statistics.mean(planned), 2) if planned else None,
        "mean_batch_s": round(statistics.mean(whole), 2) if whole else None,
    }


def listener_cpu_seconds(process: ListenerProcess) -> float:
    """User + system CPU of a running listener process (psutil)."""
    import psutil  # noqa: PLC0415

    assert process.process is not None
    times = psutil.Process(process.process.pid).cpu_times()
    return float(times.user + times.system)


def batch_sizes(process: ListenerProcess, event: str = "listener.batch", key: str = "portfolios") -> list[float]:
    """A figure (``key``) of each batch of 2 or more the listener logged (``event``)."""
    if process.log is None:
        return []
    found = []
    for line in process.log.read_text(encoding="utf-8", errors="replace").splitlines():
        if f'"{event}"' in line:
            found.append(float(json.loads(line)[key]))
    return found


def paced(world: ListenerWorld, docs: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    ids = [d["id"] for d in docs]
    listener = world.listener().start()
    listener.wait_ready()
    started = time.monotonic()
    for index, d in enumerate(docs):
        pause = started + index / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        world.set_divest(d["id"], "25.00")
    wait_until(lambda: completed(world.dsns, ids) == len(ids), 1800, "the paced events", 0.5)
    listener.stop()
    return measure(world.dsns, docs, started) | {"rate_per_s": rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--bus", default="rabbitmq", choices=["rabbitmq", "mqtt"])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction paid when the listener is killed")
    parser.add_argument("--paced-rate", type=float, default=0.0, help="events/s of the paced run (0: skip)")
    parser.add_argument("--no-burst", action="store_true", help="no burst run")
    parser.add_argument("--backlog", action="store_true", help="also drain a queued backlog (capacity)")
    parser.add_argument("--listeners", type=int, default=1, help="listener processes (RabbitMQ: competing consumers)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    missing = broker_missing(args.bus)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    env = Env()
    results: dict[str, Any] = {
        "events": args.events,
        "latency_ms": args.latency_ms,
        "bus": args.bus,
        "concurrency": args.concurrency,
        "kill_at": args.kill_at,
        "listeners": args.listeners,
    }
    try:
        phases: list[tuple[str, float | None]] = [
            *([] if args.no_burst else [("burst", None)]),
            *([("backlog", -1.0)] if args.backlog else []),
            *([("paced", args.paced_rate)] if args.paced_rate else []),
        ]
        for name, rate in phases:
            fresh = env.fresh(name)
            dsns = Dsns(journal=fresh["journal"], ledger=fresh["ledger"], sandbox=fresh["sandbox"])
            folder = env.root / name
            with listener_world(dsns, args.bus, folder, latency_ms=0, concurrency=args.concurrency) as world:
                log(f"{name}: seeding {args.events} customers")
                docs = customers(dsns, args.events)
                world.sandbox.admin.set_faults(latency_ms=args.latency_ms)
                if rate is None:
                    results[name] = burst(world, docs, args.kill_at, args.listeners)
                elif rate < 0:
                    results[name] = backlog(world, docs, args.listeners)
                else:
                    results[name] = paced(world, docs, rate)
                log(f"{name}: {json.dumps(results[name])}")
    finally:
        env.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
