"""The report's control checks, per currency: nothing lost, paid once everywhere, in flight apart.

Pure: figures in, ``Check`` lines out (``batch.service.reports.model`` holds the totals they read).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from batch.service.reports.figures import Check
from batch.service.reports.model import BUCKETS, GROUPS, ZERO, Totals

IN_FLIGHT_CHECK = "in flight: moved on the ledger, not completed yet (the next run resumes them)"


def checks(
    totals: Mapping[str, Totals], reconcile: Mapping[str, Any] | None, dry_run: bool, kind: str = "run"
) -> list[Check]:
    """The control checks: nothing lost per currency and group, and paid once, everywhere.

    A date's report also compares its own paid figure (the date's money: groups ``planned`` and
    ``paid_earlier``) with the reconciliation's. A reconciliation that finished before the date's
    latest money movement (``reconcile["stale_since"]``) vouches for nothing: "not reconciled since".
    Payouts in flight are their own line (informative), not a difference.
    """
    found: list[Check] = []
    figures = (reconcile or {}).get("figures", {}).get("currencies", {})
    stale = (reconcile or {}).get("stale_since")
    for ccy, t in totals.items():
        parts = " + ".join(f"{b} {t.amount[b]}" for b in BUCKETS if t.count[b])
        buckets_sum = sum((t.amount[b] for b in BUCKETS), ZERO)
        counted = sum(t.count[b] for b in BUCKETS)
        per_group = "; ".join(f"{g} {gt.lines} = {gt.requested}" for g in GROUPS if (gt := t.groups.get(g)) is not None)
        found.append(
            Check(
                "requested = paid + in_progress + would_pay + deferred + skipped + held (per group)",
                ccy,
                t.requested == buckets_sum and t.candidates == counted,
                f"{t.requested} = {parts or '0'} ({t.candidates} lines, {counted} classified; {per_group})",
            )
        )
        if dry_run:
            continue
        found += _paid_checks(ccy, t, reconcile, figures.get(ccy, {}), stale, kind)
    if reconcile is not None:
        error = reconcile.get("error")
        detail = error or f"{reconcile['checked']} payouts checked, {reconcile['breaks']} breaks"
        found.append(
            Check(
                "reconcile against the ledger and InvestSuite: no breaks",
                "all",
                not error and not stale and int(reconcile["breaks"]) == 0,
                f"not reconciled since {stale} (last: {detail})" if stale else detail,
            )
        )
    return found


def _paid_checks(
    ccy: str,
    t: Totals,
    reconcile: Mapping[str, Any] | None,
    f: Mapping[str, Any],
    stale: object,
    kind: str,
) -> list[Check]:
    found: list[Check] = []
    if reconcile is not None and ccy != "???":
        sources = [f.get(k, "0") for k in ("journal", "ledger", "investsuite", "events")]
        ok = len({Decimal(s) for s in sources}) == 1 and Decimal(f.get("moved_journal", "0")) == Decimal(
            f.get("moved_ledger", "0")
        )
        detail = (
            f"journal {sources[0]}, ledger {sources[1]}, InvestSuite {sources[2]}, events {sources[3]};"
            f" moved by the run: journal {f.get('moved_journal', '0')}, ledger {f.get('moved_ledger', '0')}"
        )
        if kind == "date":
            paid = t.paid_of("planned", "paid_earlier")
            ok = ok and paid == Decimal(sources[0])
            detail = f"report paid {paid}, " + detail
        if stale:
            ok, detail = False, f"not reconciled since {stale} (last: {detail})"
        found.append(
            Check("paid = ledger = InvestSuite SETTLED = events (read back by the reconcile)", ccy, ok, detail)
        )
        count, amount = int(f.get("in_flight_count", 0)), f.get("in_flight_ledger", "0")
        if count or t.in_flight_count:
            found.append(
                Check(
                    IN_FLIGHT_CHECK,
                    ccy,
                    True,
                    f"{count or t.in_flight_count} payout(s): ledger {amount if count else t.in_flight_posted},"
                    f" InvestSuite {f.get('in_flight_investsuite', t.in_flight_settled)},"
                    f" events {f.get('in_flight_events', t.in_flight_events)}",
                )
            )
        return found
    paid = t.amount["paid"]
    posted = t.ledger_posted - t.in_flight_posted
    settled = t.investsuite_settled - t.in_flight_settled
    events = t.events_sent - t.in_flight_events
    found.append(
        Check(
            "paid = ledger posted = InvestSuite SETTLED = events (journal only: not reconciled)",
            ccy,
            paid == posted == settled == events,
            f"paid {paid}, ledger {posted}, settled {settled}, events {events}",
        )
    )
    if t.in_flight_count:
        found.append(
            Check(
                IN_FLIGHT_CHECK,
                ccy,
                True,
                f"{t.in_flight_count} payout(s): ledger {t.in_flight_posted}, InvestSuite {t.in_flight_settled},"
                f" events {t.in_flight_events}",
            )
        )
    return found
