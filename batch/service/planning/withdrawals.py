"""Plan: list the pending withdrawals, read the ledger set-wise, decide, and record every decision.

The pending list is paged by offset over a live filter, so nothing remote is changed while paging:
every candidate and its decision is written to the journal (one transaction per page) before any
payout is executed. One ledger query per page, never one per portfolio; pages are streamed, so
memory stays flat however large the book is.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal

import stamina
import structlog

from batch.adapters.investsuite import InvestSuiteClient
from batch.adapters.investsuite_models import MalformedPortfolio, PortfolioPage, RemotePortfolio, RemoteUser
from batch.adapters.journal import DecisionRow, Journal, NewPayout
from batch.adapters.ledger import Ledger
from batch.domain import writes
from batch.domain.model import AccountMap, Decision, LedgerView, PortfolioView, Reason
from batch.domain.payout import PayoutState
from batch.domain.policy import Policy, Verdict, decide
from batch.errors import BatchError, InvalidRemoteDataError, NotFoundError, TransientError
from batch.service.read_ahead import read_ahead

log = structlog.get_logger("batch.plan")


@dataclass
class PlanStats:
    pages: int = 0
    candidates: int = 0
    duplicates: int = 0
    ledger_queries: int = 0
    by_decision: Counter[str] = field(default_factory=Counter)


def _open_payout_verdict(verdict: Verdict, payout_id: uuid.UUID, state: PayoutState) -> Verdict:
    """A portfolio whose earlier payout is still open gets no second one; the request stays counted.

    Waiting for a human (HELD, NEEDS_ATTENTION) is a HOLD, so the run reports it as an exception;
    anything else is in flight and DEFERs to it.
    """
    if state is PayoutState.HELD:
        decision, reason = Decision.HOLD, Reason.AWAITING_APPROVAL
    elif state is PayoutState.NEEDS_ATTENTION:
        decision, reason = Decision.HOLD, Reason.PAYOUT_NEEDS_ATTENTION
    else:
        decision, reason = Decision.DEFER, Reason.PAYOUT_IN_PROGRESS
    return replace(
        verdict,
        decision=decision,
        reason=reason,
        pay_amount=None,
        held_payout=False,
        note=f"open payout {payout_id} ({state})",
    )


def hold_unwritable(verdict: Verdict, remote: RemotePortfolio, view: PortfolioView) -> Verdict:
    """A payout whose InvestSuite writes would be refused is held before it is planned (DESIGN §9.2)."""
    assert verdict.pay_amount is not None
    try:
        writes.prepare_withdrawal(
            portfolio_id=view.portfolio_id,
            currency=view.base_currency,
            amount=verdict.pay_amount,
            full_withdrawal=verdict.full_withdrawal,
            divest_planned=str(view.divest_raw),
            divest_now=view.divest_raw,
            config=remote.config,
            holdings=remote.portfolio,
            when=datetime.now(UTC),
        )
    except InvalidRemoteDataError as exc:
        return replace(
            verdict,
            decision=Decision.HOLD,
            reason=Reason.INVALID_REMOTE_DATA,
            pay_amount=None,
            held_payout=False,
            note=f"{exc.field}: {exc.problem}",
        )
    return verdict


def _counter_account(user: RemoteUser | None) -> str | None:
    if user is None or user.counter_account is None:
        return None
    number = user.counter_account.bank_account_number
    return number.strip() if isinstance(number, str) and number.strip() else None


@dataclass
class Planner:
    journal: Journal
    ledger: Ledger
    client: InvestSuiteClient
    policy: Policy
    accounts: AccountMap
    run_id: uuid.UUID
    business_date: date
    dry_run: bool
    actor: str
    on_page: Callable[[PlanStats], None] | None = None
    run_totals: dict[str, Decimal] = field(default_factory=dict)
    stats: PlanStats = field(default_factory=PlanStats)

    def plan(self, portfolio_ids: Sequence[str] | None = None) -> PlanStats:
        pages: Iterable[PortfolioPage] = (
            self._explicit_pages(portfolio_ids) if portfolio_ids else self.client.iter_pending_pages()
        )
        for page in read_ahead(pages, "plan-read-ahead"):
            self._plan_page(page)
            if self.on_page is not None:
                self.on_page(self.stats)
        return self.stats

    def _explicit_pages(self, portfolio_ids: Sequence[str]) -> Iterator[PortfolioPage]:
        """``--portfolio`` re-runs and the listener's bursts: these portfolios, in pages of 100.

        One listing per page (``id in [...]``, owners embedded); a portfolio the listing does not return
        (deleted, unreadable, not found) is read with its own ``GET``, as a single one always was.
        """
        for start in range(0, len(portfolio_ids), 100):
            chunk = list(dict.fromkeys(portfolio_ids[start : start + 100]))
            items: list[RemotePortfolio | MalformedPortfolio] = []
            users: dict[str, RemoteUser] = {}
            listed: set[str] = set()
            if len(chunk) > 1 and not any("'" in pid or not pid for pid in chunk):
                query = "id in [" + ", ".join(f"'{pid}'" for pid in chunk) + "]"
                for page in self.client.iter_portfolio_pages(query, page_size=100, embed_owner=True):
                    users.update(page.users)
                    for item in page.items:
                        if isinstance(item, RemotePortfolio) and item.id in chunk and item.id not in listed:
                            listed.add(item.id)
                            items.append(item)
            for pid in chunk:
                if pid in listed:
                    continue
                try:
                    portfolio = self.client.get_portfolio(pid)
                except NotFoundError:
                    items.append(MalformedPortfolio(raw=None, portfolio_id=pid, error="portfolio not found (404)"))
                    continue
                items.append(portfolio)
            yield PortfolioPage(items=items, users=users, page_number=start // 100 + 1)

    def _balances(self, references: list[str]) -> dict[str, LedgerView]:
        """One ledger query for the page; an unreachable ledger is retried (stamina: 4 tries, jittered backoff)."""
        for attempt in stamina.retry_context(
            on=TransientError, attempts=4, timeout=None, wait_initial=0.5, wait_max=4.0, wait_jitter=0.5
        ):
            with attempt:
                if attempt.num > 1:
                    log.warning("plan.ledger_retry", attempt=attempt.num - 1)
                self.stats.ledger_queries += 1
                return self.ledger.available_balances(references)
        raise AssertionError("unreachable: stamina re-raises the last error")

    def _user(self, page: PortfolioPage, user_id: str | None) -> RemoteUser | None:
        if user_id is None:
            return None
        if user_id in page.users:
            return page.users[user_id]
        try:
            user = self.client.get_user(user_id)
        except NotFoundError:
            return None
        page.users[user_id] = user
        return user

    def _plan_page(self, page: PortfolioPage) -> None:
        self.stats.pages += 1
        parsed: list[tuple[RemotePortfolio | MalformedPortfolio, PortfolioView | None, str | None]] = []
        for item in page.items:
            if isinstance(item, MalformedPortfolio):
                parsed.append((item, None, None))
                continue
            try:
                view = item.to_view(_counter_account(self._user(page, item.owned_by_user_id)))
            except BatchError as exc:
                parsed.append((MalformedPortfolio(raw=None, portfolio_id=item.id, error=str(exc)), None, None))
                continue
            parsed.append((item, view, self.accounts.account_for(view.portfolio_id, view.external_id)))
        references = sorted({ref for _, _, ref in parsed if ref})
        balances = self._balances(references) if references else {}
        portfolio_ids = [v.portfolio_id for _, v, _ in parsed if v is not None]
        open_payouts = self.journal.open_payout_portfolios(portfolio_ids)

        rows: list[tuple[DecisionRow, NewPayout | None]] = []
        for index, (item, candidate, ref) in enumerate(parsed):
            self.stats.candidates += 1
            if candidate is None:
                assert isinstance(item, MalformedPortfolio)
                pid = item.portfolio_id or f"UNREADABLE-{self.run_id.hex[:8]}-{self.stats.pages}-{index}"
                row = DecisionRow(
                    pid,
                    Decision.HOLD,
                    Reason.MALFORMED_PAYLOAD,
                    None,
                    None,
                    None,
                    False,
                    None,
                    None,
                    None,
                    None,
                    False,
                    {"error": item.error[:500]},
                )
                rows.append((row, None))
                self.stats.by_decision[row.decision] += 1
                continue
            verdict = decide(
                candidate, balances.get(ref) if ref else None, self.policy, self.business_date, self.run_totals
            )
            if candidate.portfolio_id in open_payouts:
                verdict = _open_payout_verdict(verdict, *open_payouts[candidate.portfolio_id])
            elif verdict.pay_amount is not None:
                assert isinstance(item, RemotePortfolio)
                verdict = hold_unwritable(verdict, item, candidate)
            rows.append(self._row(candidate, ref, verdict))
            self.stats.by_decision[verdict.decision] += 1
        inserted = self.journal.record_decisions(
            run_id=self.run_id,
            business_date=self.business_date,
            dry_run=self.dry_run,
            actor=self.actor,
            decisions=rows,
        )
        self.stats.duplicates += len(rows) - inserted

    def _row(self, view: PortfolioView, ref: str | None, verdict: Verdict) -> tuple[DecisionRow, NewPayout | None]:
        raw = view.divest_raw
        details: dict[str, object] = {"note": verdict.note} if verdict.note else {}
        details["status"] = view.status
        payout: NewPayout | None = None
        creates_payout = verdict.decision is Decision.PAY or verdict.held_payout
        if creates_payout and not self.dry_run:
            assert verdict.pay_amount is not None and ref is not None and view.counter_account is not None
            payout = NewPayout(
                id=uuid.uuid4(),
                portfolio_id=view.portfolio_id,
                state=PayoutState.PLANNED if verdict.decision is Decision.PAY else PayoutState.HELD,
                currency=view.base_currency,
                amount=verdict.pay_amount,
                full_withdrawal=verdict.full_withdrawal,
                ledger_account=ref,
                counter_account=view.counter_account,
                cash_snapshot=view.cash if view.cash is not None else Decimal(0),
                divest_snapshot=str(raw),
                hold_reason=None if verdict.decision is Decision.PAY else verdict.reason,
            )
        if verdict.decision is Decision.PAY and verdict.pay_amount is not None and verdict.currency:
            self.run_totals[verdict.currency] = self.run_totals.get(verdict.currency, Decimal(0)) + verdict.pay_amount
        if verdict.held_payout:
            details["held_amount"] = str(verdict.pay_amount)
        row = DecisionRow(
            portfolio_id=view.portfolio_id,
            decision=verdict.decision,
            reason=verdict.reason,
            currency=verdict.currency,
            requested_raw=None if raw is None else str(raw)[:100],
            requested_amount=verdict.requested,
            full_withdrawal=verdict.full_withdrawal,
            ledger_account=ref,
            ledger_available=verdict.ledger_available,
            investsuite_cash=verdict.investsuite_cash,
            pay_amount=verdict.pay_amount if verdict.decision is Decision.PAY else None,
            reconciliation_break=verdict.reconciliation_break,
            details=details,
        )
        return row, payout
