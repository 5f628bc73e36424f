"""Deposits (funding): the decision for an incoming credit, and the two deposit flows as data.

Money a customer pays in lands in the bank's incoming-funds account with a *beneficiary*: the customer's
investment cash account. The job decides each new credit once (DESIGN §9.6):

1. no beneficiary, or no portfolio maps to it                       -> HOLD (NO_BENEFICIARY / UNMAPPED_ACCOUNT)
2. the portfolio may not be funded: deleted, PAPER_MONEY, archived,
   status not ACTIVE or WAITING_FOR_FUNDS                            -> HOLD (DELETED / PAPER_MONEY / ...)
3. the credit's currency is not the portfolio's base currency, the
   beneficiary is no customer account of the ledger, or in another
   currency than the credit                                           -> HOLD (CURRENCY_MISMATCH / NO_LEDGER_ACCOUNT)
4. the amount is not a positive amount at the currency's minor unit -> HOLD INVALID_AMOUNT / BELOW_MINOR_UNIT
5. otherwise                                                        -> PAY DEPOSIT: move it and announce it

Money that cannot be announced is held, never dropped: a held credit is decided again by every run.

    DEPOSIT (broker integration by the client)   LEDGER_MOVE incoming -> customer account (key
        ``deposit:<credit reference>``), then SEND_DEPOSIT_EVENT
    DEPOSIT_ANNOUNCE (by InvestSuite)            SEND_DEPOSIT_EVENT only

``POST /events/deposit/`` carries ``Idempotency-Key`` = the credit's ledger reference (the core-banking
transfer id, as the docs advise); InvestSuite then records the SETTLED transaction, raises the cash and
sets ``funded_since``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from batch.domain import writes
from batch.domain.flow import Attention, Called, Cancel, Done, Flow, NotDone, Prepared, ReadBack, StepSpec, Write
from batch.domain.model import Decision, PortfolioView, Reason
from batch.domain.money import MINOR_UNITS, quantum
from batch.domain.payout import FlowKind, PayoutState, Step
from batch.domain.ports import PortfolioRead, Ports
from batch.domain.records import PayoutRecord
from batch.errors import (
    InsufficientFundsError,
    InvalidRemoteDataError,
    NotFoundError,
    PermanentError,
    RemotePermanentError,
)

#: portfolio statuses that may receive funds (InvestSuite refuses a deposit event for any other)
FUNDABLE_STATUSES = frozenset({"ACTIVE", "WAITING_FOR_FUNDS"})


@dataclass(frozen=True)
class Credit:
    """An incoming credit as the ledger holds it."""

    reference: str
    beneficiary: str | None
    amount: Decimal
    currency: str
    value_date: date


@dataclass(frozen=True)
class DepositVerdict:
    decision: Decision
    reason: Reason
    note: str = ""


def move_key(credit_reference: str) -> str:
    """The idempotency key of the ledger move of a credit."""
    return f"deposit:{credit_reference}"


def fundable(view: PortfolioView) -> tuple[Reason, str] | None:
    """Why the portfolio may not be funded now, or None."""
    if view.deleted:
        return Reason.DELETED, "portfolio deleted"
    if view.money_type != "REAL_MONEY":
        return Reason.PAPER_MONEY, f"money_type={view.money_type}"
    if view.archived:
        return Reason.ARCHIVED, "portfolio archived"
    if view.status not in FUNDABLE_STATUSES:
        return Reason.STATUS_NOT_ALLOWED, f"status={view.status}"
    return None


def decide_deposit(credit: Credit, portfolio: PortfolioView | None, account_currency: str | None) -> DepositVerdict:
    """What to do with one incoming credit (see the module docstring). Pure.

    ``account_currency``: the currency of the beneficiary's customer account in the ledger (None: none).
    """
    if credit.beneficiary is None:
        return DepositVerdict(Decision.HOLD, Reason.NO_BENEFICIARY, "the credit names no customer account")
    if portfolio is None:
        return DepositVerdict(
            Decision.HOLD, Reason.UNMAPPED_ACCOUNT, f"no portfolio maps to account {credit.beneficiary}"
        )
    refused = fundable(portfolio)
    if refused is not None:
        return DepositVerdict(Decision.HOLD, refused[0], refused[1])
    if credit.currency != portfolio.base_currency:
        note = f"credit in {credit.currency}, portfolio in {portfolio.base_currency}"
        return DepositVerdict(Decision.HOLD, Reason.CURRENCY_MISMATCH, note)
    if account_currency is None:
        return DepositVerdict(Decision.HOLD, Reason.NO_LEDGER_ACCOUNT, "no customer account of that reference")
    if account_currency != credit.currency:
        note = f"credit in {credit.currency}, customer account in {account_currency}"
        return DepositVerdict(Decision.HOLD, Reason.CURRENCY_MISMATCH, note)
    if credit.currency not in MINOR_UNITS or credit.amount <= 0:
        return DepositVerdict(Decision.HOLD, Reason.INVALID_AMOUNT, f"{credit.amount} {credit.currency}")
    if credit.amount != credit.amount.quantize(quantum(credit.currency)):
        note = f"{credit.amount} has more decimals than {credit.currency} allows"
        return DepositVerdict(Decision.HOLD, Reason.BELOW_MINOR_UNIT, note)
    return DepositVerdict(Decision.PAY, Reason.DEPOSIT)


# -- the steps ----------------------------------------------------------------------------------------------


def _fresh(ports: Ports, deposit: PayoutRecord) -> PortfolioRead | None:
    try:
        return ports.investsuite.get_portfolio(deposit.portfolio_id)
    except NotFoundError:
        return None


def _still_fundable(deposit: PayoutRecord, seen: PortfolioRead | None) -> Cancel | None:
    """Before the first effect: the portfolio may have been archived or deactivated since planning."""
    if seen is None:
        return Cancel(Decision.HOLD, Reason.DELETED, "portfolio no longer exists (404)", {"read": "GET"})
    view = seen.to_view(None)
    refused = fundable(view)
    if refused is not None:
        return Cancel(Decision.HOLD, refused[0], f"changed since planning: {refused[1]}", {"status": view.status})
    if view.base_currency != deposit.currency:
        what = f"base currency is now {view.base_currency}"
        return Cancel(Decision.HOLD, Reason.CURRENCY_MISMATCH, what, {"base_currency": view.base_currency})
    return None


def _event(deposit: PayoutRecord) -> dict[str, Any] | InvalidRemoteDataError:
    try:
        return writes.event_body(deposit.portfolio_id, deposit.currency, deposit.amount)
    except InvalidRemoteDataError as exc:
        return exc


def _move_read_back(ports: Ports, deposit: PayoutRecord) -> ReadBack:
    assert deposit.credit_reference is not None
    moved = ports.ledger.get_transfer(move_key(deposit.credit_reference))
    if moved is None:
        return NotDone()
    return Done({"ledger_reference": moved.reference}, {"ledger_reference": moved.reference})


def _move_prepare(deposit: PayoutRecord, seen: Any) -> Prepared:
    stop = _still_fundable(deposit, seen)
    if stop is not None:
        return stop
    body = _event(deposit)  # the announcement must be writable before the money is moved
    if isinstance(body, InvalidRemoteDataError):
        return Cancel(Decision.HOLD, Reason.INVALID_REMOTE_DATA, str(body), {"field": body.field})
    assert deposit.credit_reference is not None
    intent = {
        "idempotency_key": move_key(deposit.credit_reference),
        "credit": deposit.credit_reference,
        "amount": deposit.amount,
        "currency": deposit.currency,
    }
    return Write(None, intent)


def _move_call(ports: Ports, deposit: PayoutRecord, write: Write) -> Called:
    assert deposit.credit_reference is not None
    try:
        transfer = ports.ledger.move_deposit(
            idempotency_key=move_key(deposit.credit_reference),
            credit_reference=deposit.credit_reference,
            account_reference=deposit.ledger_account,
            amount=deposit.amount,
            currency=deposit.currency,
            value_date=deposit.business_date,
        )
    except InsufficientFundsError as exc:
        evidence = {"available": exc.available, "requested": deposit.amount}
        return Cancel(
            Decision.HOLD, Reason.BALANCE_CHANGED, "the incoming account no longer holds the credit", evidence
        )
    except PermanentError as exc:
        return Attention(f"ledger refused the move: {exc}")
    return Done({"ledger_reference": transfer.reference}, {"ledger_reference": transfer.reference})


def _announce_prepare(deposit: PayoutRecord, seen: Any) -> Prepared:
    if deposit.state is PayoutState.PLANNED:  # announce-only: this is the first effect, check eligibility
        stop = _still_fundable(deposit, seen)
        if stop is not None:
            return stop
    body = _event(deposit)
    if isinstance(body, InvalidRemoteDataError):
        return Attention(f"deposit event not writable: {body}", {"field": body.field})
    assert deposit.credit_reference is not None
    return Write(body, {"idempotency_key": deposit.credit_reference, **body["data"]})


def _announce_observe(ports: Ports, deposit: PayoutRecord) -> PortfolioRead | None:
    return _fresh(ports, deposit) if deposit.state is PayoutState.PLANNED else None


def _announce_call(ports: Ports, deposit: PayoutRecord, write: Write) -> Called:
    assert deposit.credit_reference is not None
    try:
        receipt = ports.investsuite.post_event("deposit", idempotency_key=deposit.credit_reference, body=write.payload)
    except RemotePermanentError as exc:
        why = "event key reused with a different body" if exc.status == 409 else f"deposit event refused: {exc}"
        return Attention(why, {"status": exc.status})
    return Done({"status": receipt.status_code, "event_id": receipt.event_id}, {"event_status": receipt.status_code})


def deposit_flows() -> dict[FlowKind, Flow]:
    """Both deposit flows; which one a credit takes is chosen at planning (``[deposits] broker_integration``)."""
    announce = StepSpec(Step.SEND_DEPOSIT_EVENT, _announce_prepare, _announce_call, None, _announce_observe)
    return {
        FlowKind.DEPOSIT: Flow(
            FlowKind.DEPOSIT,
            (StepSpec(Step.LEDGER_MOVE, _move_prepare, _move_call, _move_read_back, _fresh), announce),
        ),
        FlowKind.DEPOSIT_ANNOUNCE: Flow(FlowKind.DEPOSIT_ANNOUNCE, (announce,)),
    }
