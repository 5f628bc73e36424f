"""The withdrawal flow, declared as data: four steps, each a pure ``prepare`` and its effects through the ports.

LEDGER_POST          read back the ledger by key (an earlier outcome may be unknown); fresh GET;
                     recheck the plan and build every InvestSuite write (nothing moves otherwise);
                     post customer cash -> payout clearing, keyed by the payout id
RECORD_TRANSACTION   POST the SETTLED CASH_WITHDRAWAL (external_id = the ledger reference); read back
                     by external_id and adopt it
UPDATE_PORTFOLIO     fresh GET; one PATCH with the whole config (divest) and the whole holdings map
                     (cash = base - paid, an absolute target recorded with the intent and reused);
                     read back: cash = target -> adopt, = base -> apply again, else a person looks
SEND_EVENT           POST /events/withdraw/ with Idempotency-Key = the payout id (replays are safe)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

from batch.domain import writes
from batch.domain.flow import Attention, Called, Cancel, Done, Flow, NotDone, Prepared, ReadBack, StepSpec, Write
from batch.domain.model import Decision, Reason, mask_account
from batch.domain.money import parse_amount
from batch.domain.payout import FlowKind, Step
from batch.domain.policy import Policy
from batch.domain.ports import PortfolioRead, Ports, TransactionRead
from batch.domain.recheck import recheck
from batch.domain.records import PayoutRecord
from batch.errors import (
    InsufficientFundsError,
    InvalidAmountError,
    InvalidRemoteDataError,
    NotFoundError,
    PayloadError,
    PermanentError,
    RemotePermanentError,
)

GONE_AFTER_LEDGER = "portfolio disappeared after the ledger payout"


@dataclass(frozen=True)
class Unreadable:
    """A fresh read answered something that is not a portfolio."""

    error: str


@dataclass(frozen=True)
class Gone:
    """A fresh read answered 404: the portfolio no longer exists."""


def _fresh(ports: Ports, payout: PayoutRecord) -> PortfolioRead | Gone | Unreadable:
    try:
        return ports.investsuite.get_portfolio(payout.portfolio_id)
    except NotFoundError:
        return Gone()
    except PayloadError as exc:
        return Unreadable(str(exc))


# -- LEDGER_POST ----------------------------------------------------------------------------------------


def _ledger_read_back(ports: Ports, payout: PayoutRecord) -> ReadBack:
    posted = ports.ledger.get_transfer(str(payout.id))
    if posted is None:
        return NotDone()
    return Done({"ledger_reference": posted.reference}, {"ledger_reference": posted.reference})


def _ledger_prepare(policy: Policy, payout: PayoutRecord, seen: Any) -> Prepared:
    """The fresh read before money moves (DESIGN §9.2-3): is the plan still right, will every write pass?"""
    if isinstance(seen, Unreadable):
        return Cancel(Decision.HOLD, Reason.INVALID_REMOTE_DATA, seen.error, {"read": "GET"})
    remote: PortfolioRead | None = None if isinstance(seen, Gone) else seen
    view = None if remote is None else remote.to_view(payout.counter_account)
    change = recheck(payout, view, policy)
    if change is not None:
        return Cancel(change.decision, change.reason, change.what, change.evidence)
    assert remote is not None and view is not None
    try:
        prepared = writes.prepare_withdrawal(
            portfolio_id=payout.portfolio_id,
            currency=payout.currency,
            amount=payout.amount,
            full_withdrawal=payout.full_withdrawal,
            divest_planned=payout.divest_snapshot or "",
            divest_now=view.divest_raw,
            config=remote.config,
            holdings=remote.portfolio,
            when=datetime.now(UTC),
        )
    except InvalidRemoteDataError as exc:
        evidence = {"field": exc.field, "problem": exc.problem, "version": remote.version}
        return Cancel(Decision.HOLD, Reason.INVALID_REMOTE_DATA, str(exc), evidence)
    intent = {
        "idempotency_key": str(payout.id),
        "account": mask_account(payout.ledger_account),
        "amount": payout.amount,
        "currency": payout.currency,
        "value_date": payout.business_date,
        "checked": {
            "version": remote.version,
            "divest_now": str(view.divest_raw),
            "investsuite_cash": prepared.base_cash,
            "writes_valid": True,
        },
    }
    return Write(None, intent)


def _ledger_call(ports: Ports, payout: PayoutRecord, write: Write) -> Called:
    try:
        transfer = ports.ledger.post_payout(
            idempotency_key=str(payout.id),
            account_reference=payout.ledger_account,
            amount=payout.amount,
            currency=payout.currency,
            value_date=payout.business_date,
            counterparty=payout.counter_account or "",
            description=f"InvestSuite withdrawal {payout.portfolio_id}",
        )
    except InsufficientFundsError as exc:
        evidence = {"available": exc.available, "requested": payout.amount}
        return Cancel(Decision.DEFER, Reason.BALANCE_CHANGED, "ledger balance short at posting time", evidence)
    except PermanentError as exc:
        return Attention(f"ledger refused: {exc}")
    return Done({"ledger_reference": transfer.reference}, {"ledger_reference": transfer.reference})


# -- RECORD_TRANSACTION -----------------------------------------------------------------------------------


def _not_ours(payout: PayoutRecord, tx: TransactionRead) -> str | None:
    """Why an existing transaction with our external_id is not the one we meant (None if it is)."""
    if len(tx.movements) != 1:
        return f"transaction {tx.id} has {len(tx.movements)} movements"
    movement = tx.movements[0]
    try:
        quantity = parse_amount(movement.get("quantity"))
    except InvalidAmountError:
        return f"transaction {tx.id} has an unreadable quantity"
    if quantity != -payout.amount or movement.get("instrument_id") != f"${payout.currency}":
        return f"transaction {tx.id} books {quantity} {movement.get('instrument_id')}, expected -{payout.amount}"
    return None


def _transaction_read_back(ports: Ports, payout: PayoutRecord) -> ReadBack:
    assert payout.ledger_reference is not None
    try:
        found = ports.investsuite.find_transactions(payout.portfolio_id, payout.ledger_reference)
    except NotFoundError:
        return Attention(GONE_AFTER_LEDGER)
    if len(found) > 1:
        return Attention(
            f"{len(found)} InvestSuite transactions carry external_id {payout.ledger_reference}",
            {"transaction_ids": [t.id for t in found]},
        )
    if not found:
        return NotDone()
    problem = _not_ours(payout, found[0])
    if problem:
        return Attention(problem, {"transaction_id": found[0].id})
    return Done({"transaction_id": found[0].id}, {"transaction_id": found[0].id})


def _transaction_prepare(payout: PayoutRecord, _seen: Any) -> Prepared:
    assert payout.ledger_reference is not None
    posted = payout.ledger_posted_at or datetime.combine(payout.business_date, dtime(0), UTC)
    try:
        body = writes.transaction_body(payout.ledger_reference, payout.currency, payout.amount, posted)
    except InvalidRemoteDataError as exc:
        return Attention(f"transaction not writable: {exc}", {"field": exc.field})
    return Write(body, {"external_id": payout.ledger_reference})


def _transaction_call(ports: Ports, payout: PayoutRecord, write: Write) -> Called:
    try:
        tx = ports.investsuite.create_transaction(payout.portfolio_id, write.payload)
    except NotFoundError as exc:
        return Attention(GONE_AFTER_LEDGER, {"status": exc.status})
    except RemotePermanentError as exc:
        return Attention(f"InvestSuite refused the transaction: {exc}", {"status": exc.status})
    return Done({"transaction_id": tx.id}, {"transaction_id": tx.id})


# -- UPDATE_PORTFOLIO ---------------------------------------------------------------------------------------


def _cash_now(payout: PayoutRecord, remote: PortfolioRead) -> tuple[Decimal, dict[str, Any]] | Attention:
    view = remote.to_view(None)
    if view.holdings_error:
        return Attention(f"holdings unreadable: {view.holdings_error}")
    cash = view.holdings.get(f"${payout.currency}", Decimal(0))
    return cash, {"cash_now": cash, "divest_now": str(view.divest_raw), "version": remote.version}


def _holdings_read_back(ports: Ports, payout: PayoutRecord) -> ReadBack:
    seen = _fresh(ports, payout)
    if isinstance(seen, Gone):
        return Attention(GONE_AFTER_LEDGER)
    if isinstance(seen, Unreadable):
        return Attention(f"cannot read the portfolio back: {seen.error}")
    base, target = payout.holdings_base_cash, payout.holdings_target_cash
    if base is None or target is None:  # no earlier attempt recorded a target: nothing was sent
        return NotDone(seen)
    now = _cash_now(payout, seen)
    if isinstance(now, Attention):
        return now
    cash, evidence = now
    evidence |= {"base_cash": base, "target_cash": target}
    if cash == target:
        return Done(evidence)
    if cash != base:
        return Attention("holdings cash is neither the base nor the target after an unknown outcome", evidence)
    return NotDone(seen)


def _holdings_prepare(payout: PayoutRecord, seen: Any) -> Prepared:
    if isinstance(seen, Gone):
        return Attention(GONE_AFTER_LEDGER)
    if isinstance(seen, Unreadable):
        return Attention(f"cannot read the portfolio back: {seen.error}")
    now = _cash_now(payout, seen)
    if isinstance(now, Attention):
        return now
    cash, evidence = now
    if payout.holdings_target_cash is not None and payout.holdings_base_cash is not None:
        # an earlier attempt recorded its absolute target: reuse it, never recompute it (DESIGN §9.1)
        base, target = payout.holdings_base_cash, payout.holdings_target_cash
        evidence |= {"base_cash": base, "target_cash": target}
    else:
        base, target = cash, cash - payout.amount
        if base != payout.cash_snapshot:
            evidence["cash_moved_since_planning"] = {"snapshot": payout.cash_snapshot, "now": base}
        if target < 0:
            return Attention("holdings cash is below the amount paid", evidence)
    divest_now = seen.to_view(None).divest_raw
    divest = writes.divest_after_payout(
        divest_now, payout.divest_snapshot or "", payout.amount, payout.full_withdrawal, payout.currency
    )
    if divest:
        evidence["divest_changed_since_planning"] = {"snapshot": payout.divest_snapshot, "now": str(divest_now)}
    try:
        # built afresh from this read, every attempt: a refused body is never sent again as it was
        body = writes.patch_body(seen.config, seen.portfolio, payout.currency, target, divest)
    except InvalidRemoteDataError as exc:
        return Attention(f"portfolio update not writable: {exc}", evidence | {"field": exc.field})
    return Write(
        {"body": body, "read_version": seen.version, "evidence": evidence},
        {"base_cash": base, "target_cash": target, "divest_target": divest, **evidence},
        {"holdings_base_cash": base, "holdings_target_cash": target, "divest_target": format(divest, "f")},
    )


def _holdings_call(ports: Ports, payout: PayoutRecord, write: Write) -> Called:
    evidence = dict(write.payload["evidence"])
    try:
        patched = ports.investsuite.patch_portfolio(payout.portfolio_id, write.payload["body"])
    except RemotePermanentError as exc:
        return Attention(f"InvestSuite refused the portfolio update: {exc}", evidence | {"status": exc.status})
    read_version = write.payload["read_version"]
    if read_version is not None and patched.version is not None and patched.version != read_version + 1:
        # no precondition exists in the API: say so when someone else wrote between our read and our PATCH
        evidence["concurrent_write"] = {"read_version": read_version, "patched_version": patched.version}
    return Done(evidence, note=execution_note(evidence))


def execution_note(evidence: dict[str, Any]) -> str | None:
    """What changed on InvestSuite's side between planning and paying, for the report."""
    notes = []
    if "divest_changed_since_planning" in evidence:
        changed = evidence["divest_changed_since_planning"]
        notes.append(f"divest changed since planning ({changed['snapshot']} -> {changed['now']}): kept the unpaid rest")
    if "cash_moved_since_planning" in evidence:
        moved = evidence["cash_moved_since_planning"]
        notes.append(f"holdings cash moved since planning ({moved['snapshot']} -> {moved['now']})")
    if "concurrent_write" in evidence:
        seen = evidence["concurrent_write"]
        notes.append(
            f"portfolio written by someone else between our read and our PATCH "
            f"(version {seen['read_version']} -> {seen['patched_version']})"
        )
    return "; ".join(notes) or None


