"""Run history for ``batch runs``: one line per run with its status and totals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def run_history(engine: Engine, *, business_date: date | None = None, limit: int = 50) -> Iterator[str]:
    query = (
        "SELECT id, business_date, trigger, operator, status, exit_code, dry_run, started_at, finished_at,"
        " summary FROM batch.runs WHERE (CAST(:d AS date) IS NULL OR business_date = :d)"
        " ORDER BY started_at DESC LIMIT :n"
    )
    with engine.connect() as conn:
        rows = conn.execute(sa.text(query), {"d": business_date, "n": limit}).all()
    yield (
        f"{'run id':<36}  {'date':<10}  {'status':<26} exit  {'trigger':<9} {'operator':<12} "
        f"{'started (UTC)':<19}  {'secs':>6}  totals"
    )
    for r in rows:
        seconds = f"{(r.finished_at - r.started_at).total_seconds():6.1f}" if r.finished_at else "     -"
        totals = []
        summary = r.summary or {}
        for ccy, t in sorted(summary.get("totals", {}).items()):
            groups = t.get("groups", {})
            moved = "".join(
                f" {name.replace('_', ' ')} {g['paid']} ({g['paid_count']})"
                for name, g in sorted(groups.items())
                if name != "planned" and g.get("count")
            )
            would = f" would pay {t['would_pay']} ({t['would_pay_count']})" if t.get("would_pay_count") else ""
            totals.append(
                f"{ccy} paid {t.get('paid', '0')} ({t.get('paid_count', 0)}){moved}{would}"
                f" deferred {t.get('deferred_count', 0)} held {t.get('held_count', 0)}"
            )
        reconcile = summary.get("reconcile")
        if reconcile:
            breaks = "NOT COMPLETED" if reconcile.get("error") else f"{reconcile.get('breaks', 0)} breaks"
            totals.append(f"reconcile {breaks}")
        status = r.status + (" (dry)" if r.dry_run else "")
        code = "-" if r.exit_code is None else str(r.exit_code)
        yield (
            f"{r.id!s:<36}  {r.business_date!s:<10}  {status:<26} {code:>4}"
            f"  {r.trigger:<9} {r.operator[:12]:<12} {r.started_at:%Y-%m-%d %H:%M:%S}  {seconds}  "
            f"{'; '.join(totals)}"
        )
