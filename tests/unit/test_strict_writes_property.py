"""Property: over generated books, a payout the job would pay has writes the strict sandbox accepts.

For every generated portfolio (holdings and divest served as numbers, strings or exponent form; zero
positions; missing cash; 0-, 2- and 3-decimal currencies; full and partial withdrawals; ledger breaks)
the job's own decision and write preparation run exactly as in planning and execution
(``batch.domain.policy.decide``, ``batch.domain.writes``), and every body it would send is checked by
the sandbox's write rules (``batch.sandbox.rules``): none is refused. So no payout reaches the ledger
with a write that a server reading the docs this strictly would refuse afterwards.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings

from batch import codec
from batch.adapters.investsuite_models import RemotePortfolio
from batch.domain import writes
from batch.domain.model import Decision, LedgerView
from batch.domain.payout import PayoutState
from batch.domain.policy import Policy, decide
from batch.errors import InvalidRemoteDataError
from batch.sandbox import rules
from batch.sandbox.seed import portfolio_document
from batch.sandbox.store import dumps, new_id
from batch.service.planning.withdrawals import hold_unwritable
from tests.fixtures.books import BookPortfolio, books

TODAY = date(2026, 11, 30)
LEDGER_REFERENCE = "LT20261130-000000000042"


def _served(portfolio: BookPortfolio, index: int) -> dict[str, Any]:
    """The portfolio as the job's client parses it after it went over the wire from the sandbox."""
    doc = portfolio_document(
        new_id("P"), new_id("U"), index, currency=portfolio.currency, divest_amount=portfolio.divest_amount()
    )
    doc["portfolio"] = portfolio.holdings()
    parsed: dict[str, Any] = codec.loads(dumps(doc))
    return parsed


def _accepted_by_the_sandbox(stored: dict[str, Any], bodies: writes.WithdrawalWrites) -> None:
    """Each body as the sandbox would receive it (JSON text, exponent form remembered) passes its rules."""

    def wire(body: dict[str, Any]) -> Any:
        return codec.loads(codec.dumps(body), parse_float=rules.parse_request_float)

    rules.validate_transaction(wire(bodies.transaction))
    patch = rules.validate_portfolio_patch(wire(bodies.patch))
    status, _ = rules.apply_portfolio_patch(stored, patch)
    assert status == 200
    rules.validate_event(wire(bodies.event))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books)
def test_no_write_of_a_payable_portfolio_is_refused_by_the_strict_sandbox(book: list[BookPortfolio]) -> None:
    """Every payout the job would make from a generated book has writes the strict sandbox accepts."""
    for index, portfolio in enumerate(book):
        doc = _served(portfolio, index)
        remote = RemotePortfolio.model_validate(doc)
        view = remote.to_view("BE71096123456769")
        ledger = None if portfolio.ledger is None else LedgerView("ACC", portfolio.currency, portfolio.ledger)
        verdict = decide(view, ledger, Policy(), TODAY)
        if verdict.decision is not Decision.PAY:
            continue
        assert verdict.pay_amount is not None
        common: dict[str, Any] = {
            "portfolio_id": view.portfolio_id,
            "currency": view.base_currency,
            "amount": verdict.pay_amount,
            "full_withdrawal": verdict.full_withdrawal,
            "divest_planned": str(view.divest_raw),
            "divest_now": view.divest_raw,
            "config": remote.config,
            "holdings": remote.portfolio,
            "when": datetime.now(UTC),
        }
        try:
            writes.prepare_withdrawal(**common)  # planning: a refusal here is a HOLD, no money moves
        except InvalidRemoteDataError:
            continue
        # execution: the same data, now with the ledger's reference
        bodies = writes.prepare_withdrawal(**common, external_id=LEDGER_REFERENCE)
        _accepted_by_the_sandbox(doc, bodies)
        cash = bodies.patch["portfolio"][f"${view.base_currency}"]
        assert cash == bodies.base_cash - verdict.pay_amount
        assert bodies.transaction["movements"][0]["quantity"] == -verdict.pay_amount


def test_string_positions_with_a_partial_withdrawal_are_written_back_as_numbers() -> None:
    """The case wave 1 missed: string quantities beside a payable withdrawal become JSON numbers at minor units."""
    portfolio = BookPortfolio(
        currency="EUR",
        cash=Decimal("2250.00"),
        cash_form="string",
        positions={"IE00BK5BQT80": (Decimal("12.5"), "string"), "IE00B4L5Y983": (Decimal(0), "number")},
        other_cash={},
        divest=Decimal("500.00"),
        divest_form="number",
        ledger=Decimal("2250.00"),
    )
    doc = _served(portfolio, 1)
    bodies = writes.prepare_withdrawal(
        portfolio_id=doc["id"],
        currency="EUR",
        amount=Decimal("500.00000000"),  # as the journal keeps it
        full_withdrawal=False,
        divest_planned="500.00",
        divest_now=Decimal("500.00"),
        config=doc["config"],
        holdings=doc["portfolio"],
        when=datetime(2026, 11, 30, tzinfo=UTC),
        external_id=LEDGER_REFERENCE,
    )
    assert codec.dumps(bodies.patch["portfolio"]) == '{"$EUR":1750.00,"IE00BK5BQT80":12.5,"IE00B4L5Y983":0}'
    assert '"quantity":-500.00}' in codec.dumps(bodies.transaction)
    assert bodies.event["data"]["amount"] == "500.00"
    assert bodies.patch["config"]["manager_settings"]["divest_amount"] == 0
    _accepted_by_the_sandbox(doc, bodies)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books)
def test_over_generated_books_no_payout_ends_past_the_ledger_because_of_a_4xx(book: list[BookPortfolio]) -> None:
    """Planned as the planner plans, driven by the engine against the strict fakes: each payout completes."""
    from tests.unit.test_engine import World  # noqa: PLC0415 - the engine tests' world of fakes

    world = World.make()
    planned = []
    for index, portfolio in enumerate(book):
        doc = _served(portfolio, index)
        remote = RemotePortfolio.model_validate(doc)
        view = remote.to_view("BE71096123456769")
        ledger = None if portfolio.ledger is None else LedgerView("ACC", portfolio.currency, portfolio.ledger)
        verdict = decide(view, ledger, Policy(), TODAY)
        if verdict.decision is not Decision.PAY:
            continue
        if hold_unwritable(verdict, remote, view).decision is not Decision.PAY:  # the planner's check
            continue
        assert verdict.pay_amount is not None
        world.investsuite.portfolios[view.portfolio_id] = doc
        payout = replace(
            world.withdrawal(),
            portfolio_id=view.portfolio_id,
            currency=view.base_currency,
            amount=verdict.pay_amount,
            full_withdrawal=verdict.full_withdrawal,
            cash_snapshot=view.cash or Decimal(0),
            divest_snapshot=str(view.divest_raw),
        )
        world.journal.add(payout)
        world.ledger.balances[payout.ledger_account] = verdict.pay_amount
        planned.append(payout)
    world.journal.operations = {p.id: p for p in planned}  # drop the template payouts world.withdrawal() added
    world.engine().execute()
    for payout in planned:
        final = world.journal.operations[payout.id]
        assert final.state is PayoutState.COMPLETED, (final.failing_step, final.last_error)
