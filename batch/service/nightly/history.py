"""Run history for ``batch runs``: one row per run with its status and totals, as text cells."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from batch.domain.money import exact, minor_unit
from batch.errors import UnknownCurrencyError

#: the columns of ``history_row``
RUN_COLUMNS = ("run id", "date", "status", "exit", "trigger", "operator", "started (UTC)", "secs", "totals")


def _money(text: object, currency: str) -> str:
    """A summary amount at the currency's minor unit, never rounded (as recorded when the currency is unknown)."""
    try:
        minor_unit(currency)
        return format(exact(Decimal(str(text)), currency), "f")
    except (InvalidOperation, UnknownCurrencyError):
        return str(text)


def history_row(run: Mapping[str, Any]) -> tuple[str, ...]:
    """A run of ``batch.runs`` as the cells of ``RUN_COLUMNS``, amounts at their currency's minor unit."""
    started, finished = run["started_at"], run["finished_at"]
    seconds = f"{(finished - started).total_seconds():.1f}" if finished else "-"
    totals = []
    summary = run["summary"] or {}
    for ccy, t in sorted(summary.get("totals", {}).items()):
        groups = t.get("groups", {})
        moved = "".join(
            f" {name.replace('_', ' ')} {_money(g['paid'], ccy)} ({g['paid_count']})"
            for name, g in sorted(groups.items())
            if name != "planned" and g.get("count")
        )
        would = f" would pay {_money(t['would_pay'], ccy)} ({t['would_pay_count']})" if t.get("would_pay_count") else ""
        totals.append(
            f"{ccy} paid {_money(t.get('paid', '0'), ccy)} ({t.get('paid_count', 0)}){moved}{would}"
            f" deferred {t.get('deferred_count', 0)} held {t.get('held_count', 0)}"
        )
    reconcile = summary.get("reconcile")
    if reconcile:
        breaks = "NOT COMPLETED" if reconcile.get("error") else f"{reconcile.get('breaks', 0)} breaks"
        totals.append(f"reconcile {breaks}")
    interrupted = summary.get("interrupted")
    if interrupted:  # stopped by a signal: say what it left
        totals.append(f"interrupted by {interrupted.get('signal')}: {interrupted.get('in_flight', 0)} in flight")
    status = run["status"] + (" (dry)" if run["dry_run"] else "")
    code = "-" if run["exit_code"] is None else str(run["exit_code"])
    return (
        str(run["id"]),
        str(run["business_date"]),
        status,
        code,
        run["trigger"],
        run["operator"],
        f"{started:%Y-%m-%d %H:%M:%S}",
        seconds,
        "; ".join(totals),
    )
