"""Withdrawals with broker integration by InvestSuite: announce the payouts the core banking system made.

In this set-up (the Funding and withdrawal page, Robo Advisor) InvestSuite frees the cash at the broker,
moves it to the bank's house account and keeps transactions, holdings and ``divest_amount`` up to date
itself; the core banking system then pays the customer's counter account; the middleware only tells
InvestSuite that the payment occurred: ``POST /events/withdraw/``. The job moves no money, records no
transaction and patches nothing here. It decides each of the ledger's payouts to a counter account once:

1. the payout names no customer account, or no portfolio maps to it  -> HOLD (NO_BENEFICIARY / UNMAPPED_ACCOUNT)
2. the portfolio is deleted, or not REAL_MONEY                         -> HOLD (DELETED / PAPER_MONEY)
3. the payout's currency is not the portfolio's base currency         -> HOLD CURRENCY_MISMATCH
4. the amount is not a positive amount at the currency's minor unit   -> HOLD INVALID_AMOUNT / BELOW_MINOR_UNIT
5. otherwise                                                           -> PAY BANK_PAYOUT: announce it

    WITHDRAWAL_ANNOUNCE   SEND_EVENT: POST /events/withdraw/, Idempotency-Key = the ledger transfer's reference

A payout that cannot be announced is held, never dropped: every run decides a held payout again until it is
announced. InvestSuite refusing the announcement for good (a 4xx other than a reused key) holds it with
``ANNOUNCEMENT_REFUSED``; a 409 saying the key was used with another body stops it for a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from batch.domain import writes
from batch.domain.flow import Attention, Called, Cancel, Done, Flow, Prepared, StepSpec, Write
from batch.domain.model import Decision, PortfolioView, Reason
from batch.domain.money import MINOR_UNITS, quantum
from batch.domain.payout import FlowKind, PayoutState, Step
from batch.domain.ports import PortfolioRead, Ports
from batch.domain.records import PayoutRecord
from batch.errors import InvalidRemoteDataError, NotFoundError, RemotePermanentError


@dataclass(frozen=True)
class BankPayout:
    """A payout the core banking system made to a customer's counter account, as the ledger holds it."""

    reference: str  # the ledger transfer's reference: the event's Idempotency-Key
    customer_account: str | None  # the customer account it was paid for (maps to the portfolio)
    counter_account: str
    amount: Decimal
    currency: str
    value_date: date


@dataclass(frozen=True)
class AnnounceVerdict:
    decision: Decision
    reason: Reason
    note: str = ""


def announceable(view: PortfolioView) -> tuple[Reason, str] | None:
    """Why a payout of this portfolio may not be announced now, or None (REAL_MONEY, not deleted)."""
    if view.deleted:
        return Reason.DELETED, "portfolio deleted"
    if view.money_type != "REAL_MONEY":
        return Reason.PAPER_MONEY, f"money_type={view.money_type}"
    return None


def decide_announcement(payout: BankPayout, portfolio: PortfolioView | None) -> AnnounceVerdict:
    """What to do with one of the ledger's payouts to a counter account (see the module docstring). Pure."""
    if payout.customer_account is None:
        return AnnounceVerdict(Decision.HOLD, Reason.NO_BENEFICIARY, "the payout names no customer account")
    if portfolio is None:
        note = f"no portfolio maps to account {payout.customer_account}"
        return AnnounceVerdict(Decision.HOLD, Reason.UNMAPPED_ACCOUNT, note)
    refused = announceable(portfolio)
    if refused is not None:
        return AnnounceVerdict(Decision.HOLD, refused[0], refused[1])
    if payout.currency != portfolio.base_currency:
        note = f"payout in {payout.currency}, portfolio in {portfolio.base_currency}"
        return AnnounceVerdict(Decision.HOLD, Reason.CURRENCY_MISMATCH, note)
    if payout.currency not in MINOR_UNITS or payout.amount <= 0:
        return AnnounceVerdict(Decision.HOLD, Reason.INVALID_AMOUNT, f"{payout.amount} {payout.currency}")
    if payout.amount != payout.amount.quantize(quantum(payout.currency)):
        note = f"{payout.amount} has more decimals than {payout.currency} allows"
        return AnnounceVerdict(Decision.HOLD, Reason.BELOW_MINOR_UNIT, note)
    return AnnounceVerdict(Decision.PAY, Reason.BANK_PAYOUT)


# -- the step -----------------------------------------------------------------------------------------------


def _observe(ports: Ports, payout: PayoutRecord) -> PortfolioRead | None:
    if payout.state is not PayoutState.PLANNED:
        return None
    try:
        return ports.investsuite.get_portfolio(payout.portfolio_id)
    except NotFoundError:
        return None


def _prepare(payout: PayoutRecord, seen: Any) -> Prepared:
    if payout.state is PayoutState.PLANNED:  # the announcement is the only effect: check eligibility first
        if seen is None:
            return Cancel(Decision.HOLD, Reason.DELETED, "portfolio no longer exists (404)", {"read": "GET"})
        view = seen.to_view(None)
        refused = announceable(view)
        if refused is not None:
            return Cancel(Decision.HOLD, refused[0], f"changed since planning: {refused[1]}", {"read": "GET"})
        if view.base_currency != payout.currency:
            what = f"base currency is now {view.base_currency}"
            return Cancel(Decision.HOLD, Reason.CURRENCY_MISMATCH, what, {"base_currency": view.base_currency})
    try:
        body = writes.event_body(payout.portfolio_id, payout.currency, payout.amount)
    except InvalidRemoteDataError as exc:
        return Cancel(Decision.HOLD, Reason.INVALID_REMOTE_DATA, str(exc), {"field": exc.field})
    assert payout.credit_reference is not None
    return Write(body, {"idempotency_key": payout.credit_reference, **body["data"]})


def _call(ports: Ports, payout: PayoutRecord, write: Write) -> Called:
    assert payout.credit_reference is not None
    try:
        receipt = ports.investsuite.post_event("withdraw", idempotency_key=payout.credit_reference, body=write.payload)
    except RemotePermanentError as exc:
        said = f"{exc} {exc.body or ''}"
        if exc.status == 409 and "idempotency" in said.lower():  # the key was used with another body: a person
            return Attention(f"withdraw event key reused with a different body: {exc}", {"status": exc.status})
        evidence = {"status": exc.status, "error": said[:500]}
        what = f"InvestSuite refused the announcement: {exc}"
        return Cancel(Decision.HOLD, Reason.ANNOUNCEMENT_REFUSED, what, evidence)
    return Done({"status": receipt.status_code, "event_id": receipt.event_id}, {"event_status": receipt.status_code})


def announce_flows() -> dict[FlowKind, Flow]:
    """The withdrawal announcement flow (``[withdrawals] broker_integration = "investsuite"``)."""
    step = StepSpec(Step.SEND_EVENT, _prepare, _call, None, _observe)
    return {FlowKind.WITHDRAWAL_ANNOUNCE: Flow(FlowKind.WITHDRAWAL_ANNOUNCE, (step,))}
