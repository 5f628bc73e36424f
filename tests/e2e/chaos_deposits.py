"""The deposits' side of the crash harness: incoming credits seeded beside the withdrawals, checked at the end.

Every eligible credit must be moved into its customer's account exactly once (``deposit:<credit>`` in the
ledger) and announced exactly once (one deposit event keyed by the credit, one SETTLED CASH_DEPOSIT in
InvestSuite, the cash raised by exactly the credit); every held credit must have moved nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg

from batch.adapters.postgres import Dsns
from batch.sandbox.seed import libpq_dsn
from batch.sandbox.seed_deposits import seed_deposits
from batch.sandbox.store import loads

ELIGIBLE_CASES = frozenset({"deposit_active", "deposit_waiting_for_funds", "deposit_jpy", "deposit_twice"})


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_dsn(dsn)) as conn:
        return conn.execute(sql).fetchall()


@dataclass
class DepositBook:
    dsns: Dsns
    cases: dict[str, list[str]]
    cash_before: dict[str, Decimal] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def seed(cls, dsns: Dsns, *, rng_seed: int) -> DepositBook:
        book = cls(dsns, seed_deposits(dsns.sandbox, dsns.ledger, rng_seed=rng_seed))
        book.cash_before = book._cash()
        return book

    def _cash(self) -> dict[str, Decimal]:
        cash = {}
        for pid, text in _rows(self.dsns.sandbox, "SELECT id, doc::text FROM sandbox.portfolios"):
            doc = loads(text)
            cash[str(pid)] = Decimal(str(doc["portfolio"].get(f"${doc['base_currency']}", 0)))
        return cash

    def per_currency(self, business_date: date, report_announced: Mapping[str, Decimal]) -> tuple[str, bool, str]:
        """Per currency: incoming -> customer transfers of the date = report moved = events = SETTLED CASH_DEPOSITs.

        ``report_announced``: the date report's deposits, announced (moved and announced), per currency.
        """
        figures: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        for ccy, amount in _rows(
            self.dsns.ledger,
            "SELECT t.currency, t.amount FROM ledger.transfers t"
            " JOIN ledger.accounts d ON d.id = t.debit_account_id JOIN ledger.accounts c ON c.id = t.credit_account_id"
            " WHERE d.kind = 'INCOMING_FUNDS' AND c.kind = 'CUSTOMER_INVESTMENT_CASH'"
            f" AND t.value_date = '{business_date.isoformat()}'",
        ):
            figures[str(ccy).strip()]["ledger"] += Decimal(amount)
        for (data,) in _rows(
            self.dsns.sandbox, "SELECT response::text FROM sandbox.events WHERE response::jsonb ->> 'type' = 'deposit'"
        ):
            body = loads(data)["data"]
            figures[body["currency"]]["events"] += Decimal(body["amount"])
        for ccy, quantity in _rows(
            self.dsns.sandbox,
            "SELECT p.search_doc ->> 'base_currency', m ->> 'quantity' FROM sandbox.transactions t"
            " JOIN sandbox.portfolios p ON p.id = t.portfolio_id, jsonb_array_elements(t.search_doc -> 'movements') m"
            " WHERE m ->> 'type' = 'CASH_DEPOSIT' AND m ->> 'status' IN ('SETTLED', 'EXECUTED')",
        ):
            figures[str(ccy)]["settled"] += Decimal(quantity)
        for ccy, amount in report_announced.items():
            figures[ccy]["report"] += amount
        wrong = {
            ccy: dict(f)
            for ccy, f in figures.items()
            if len({f["ledger"], f["events"], f["settled"], f["report"]}) != 1
        }
        shown = {ccy: str(f["ledger"]) for ccy, f in sorted(figures.items())}
        return (
            "deposits per currency: ledger moves of the date = report moved = events = SETTLED CASH_DEPOSIT",
            not wrong and bool(figures),
            f"{shown}; wrong {wrong}",
        )

    def checks(self) -> list[tuple[str, bool, str]]:
        eligible = {ref for case in ELIGIBLE_CASES for ref in self.cases.get(case, [])}
        held = {ref for case, refs in self.cases.items() if case not in ELIGIBLE_CASES for ref in refs}
        moves = Counter(
            str(k).removeprefix("deposit:")
            for (k,) in _rows(
                self.dsns.ledger, "SELECT idempotency_key FROM ledger.transfers WHERE idempotency_key LIKE 'deposit:%%'"
            )
        )
        events = Counter(
            str(k)
            for (k,) in _rows(
                self.dsns.sandbox,
                "SELECT idempotency_key FROM sandbox.events WHERE response::jsonb ->> 'type' = 'deposit'",
            )
        )
        deposits = Counter(
            str(ext)
            for (ext,) in _rows(
                self.dsns.sandbox,
                "SELECT external_id FROM sandbox.transactions"
                " WHERE doc::jsonb -> 'movements' -> 0 ->> 'type' = 'CASH_DEPOSIT'",
            )
        )
        ops = dict(
            _rows(
                self.dsns.journal,
                "SELECT credit_reference, state FROM batch.payouts"
                " WHERE credit_reference IS NOT NULL AND state <> 'CANCELLED'",
            )
        )
        amounts = dict(_rows(self.dsns.ledger, "SELECT reference, amount FROM ledger.transfers"))
        owners = dict(
            _rows(
                self.dsns.journal,
                "SELECT credit_reference, portfolio_id FROM batch.payouts WHERE credit_reference IS NOT NULL",
            )
        )
        once = [r for r in eligible if (moves[r], events[r], deposits[r], ops.get(r)) != (1, 1, 1, "COMPLETED")]
        moved_held = [r for r in held if moves[r] or events[r] or deposits[r]]
        raised: defaultdict[str, Decimal] = defaultdict(Decimal)
        for ref in eligible:
            raised[str(owners[ref])] += Decimal(amounts[ref])
        cash_now = self._cash()
        wrong_cash = [pid for pid, plus in raised.items() if cash_now[pid] != self.cash_before[pid] + plus]
        self.counts = {"eligible": len(eligible), "held": len(held), "moved": sum(moves.values())}
        return [
            (
                "deposits: each eligible credit moved once, announced once, COMPLETED",
                not once,
                f"{len(eligible)} eligible; wrong {once[:3]}",
            ),
            (
                "deposits: nothing moved or announced for a held credit",
                not moved_held,
                f"{len(held)} held; {moved_held[:3]}",
            ),
            (
                "deposits: cash raised by exactly the credits",
                not wrong_cash,
                f"{len(raised)} portfolios; wrong {wrong_cash[:3]}",
            ),
        ]
