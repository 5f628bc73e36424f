"""Plan withdrawal announcements (broker integration by InvestSuite): the bank's payouts of the value date.

Each run reads the ledger's payouts to customers' counter accounts of its business date (one query per page
of 100, in ledger id order), plus every payout still held from any date, finds the portfolios the customer
accounts map to (one InvestSuite query per page: ``external_id in [...]``, or a GET per id under the
``portfolio_id`` mapping), decides each payout not decided before (``batch.domain.announce``) and records the
decisions and the operations they create in one journal transaction per page. The operation then announces
the payout (``POST /events/withdraw/``, ``Idempotency-Key`` = the ledger transfer's reference) on the step
engine. The job moves no money, records no transaction and patches nothing in this set-up.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Protocol

import structlog

from batch.adapters.ledger_bank_payouts import LedgerBankPayout
from batch.domain.announce import BankPayout, decide_announcement
from batch.domain.model import AccountMap, Decision, PortfolioView, mask_account
from batch.domain.payout import FlowKind, PayoutState
from batch.domain.records import DecisionRow, NewPayout
from batch.service.context import Services
from batch.service.planning.deposits import DecisionRecorder, DepositStats, PortfolioFinder, find_portfolios

log = structlog.get_logger("batch.announcements")
PAGE = 100
FLOW = FlowKind.WITHDRAWAL_ANNOUNCE


class BankPayouts(Protocol):
    """The ledger's payouts to counter accounts (``batch.adapters.ledger_bank_payouts.BankPayoutLedger``)."""

    def bank_payouts(self, value_date: date, after_id: int, limit: int) -> Sequence[LedgerBankPayout]: ...

    def bank_payouts_by_reference(self, references: Sequence[str]) -> Mapping[str, LedgerBankPayout]: ...


class AnnouncementJournal(DecisionRecorder, Protocol):
    def held_credit_references(self, flow: FlowKind = ...) -> list[str]: ...

    def decided_credit_references(self, references: Sequence[str], flow: FlowKind) -> set[str]: ...


class AnnouncementStats(DepositStats):
    """``DepositStats`` over the bank's payouts: ``credits`` counts payouts, summarised as ``payouts``."""

    def summary(self) -> dict[str, object]:
        found = super().summary()
        return {"payouts": found.pop("credits"), **found}


@dataclass
class AnnouncementPlanner:
    journal: AnnouncementJournal
    payouts: BankPayouts
    investsuite: PortfolioFinder
    accounts: AccountMap
    run_id: uuid.UUID
    business_date: date
    dry_run: bool
    actor: str
    stats: AnnouncementStats = field(default_factory=AnnouncementStats)

    def plan(self) -> AnnouncementStats:
        held = self.journal.held_credit_references(FLOW)
        for start in range(0, len(held), PAGE):
            self.stats.ledger_queries += 1
            found = self.payouts.bank_payouts_by_reference(held[start : start + PAGE])
            self.stats.held_again += len(found)
            self._plan_page(list(found.values()))
        after = 0
        while True:
            self.stats.ledger_queries += 1
            page = list(self.payouts.bank_payouts(self.business_date, after, PAGE))
            if not page:
                return self.stats
            after = max(payout.id for payout in page)
            decided = self.journal.decided_credit_references([p.reference for p in page], FLOW)
            fresh = [p for p in page if p.reference not in decided]
            if fresh:
                self._plan_page(fresh)

    def _plan_page(self, page: list[LedgerBankPayout]) -> None:
        self.stats.pages += 1
        portfolios = find_portfolios(self.investsuite, self.accounts, [p.customer_account for p in page])
        rows: list[tuple[DecisionRow, NewPayout | None]] = []
        for payout in page:
            self.stats.credits += 1
            remote = portfolios.get(payout.customer_account) if payout.customer_account else None
            rows.append(self._row(payout, None if remote is None else remote.to_view(None)))
        self.journal.record_decisions(
            run_id=self.run_id, business_date=self.business_date, dry_run=self.dry_run, actor=self.actor, decisions=rows
        )

    def _row(self, payout: LedgerBankPayout, view: PortfolioView | None) -> tuple[DecisionRow, NewPayout | None]:
        verdict = decide_announcement(
            BankPayout(
                payout.reference,
                payout.customer_account,
                payout.counter_account,
                payout.amount,
                payout.currency,
                payout.value_date,
            ),
            view,
        )
        self.stats.by_decision[verdict.decision] += 1
        pay = verdict.decision is Decision.PAY
        details: dict[str, object] = {
            "value_date": payout.value_date,
            "flow": FLOW.value,
            "counter_account": mask_account(payout.counter_account),
        }
        if verdict.note:
            details["note"] = verdict.note
        if payout.customer_account:
            details["customer_account"] = mask_account(payout.customer_account)
        row = DecisionRow(
            portfolio_id=None if view is None else view.portfolio_id,
            decision=verdict.decision,
            reason=verdict.reason,
            currency=payout.currency,
            requested_raw=format(payout.amount, "f"),
            requested_amount=payout.amount,
            full_withdrawal=False,
            ledger_account=payout.customer_account,
            ledger_available=None,
            investsuite_cash=None if view is None else view.cash,
            pay_amount=payout.amount if pay else None,
            reconciliation_break=False,
            details=details,
            flow=FLOW,
            credit_reference=payout.reference,
        )
        if not pay or self.dry_run:
            return row, None
        assert view is not None and payout.customer_account is not None
        operation = NewPayout(
            id=uuid.uuid4(),
            portfolio_id=view.portfolio_id,
            state=PayoutState.PLANNED,
            currency=payout.currency,
            amount=payout.amount,
            full_withdrawal=False,
            ledger_account=payout.customer_account,
            counter_account=payout.counter_account,
            cash_snapshot=view.cash if view.cash is not None and view.cash >= 0 else Decimal(0),
            divest_snapshot=None,
            flow=FLOW,
            credit_reference=payout.reference,
        )
        return row, operation


def plan_announcements(
    app: Services, run_id: uuid.UUID, business_date: date, dry_run: bool, actor: str
) -> AnnouncementStats:
    """Decide every payout the bank made on the business date (and every one still held); record them."""
    planner = AnnouncementPlanner(
        journal=app.journal,
        payouts=app.bank_payouts,
        investsuite=app.client,
        accounts=app.settings.policy.account_map(),
        run_id=run_id,
        business_date=business_date,
        dry_run=dry_run,
        actor=actor,
    )
    stats = planner.plan()
    log.info("run.announcements_planned", payouts=stats.credits, by_decision=stats.summary()["by_decision"])
    return stats