# -- SEND_EVENT ---------------------------------------------------------------------------------------------


def _event_prepare(payout: PayoutRecord, _seen: Any) -> Prepared:
    try:
        body = writes.event_body(payout.portfolio_id, payout.currency, payout.amount)
    except InvalidRemoteDataError as exc:
        return Attention(f"event not writable: {exc}", {"field": exc.field})
    return Write(body, {"idempotency_key": str(payout.id), **body["data"]})


def _event_call(ports: Ports, payout: PayoutRecord, write: Write) -> Called:
    try:
        receipt = ports.investsuite.post_event("withdraw", idempotency_key=str(payout.id), body=write.payload)
    except RemotePermanentError as exc:
        why = "event key reused with a different body" if exc.status == 409 else f"event refused: {exc}"
        return Attention(why, {"status": exc.status})
    # the id InvestSuite gave the event is the reconcile's evidence that it was received
    return Done({"status": receipt.status_code, "event_id": receipt.event_id}, {"event_status": receipt.status_code})


def withdrawal_flow(policy: Policy) -> Flow:
    """The withdrawal's steps; ``policy`` decides whether a planned payout is still eligible when it is paid."""

    def ledger_prepare(payout: PayoutRecord, seen: Any) -> Prepared:
        return _ledger_prepare(policy, payout, seen)

    return Flow(
        FlowKind.WITHDRAWAL,
        (
            StepSpec(Step.LEDGER_POST, ledger_prepare, _ledger_call, _ledger_read_back, _fresh),
            StepSpec(Step.RECORD_TRANSACTION, _transaction_prepare, _transaction_call, _transaction_read_back),
            StepSpec(Step.UPDATE_PORTFOLIO, _holdings_prepare, _holdings_call, _holdings_read_back, _fresh),
            StepSpec(Step.SEND_EVENT, _event_prepare, _event_call),
        ),
    )
