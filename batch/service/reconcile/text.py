"""A reconciliation as text, for ``batch reconcile`` and the end of a run (people; parse the JSON instead)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from batch.service.reconcile.deposits import deposit_text
from batch.service.reconcile.result import Reconciliation
from batch.service.reconcile.rules import count_by_type

_PAID_COLUMNS = (
    ("journal", "journal paid"),
    ("ledger", "ledger (read back)"),
    ("investsuite", "InvestSuite SETTLED (read back)"),
    ("events", "events (ids kept)"),
)


def reconciliation_lines(result: Reconciliation) -> Iterator[str]:
    """The summary: scope, counts, figures per currency with their sources, then every break."""
    figures = result.figures()["currencies"]
    if result.kind == "payouts":
        scope = (
            f"business date {result.business_date} (run {result.run_id})"
            if result.run_id
            else f"business date {result.business_date}"
        )
        yield f"Reconciliation of the payouts of {scope}: {result.checked} payouts checked, {len(result.breaks)} breaks"
        yield f"  {'ccy':<4} {'payouts':>7} " + " ".join(f"{label:>22}" for _, label in _PAID_COLUMNS)
        for ccy, f in figures.items():
            yield f"  {ccy:<4} {f['payouts']:>7} " + " ".join(f"{f[key]:>22}" for key, _ in _PAID_COLUMNS)
            if result.run_id is not None:
                yield f"  {ccy:<4} moved by this run: journal {f['moved_journal']}, ledger {f['moved_ledger']}"
            if f.get("in_flight_count"):
                yield (
                    f"  {ccy:<4} in flight (past the ledger, not completed): {f['in_flight_count']} payout(s),"
                    f" ledger {f['in_flight_ledger']}, InvestSuite {f['in_flight_investsuite']},"
                    f" events {f['in_flight_events']}"
                )
            if Decimal(f["unknown_ledger"]):
                yield f"  {ccy:<4} unknown ledger payouts: {f['unknown_ledger']}"
        for ccy, f in result.announcements.items():
            yield (
                f"  {ccy:<4} bank payouts to counter accounts (ledger) {f['ledger_count']} / {f['ledger']}"
                f" = announced {f['announced_count']} / {f['announced']}"
                f" + in progress {f['in_progress_count']} / {f['in_progress']}"
                f" + held {f['held_count']} / {f['held']}"
                f" + not decided {f['not_decided_count']} / {f['not_decided']}"
            )
    else:
        stats = result.stats
        yield (
            f"Full-book cash reconciliation: {result.checked} REAL_MONEY portfolios checked,"
            f" {len(result.breaks)} breaks"
            f" ({stats.get('orphan_accounts', 0)} orphan ledger accounts, {stats.get('pages', 0)} pages,"
            f" {stats.get('ledger_queries', 0)} ledger queries, {stats.get('investsuite_calls', 0)} InvestSuite calls)"
        )
        heads = f"{'portfolios':>10} {'InvestSuite cash':>20} {'ledger balance':>20} {'difference':>16}"
        yield f"  {'ccy':<4} {heads} breaks"
        for ccy, f in figures.items():
            yield (
                f"  {ccy:<4} {f['portfolios']:>10} {f['investsuite_cash']:>20} {f['ledger_balance']:>20}"
                f" {f['difference']:>16} {f['breaks']}"
            )
    yield from deposit_text(result)
    types = count_by_type(result.breaks)
    if types:
        yield "  breaks by type: " + ", ".join(f"{name} {n}" for name, n in types.items())
    for b in result.breaks:
        yield "  " + break_line(b.to_dict())


def break_line(b: dict[str, Any]) -> str:
    """One break on one line: type, where, the figures on both sides, the evidence."""
    where = " ".join(
        part
        for part in (
            f"portfolio {b['portfolio_id']}" if b.get("portfolio_id") else "",
            f"payout {b['payout_id']}" if b.get("payout_id") else "",
            f"ref {b['reference']}" if b.get("reference") else "",
        )
        if part
    )
    figures = f"{b.get('currency') or '???'} expected {b.get('expected')} found {b.get('found')} ({b.get('source')})"
    evidence = ", ".join(f"{k}={v}" for k, v in sorted((b.get("evidence") or {}).items()))
    return f"[{b['type']}] {where} {figures}" + (f" {evidence}" if evidence else "")
