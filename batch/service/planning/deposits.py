"""Plan deposits: find the ledger's new incoming credits set-wise, decide each once, record every decision.

Each run reads the credits booked since its last position in the ledger (``batch.deposit_cursor``,
one query per page of 100, keyed by the ledger transfer id), plus every credit whose latest decision is
still HOLD (held money is decided again until it can be placed — never lost). For a page it finds the
portfolios the beneficiaries map to (one InvestSuite query per page: ``external_id in [...]``, or a GET
per id under the ``portfolio_id`` mapping), decides each credit (``batch.domain.deposit``) and records
the decisions, the operations they create and the new position in one journal transaction.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Protocol

import structlog

from batch.adapters.investsuite_models import RemotePortfolio
from batch.domain.deposit import Credit, decide_deposit, decide_stopped
from batch.domain.model import AccountMap, Decision, LedgerView, PortfolioView, mask_account
from batch.domain.payout import FlowKind, PayoutState
from batch.domain.records import DecisionRow, NewPayout
from batch.errors import NotFoundError
from batch.service.context import Services
from batch.settings import BrokerIntegration

log = structlog.get_logger("batch.deposits")
PAGE = 100


class IncomingCreditRead(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def reference(self) -> str: ...

    @property
    def beneficiary(self) -> str | None: ...

    @property
    def amount(self) -> Decimal: ...

    @property
    def currency(self) -> str: ...

    @property
    def value_date(self) -> date: ...


class IncomingCredits(Protocol):
    """The ledger's incoming credits (``batch.adapters.ledger_deposits.DepositLedger``)."""

    def incoming_credits(self, after_id: int, limit: int) -> Sequence[IncomingCreditRead]: ...

    def credits_by_reference(self, references: Sequence[str]) -> Mapping[str, IncomingCreditRead]: ...


class PortfolioFinder(Protocol):
    def get_portfolio(self, portfolio_id: str) -> RemotePortfolio: ...

    def find_portfolios_by_external_ids(self, external_ids: Sequence[str]) -> dict[str, RemotePortfolio]: ...


class DecisionRecorder(Protocol):
    """What a ledger-transfer planner records per page: its decisions and operations (and the deposits' cursor)."""

    def record_decisions(
        self,
        *,
        run_id: uuid.UUID,
        business_date: date,
        dry_run: bool,
        actor: str,
        decisions: Sequence[tuple[DecisionRow, NewPayout | None]],
        deposit_cursor: int | None = None,
    ) -> int: ...


class DepositJournal(DecisionRecorder, Protocol):
    def deposit_cursor(self) -> int: ...

    def held_credit_references(self) -> list[str]: ...

    def stopped_credits(self, references: Sequence[str]) -> Mapping[str, tuple[str, str | None]]: ...


@dataclass
class DepositStats:
    pages: int = 0
    credits: int = 0
    held_again: int = 0
    ledger_queries: int = 0
    by_decision: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, object]:
        return {
            "credits": self.credits,
            "held_again": self.held_again,
            "pages": self.pages,
            "ledger_queries": self.ledger_queries,
            "by_decision": dict(self.by_decision),
        }


class CustomerAccounts(Protocol):
    """The ledger's customer accounts (``Ledger.available_balances``): which exist, in which currency."""

    def available_balances(self, account_references: Sequence[str]) -> Mapping[str, LedgerView]: ...


