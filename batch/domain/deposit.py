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

Money that moved is never left unannounced. A refusal of the event is read from its body
(``refusal_kind``): a reused key means the key was applied with another body (money announced: a person
looks, never undone); any other 409/422/404 is checked against a fresh GET of the portfolio. When the
portfolio refuses funds for good (deleted, archived, PAPER_MONEY, not ACTIVE/WAITING_FOR_FUNDS, another
base currency):

- announce-only (nothing moved): the operation is cancelled and the credit HELD with that reason;
- after ``LEDGER_MOVE``, ``refused_after_move = "reverse"`` (default): ``Divert`` to ANNOUNCE_REFUSED, then
  ``REVERSE_LEDGER_MOVE`` moves the money back (customer -> incoming account, key ``deposit-undo:<credit
  reference>``, read back after an unknown outcome) and the credit is HELD with the true reason;
  ``"attention"``: the operation stops NEEDS_ATTENTION with the true reason, the money left where it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from batch.domain import writes
from batch.domain.flow import (
    Attention,
    Called,
    Cancel,
    Divert,
    Done,
    Flow,
    NotDone,
    Prepared,
    ReadBack,
    StepSpec,
    Write,
)
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


def undo_key(credit_reference: str) -> str:
    """The idempotency key of the transfer that undoes the ledger move of a credit (one per move)."""
    return f"deposit-undo:{credit_reference}"


#: what a refused deposit event means: the key was used with another body, or the request was refused
KEY_REUSED = "KEY_REUSED"
REFUSED = "REFUSED"


def refusal_kind(status: int | None, body: str | None) -> str:
    """Read a 4xx answer to ``POST /events/deposit/``: ``KEY_REUSED`` or ``REFUSED``. Pure.

    A reused key names the ``Idempotency-Key`` header (its ``loc``) or says "idempotency"; in doubt the
    answer is read as a reused key, the reading that never undoes money (a person looks).
    """
    text = (body or "").lower()
    if "idempotency" in text:
        return KEY_REUSED
    try:
        parsed = json.loads(body or "")
    except ValueError:
        parsed = None
    if status in (404, 409, 422) and isinstance(parsed, dict):
        return REFUSED
    return KEY_REUSED


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


def decide_stopped(verdict: DepositVerdict, state: str, error: str | None) -> DepositVerdict:
    """A credit whose deposit operation stopped is listed, never placed again by a run. Pure.

    NEEDS_ATTENTION: HOLD ``PAYOUT_NEEDS_ATTENTION`` (the operation waits for a person; every run lists it).
    MOVE_REVERSED (moved, refused, moved back): the portfolio's current reason when it still refuses funds,
    else HOLD ``MOVE_REVERSED`` — the move's key is spent, so a person decides where the money goes.
    """
    if state == PayoutState.NEEDS_ATTENTION:
        return DepositVerdict(
            Decision.HOLD, Reason.PAYOUT_NEEDS_ATTENTION, f"its deposit operation needs attention: {error}"
        )
    if verdict.decision is Decision.PAY:
        note = "moved, refused by InvestSuite and moved back to the incoming account: a person decides"
        return DepositVerdict(Decision.HOLD, Reason.MOVE_REVERSED, note)
    return DepositVerdict(verdict.decision, verdict.reason, f"{verdict.note} (moved and moved back)".strip())


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


