"""The benchmark's table and details: one row per measurement, and a py-spy profile summarised."""

from __future__ import annotations

from pathlib import Path

from bench.harness import Measurement


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
        "steps.py",
        "withdrawals.py",
        "pydantic",
        "build.py",
        "ssl",
        "socket",
    )
    lines.append("  inclusive time of selected frames (non-idle share matters; threads waiting on I/O count too):")
    for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1]):
        if any(k in name for k in interesting) and count / total > 0.02:
            lines.append(f"    {count / total * 100:5.1f}%  {name}")
    return "\n".join(lines[: top + 60])


# --------------------------------------------------------------------------- scenarios