@dataclass
class DepositPlanner:
    journal: DepositJournal
    credits: IncomingCredits
    accounts_of_ledger: CustomerAccounts
    investsuite: PortfolioFinder
    accounts: AccountMap
    flow: FlowKind  # DEPOSIT (broker integration by the client) or DEPOSIT_ANNOUNCE (by InvestSuite)
    run_id: uuid.UUID
    business_date: date
    dry_run: bool
    actor: str
    stats: DepositStats = field(default_factory=DepositStats)

    def plan(self) -> DepositStats:
        held = self.journal.held_credit_references()
        for start in range(0, len(held), PAGE):
            self.stats.ledger_queries += 1
            found = self.credits.credits_by_reference(held[start : start + PAGE])
            self.stats.held_again += len(found)
            stopped = self.journal.stopped_credits(sorted(found))
            self._plan_page(list(found.values()), advance_to=None, stopped=stopped)
        cursor = self.journal.deposit_cursor()
        while True:
            self.stats.ledger_queries += 1
            page = list(self.credits.incoming_credits(cursor, PAGE))
            if not page:
                return self.stats
            cursor = max(credit.id for credit in page)
            # a dry run decides but never moves the position: the real run must see the same credits
            self._plan_page(page, advance_to=None if self.dry_run else cursor)

    def _plan_page(
        self,
        page: list[IncomingCreditRead],
        advance_to: int | None,
        stopped: Mapping[str, tuple[str, str | None]] | None = None,
    ) -> None:
        self.stats.pages += 1
        portfolios = find_portfolios(self.investsuite, self.accounts, [c.beneficiary for c in page])
        self.stats.ledger_queries += 1
        ledger = self.accounts_of_ledger.available_balances(sorted({c.beneficiary for c in page if c.beneficiary}))
        rows: list[tuple[DecisionRow, NewPayout | None]] = []
        for credit in page:
            self.stats.credits += 1
            remote = portfolios.get(credit.beneficiary) if credit.beneficiary else None
            view = None if remote is None else remote.to_view(None)
            account = ledger.get(credit.beneficiary) if credit.beneficiary else None
            halted = (stopped or {}).get(credit.reference)
            rows.append(self._row(credit, view, None if account is None else account.currency, halted))
        self.journal.record_decisions(
            run_id=self.run_id,
            business_date=self.business_date,
            dry_run=self.dry_run,
            actor=self.actor,
            decisions=rows,
            deposit_cursor=advance_to,
        )

    def _row(
        self,
        credit: IncomingCreditRead,
        view: PortfolioView | None,
        account_currency: str | None,
        stopped: tuple[str, str | None] | None = None,
    ) -> tuple[DecisionRow, NewPayout | None]:
        verdict = decide_deposit(
            Credit(credit.reference, credit.beneficiary, credit.amount, credit.currency, credit.value_date),
            view,
            account_currency,
        )
        if stopped is not None:  # its operation stopped: listed by every run, never placed again here
            verdict = decide_stopped(verdict, *stopped)
        self.stats.by_decision[verdict.decision] += 1
        pay = verdict.decision is Decision.PAY
        cash = None if view is None else view.cash
        details: dict[str, object] = {"value_date": credit.value_date, "flow": self.flow.value}
        if verdict.note:
            details["note"] = verdict.note
        if credit.beneficiary:
            details["beneficiary"] = mask_account(credit.beneficiary)
        row = DecisionRow(
            portfolio_id=None if view is None else view.portfolio_id,
            decision=verdict.decision,
            reason=verdict.reason,
            currency=credit.currency,
            requested_raw=format(credit.amount, "f"),
            requested_amount=credit.amount,
            full_withdrawal=False,
            ledger_account=credit.beneficiary,
            ledger_available=None,
            investsuite_cash=cash,
            pay_amount=credit.amount if pay else None,
            reconciliation_break=False,
            details=details,
            flow=FlowKind.DEPOSIT,
            credit_reference=credit.reference,
        )
        if not pay or self.dry_run:
            return row, None
        assert view is not None and credit.beneficiary is not None
        operation = NewPayout(
            id=uuid.uuid4(),
            portfolio_id=view.portfolio_id,
            state=PayoutState.PLANNED,
            currency=credit.currency,
            amount=credit.amount,
            full_withdrawal=False,
            ledger_account=credit.beneficiary,
            counter_account=None,
            cash_snapshot=cash if cash is not None and cash >= 0 else Decimal(0),
            divest_snapshot=None,
            flow=self.flow,
            credit_reference=credit.reference,
        )
        return row, operation


def find_portfolios(
    investsuite: PortfolioFinder, accounts: AccountMap, customer_accounts: Sequence[str | None]
) -> dict[str, RemotePortfolio]:
    """Customer account -> the portfolio that maps to it (absent when none does); one query per page.

    Under the ``external_id`` mapping one ``external_id in [...]`` listing, under ``portfolio_id`` a GET each.
    """
    keys = {account: accounts.portfolio_key(account) for account in customer_accounts if account}
    by_external = [value for key in keys.values() if key and key[0] == "external_id" for value in [key[1]]]
    found = investsuite.find_portfolios_by_external_ids(sorted(set(by_external))) if by_external else {}
    portfolios: dict[str, RemotePortfolio] = {}
    for account, key in keys.items():
        if key is None:
            continue
        kind, value = key
        if kind == "external_id" and value in found:
            portfolios[account] = found[value]
        elif kind == "portfolio_id":
            try:
                portfolios[account] = investsuite.get_portfolio(value)
            except NotFoundError:
                continue
    return portfolios


def plan_deposits(app: Services, run_id: uuid.UUID, business_date: date, dry_run: bool, actor: str) -> DepositStats:
    """Decide every new (and every still held) incoming credit; record the decisions and operations."""
    settings = app.settings
    client_side = settings.deposits.broker_integration is BrokerIntegration.CLIENT
    planner = DepositPlanner(
        journal=app.journal,
        credits=app.deposit_ledger,
        accounts_of_ledger=app.ledger,
        investsuite=app.client,
        accounts=settings.policy.account_map(),
        flow=FlowKind.DEPOSIT if client_side else FlowKind.DEPOSIT_ANNOUNCE,
        run_id=run_id,
        business_date=business_date,
        dry_run=dry_run,
        actor=actor,
    )
    stats = planner.plan()
    log.info("run.deposits_planned", credits=stats.credits, by_decision=dict(stats.by_decision))
    return stats