def _refused(ports: Ports, deposit: PayoutRecord, exc: RemotePermanentError, reverse: bool) -> Called:
    """A permanent refusal of the event: key reused (a person), or the portfolio refuses funds (hold/undo)."""
    evidence: dict[str, Any] = {"status": exc.status, "body": (exc.body or str(exc))[:500]}
    if refusal_kind(exc.status, exc.body) == KEY_REUSED:
        return Attention("deposit event key reused with a different body", evidence)
    stop = _still_fundable(deposit, _fresh(ports, deposit))  # the truth is InvestSuite's portfolio, not the body
    if stop is None:
        return Attention(f"deposit event refused: {exc}", evidence)
    why = f"InvestSuite refused the deposit event: {stop.what.removeprefix('changed since planning: ')}"
    evidence |= {"reason": stop.reason, **stop.evidence}
    if deposit.state is PayoutState.PLANNED:  # announce-only: no money moved, hold the credit
        return Cancel(stop.decision, stop.reason, why, evidence)
    if reverse:
        return Divert(stop.decision, stop.reason, f"{why}; the ledger move is undone", evidence)
    return Attention(f"{why} after the ledger move ({stop.reason}); the money is in the customer account", evidence)


def _announce_call(ports: Ports, deposit: PayoutRecord, write: Write, *, reverse: bool = True) -> Called:
    assert deposit.credit_reference is not None
    try:
        receipt = ports.investsuite.post_event("deposit", idempotency_key=deposit.credit_reference, body=write.payload)
    except RemotePermanentError as exc:
        return _refused(ports, deposit, exc, reverse)
    return Done({"status": receipt.status_code, "event_id": receipt.event_id}, {"event_status": receipt.status_code})


def _reverse_read_back(ports: Ports, deposit: PayoutRecord) -> ReadBack:
    assert deposit.credit_reference is not None
    undone = ports.ledger.get_transfer(undo_key(deposit.credit_reference))
    if undone is None:
        return NotDone()
    return Done({"reversal_reference": undone.reference})


def _reverse_prepare(deposit: PayoutRecord, seen: Any) -> Prepared:
    assert deposit.credit_reference is not None
    intent = {
        "idempotency_key": undo_key(deposit.credit_reference),
        "reverses": deposit.ledger_reference,
        "amount": deposit.amount,
        "currency": deposit.currency,
    }
    return Write(None, intent)


def _reverse_call(ports: Ports, deposit: PayoutRecord, write: Write) -> Called:
    assert deposit.credit_reference is not None
    try:
        transfer = ports.ledger.reverse_deposit(
            idempotency_key=undo_key(deposit.credit_reference),
            move_key=move_key(deposit.credit_reference),
            value_date=deposit.business_date,
        )
    except InsufficientFundsError as exc:
        evidence = {"available": exc.available, "requested": deposit.amount}
        return Attention("the customer account no longer holds the moved deposit: it cannot be undone", evidence)
    except PermanentError as exc:
        return Attention(f"ledger refused to undo the move: {exc}")
    note = f"announcement refused; ledger move {deposit.ledger_reference} undone by {transfer.reference}"
    return Done({"reversal_reference": transfer.reference}, note=note)


def deposit_flows(*, reverse_refused: bool = True) -> dict[FlowKind, Flow]:
    """Both deposit flows; which one a credit takes is chosen at planning (``[deposits] broker_integration``).

    ``reverse_refused`` (``[deposits] refused_after_move``): undo a move whose announcement InvestSuite
    refuses for good (True), or stop it NEEDS_ATTENTION with the true reason (False).
    """

    def announce_call(ports: Ports, deposit: PayoutRecord, write: Write) -> Called:
        return _announce_call(ports, deposit, write, reverse=reverse_refused)

    announce = StepSpec(Step.SEND_DEPOSIT_EVENT, _announce_prepare, announce_call, None, _announce_observe)
    reverse = StepSpec(Step.REVERSE_LEDGER_MOVE, _reverse_prepare, _reverse_call, _reverse_read_back)
    return {
        FlowKind.DEPOSIT: Flow(
            FlowKind.DEPOSIT,
            (StepSpec(Step.LEDGER_MOVE, _move_prepare, _move_call, _move_read_back, _fresh), announce, reverse),
        ),
        FlowKind.DEPOSIT_ANNOUNCE: Flow(FlowKind.DEPOSIT_ANNOUNCE, (announce,)),
    }
