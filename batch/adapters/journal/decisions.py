"""The journal's decisions: one per candidate portfolio per run, recorded a page at a time."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date
from typing import Any

from sqlalchemy.engine import Connection

from batch.adapters.journal.base import AUDIT, JournalBase, audit_row
from batch.adapters.sqlfiles import load_queries
from batch.codec import canonical, canonical_rows
from batch.domain.payout import FlowKind, PayoutState
from batch.domain.records import DecisionRow, NewPayout

Q = load_queries("journal_decisions")


class DecisionStore(JournalBase):
    def open_payout_portfolios(self, portfolio_ids: Sequence[str]) -> dict[str, tuple[uuid.UUID, PayoutState]]:
        """Portfolios (of these) that already have an open payout, with its id and state. One query."""
        if not portfolio_ids:
            return {}
        with self._read() as conn:
            rows = conn.execute(Q.open_payouts_of.text, {"ids": list(portfolio_ids)})
            return {r.portfolio_id: (r.id, PayoutState(r.state)) for r in rows}

    def record_decisions(
        self,
        *,
        run_id: uuid.UUID,
        business_date: date,
        dry_run: bool,
        actor: str,
        decisions: Sequence[tuple[DecisionRow, NewPayout | None]],
        deposit_cursor: int | None = None,
    ) -> int:
        """Record a page of decisions (the payouts they create, and their audit rows) in one transaction.

        Batched: a handful of round trips per page whatever its size. Returns how many were new; a
        portfolio already decided in this run (offset paging over a live filter can repeat one) is
        not recorded twice. ``deposit_cursor`` (deposits) moves the position in the ledger's incoming credits
        in the same transaction, so a crash never skips a credit nor loses a decision.
        """
        with self._tx() as conn:
            if deposit_cursor is not None:
                conn.execute(Q.advance_deposit_cursor.text, {"last_credit_id": deposit_cursor})
            ids = [row.key for row, _ in decisions]
            seen = set(conn.execute(Q.decided_in_run.text, {"run_id": run_id, "ids": ids}).scalars())
            fresh: list[tuple[DecisionRow, NewPayout | None]] = []
            for row, payout in decisions:
                if row.key not in seen:
                    seen.add(row.key)
                    fresh.append((row, payout))
            if not fresh:
                return 0
            decision_ids = list(conn.execute(Q.next_ids.text, {"n": len(fresh)}).scalars())
            conn.execute(
                Q.insert.text,
                [
                    {
                        "id": decision_id,
                        "run_id": run_id,
                        "business_date": business_date,
                        "portfolio_id": row.portfolio_id,
                        "decision": row.decision,
                        "reason": row.reason,
                        "currency": row.currency,
                        "requested_raw": row.requested_raw,
                        "requested_amount": row.requested_amount,
                        "full_withdrawal": row.full_withdrawal,
                        "ledger_account": row.ledger_account,
                        "ledger_available": row.ledger_available,
                        "investsuite_cash": row.investsuite_cash,
                        "pay_amount": row.pay_amount,
                        "reconciliation_break": row.reconciliation_break,
                        "payout_id": payout.id if payout else None,
                        "dry_run": dry_run,
                        "details": canonical(row.details),
                        "flow": row.flow.value,
                        "credit_reference": row.credit_reference,
                    }
                    for decision_id, (row, payout) in zip(decision_ids, fresh, strict=True)
                ],
            )
            payouts = [
                {
                    "id": payout.id,
                    "portfolio_id": payout.portfolio_id,
                    "business_date": business_date,
                    "run_id": run_id,
                    "decision_id": decision_id,
                    "state": payout.state.value,
                    "currency": payout.currency,
                    "amount": payout.amount,
                    "full_withdrawal": payout.full_withdrawal,
                    "ledger_account": payout.ledger_account,
                    "counter_account": payout.counter_account,
                    "cash_snapshot": payout.cash_snapshot,
                    "divest_snapshot": payout.divest_snapshot,
                    "hold_reason": payout.hold_reason,
                    "flow": payout.flow.value,
                    "credit_reference": payout.credit_reference,
                }
                for decision_id, (_, payout) in zip(decision_ids, fresh, strict=True)
                if payout is not None
            ]
            lost: set[uuid.UUID] = set()
            if payouts:
                made = set(conn.execute(Q.insert_payouts.text, {"rows": canonical_rows(payouts)}).scalars())
                beaten = [row["id"] for row in payouts if row["id"] not in made]
                if beaten:
                    lost = set(conn.execute(Q.lost_to_an_open_payout.text, {"payout_ids": beaten}).scalars())
            fresh = [
                (replace(row, decision="DEFER", reason="PAYOUT_IN_PROGRESS", pay_amount=None), None)
                if payout is not None and payout.id in lost
                else (row, payout)
                for row, payout in fresh
            ]
            conn.execute(
                AUDIT.append.text,
                [
                    audit_row(
                        actor,
                        "decision.recorded",
                        run_id,
                        payout.id if payout else None,
                        row.portfolio_id,
                        {
                            "decision": row.decision,
                            "reason": row.reason,
                            "currency": row.currency,
                            "requested": row.requested_amount,
                            "pay_amount": row.pay_amount,
                            "dry_run": dry_run,
                        }
                        | (
                            {"flow": row.flow, "credit_reference": row.credit_reference} if row.credit_reference else {}
                        ),
                    )
                    for row, payout in fresh
                ],
            )
        return len(fresh)

    def deposit_cursor(self) -> int:
        """The id of the last incoming credit decided (0 before the first)."""
        with self._read() as conn:
            return int(conn.execute(Q.deposit_cursor.text).scalar_one())

    def held_credit_references(self, flow: FlowKind = FlowKind.DEPOSIT) -> list[str]:
        """Ledger transfers of ``flow`` still held (latest decision HOLD, no live operation): decided again every run.

        Deposits: incoming credits (their decisions are ``DEPOSIT`` in both set-ups); withdrawal announcements:
        the bank's payouts to counter accounts.
        """
        with self._read() as conn:
            return [str(ref) for ref in conn.execute(Q.held_credits.text, {"flow": flow.value}).scalars()]

    def decided_credit_references(self, references: Sequence[str], flow: FlowKind) -> set[str]:
        """Those of ``references`` a (non dry) run of ``flow`` has decided already, or that a live operation carries."""
        if not references:
            return set()
        with self._read() as conn:
            params = {"references": list(references), "flow": flow.value}
            return {str(ref) for ref in conn.execute(Q.decided_credits.text, params).scalars()}

    def stopped_credits(self, references: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """Credit -> (state, last error) of its stopped operation: MOVE_REVERSED or NEEDS_ATTENTION."""
        if not references:
            return {}
        with self._read() as conn:
            rows = conn.execute(Q.stopped_credits.text, {"references": list(references)}).all()
        return {str(row.credit_reference): (str(row.state), row.last_error) for row in rows}

    @staticmethod
    def revise_decision(
        conn: Connection,
        payout_id: uuid.UUID,
        decision: str,
        reason: str,
        note: str | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> None:
        conn.execute(
            Q.revise.text,
            {
                "decision": decision,
                "reason": reason,
                "payout_id": payout_id,
                "note": note,
                "evidence": None if evidence is None else canonical(evidence),
            },
        )
