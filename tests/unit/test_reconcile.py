"""The reconciliation rules on hand-made records: no database, no HTTP."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from batch.service.reconcile.book import BookAccount, BookFigures, BookPortfolio, match_book_account, orphan_account
from batch.service.reconcile.figures import PaidFigures, add_paid
from batch.service.reconcile.rules import (
    BreakType,
    LedgerFact,
    PayoutFacts,
    PortfolioFact,
    RemoteFacts,
    TransactionFact,
    match_payout,
    unknown_ledger_payouts,
)

ALL_STEPS = frozenset(
    {"ledger_posted", "transaction_recorded", "divest_cleared", "holdings_updated", "event_sent", "completed"}
)
PAYOUT = PayoutFacts(
    payout_id="p-1",
    portfolio_id="P1",
    currency="EUR",
    amount=Decimal("100.00"),
    state="COMPLETED",
    reached=ALL_STEPS,
    ledger_reference="LT-1",
    transaction_id="T1",
    divest_target=Decimal(0),
    holdings_target_cash=Decimal("900.00"),
    event_id="E1",
)
TRANSFER = LedgerFact("LT-1", "p-1", "CASH-1", Decimal("100.00000000"), "EUR")
SETTLED = TransactionFact("T1", "SETTLED", (("CASH_WITHDRAWAL", "SETTLED", "$EUR", Decimal("-100.00")),))
REMOTE = RemoteFacts((SETTLED,), PortfolioFact("P1", True, Decimal(0), "0", Decimal("900.00")))


def _types(
    payout: PayoutFacts = PAYOUT, transfer: LedgerFact | None = TRANSFER, remote: RemoteFacts = REMOTE
) -> list[BreakType]:
    return [b.type for b in match_payout(payout, transfer, remote)]


def test_completed_payout_agreeing_everywhere_has_no_break() -> None:
    """A completed payout found once in the ledger and once SETTLED in InvestSuite, divest and cash done: clean."""
    assert _types() == []


def test_missing_ledger_transfer_is_missing_in_ledger() -> None:
    """The journal says posted but the ledger has nothing under the key: MISSING_IN_LEDGER."""
    assert _types(transfer=None) == [BreakType.MISSING_IN_LEDGER]


def test_transfer_of_another_amount_is_an_amount_mismatch() -> None:
    """The ledger booked another amount than the journal's payout: AMOUNT_MISMATCH from the ledger."""
    (found,) = match_payout(PAYOUT, replace(TRANSFER, amount=Decimal("90")), REMOTE)
    assert (found.type, found.source, found.expected, found.found) == (
        BreakType.AMOUNT_MISMATCH,
        "ledger",
        Decimal("100.00"),
        Decimal("90"),
    )


def test_transfer_under_the_key_of_an_unposted_payout_is_named() -> None:
    """A cancelled payout whose key the ledger nevertheless holds: LEDGER_POST_NOT_IN_JOURNAL."""
    cancelled = replace(PAYOUT, state="CANCELLED", reached=frozenset())
    assert _types(cancelled, TRANSFER, RemoteFacts()) == [BreakType.LEDGER_POST_NOT_IN_JOURNAL]


def test_two_transactions_with_the_external_id_are_a_duplicate() -> None:
    """InvestSuite holds two transactions with the ledger reference: DUPLICATE_TRANSACTION naming both ids."""
    twice = replace(REMOTE, transactions=(SETTLED, replace(SETTLED, id="T2")))
    (found,) = match_payout(PAYOUT, TRANSFER, twice)
    assert found.type is BreakType.DUPLICATE_TRANSACTION
    assert found.evidence["transaction_ids"] == ["T1", "T2"]


def test_no_transaction_for_a_recorded_payout_is_missing() -> None:
    """A payout past RECORD_TRANSACTION whose external_id finds nothing: MISSING_TRANSACTION."""
    assert _types(remote=replace(REMOTE, transactions=())) == [BreakType.MISSING_TRANSACTION]


def test_no_transaction_before_the_step_is_not_a_break() -> None:
    """A payout that only reached the ledger has no transaction yet, and that is no break."""
    posted = replace(PAYOUT, state="LEDGER_POSTED", reached=frozenset({"ledger_posted"}), event_id=None)
    assert _types(posted, TRANSFER, RemoteFacts((), REMOTE.portfolio)) == []


def test_pending_transaction_is_not_settled() -> None:
    """The transaction exists but is PENDING: TRANSACTION_NOT_SETTLED."""
    pending = TransactionFact("T1", "PENDING", (("CASH_WITHDRAWAL", "PENDING", "$EUR", Decimal("-100.00")),))
    assert _types(remote=replace(REMOTE, transactions=(pending,))) == [BreakType.TRANSACTION_NOT_SETTLED]


def test_transaction_status_completed_as_in_the_docs_example_is_settled() -> None:
    """The docs' computed transaction status "COMPLETED" with a SETTLED CASH_WITHDRAWAL movement: no break."""
    completed = TransactionFact("T1", "COMPLETED", (("CASH_WITHDRAWAL", "SETTLED", "$EUR", Decimal("-100.00")),))
    assert _types(remote=replace(REMOTE, transactions=(completed,))) == []


def test_executed_movement_counts_as_settled_whatever_the_transaction_status() -> None:
    """An EXECUTED CASH_WITHDRAWAL movement settles it; an absent or unknown transaction status is informative."""
    for status in (None, "EXECUTED", "ANYTHING"):
        executed = TransactionFact("T1", status, (("CASH_WITHDRAWAL", "EXECUTED", "$EUR", Decimal("-100.00")),))
        assert _types(remote=replace(REMOTE, transactions=(executed,))) == [], status


def test_pending_movement_under_a_completed_transaction_is_not_settled() -> None:
    """The movement decides: a PENDING movement is TRANSACTION_NOT_SETTLED even if the transaction says COMPLETED."""
    pending = TransactionFact("T1", "COMPLETED", (("CASH_WITHDRAWAL", "PENDING", "$EUR", Decimal("-100.00")),))
    assert _types(remote=replace(REMOTE, transactions=(pending,))) == [BreakType.TRANSACTION_NOT_SETTLED]


def test_divest_raised_again_to_the_paid_amount_is_not_cleared() -> None:
    """The divest amount holds the paid amount again (re-raised outside the job): DIVEST_NOT_CLEARED."""
    raised = replace(REMOTE, portfolio=PortfolioFact("P1", True, Decimal("100.00"), "100.00", Decimal("900.00")))
    assert _types(remote=raised) == [BreakType.DIVEST_NOT_CLEARED]


def test_a_smaller_new_request_is_not_a_divest_break() -> None:
    """A new divest below the paid amount cannot be the paid request still standing: no break."""
    smaller = replace(REMOTE, portfolio=PortfolioFact("P1", True, Decimal("20.00"), "20.00", Decimal("900.00")))
    assert _types(remote=smaller) == []


def test_cash_above_the_target_is_holdings_not_updated() -> None:
    """InvestSuite's cash above the recorded absolute target: HOLDINGS_NOT_UPDATED with both figures."""
    assert REMOTE.portfolio is not None
    (found,) = match_payout(PAYOUT, TRANSFER, replace(REMOTE, portfolio=replace(REMOTE.portfolio, cash=Decimal(1000))))
    assert (found.type, found.expected, found.found) == (
        BreakType.HOLDINGS_NOT_UPDATED,
        Decimal("900.00"),
        Decimal(1000),
    )


def test_event_sent_without_a_kept_id_is_not_confirmed() -> None:
    """An event the journal says was sent, without InvestSuite's id kept: EVENT_NOT_CONFIRMED."""
    assert _types(replace(PAYOUT, event_id=None)) == [BreakType.EVENT_NOT_CONFIRMED]


def test_ledger_payout_with_an_unknown_key_is_unknown() -> None:
    """A payout transfer of the value date whose key is no payout of the journal: UNKNOWN_LEDGER_PAYOUT."""
    outside = LedgerFact("LT-9", "manual-123", "CASH-9", Decimal("55.00"), "EUR")
    (found,) = unknown_ledger_payouts([TRANSFER, outside], {"p-1"})
    assert (found.type, found.reference, found.found) == (BreakType.UNKNOWN_LEDGER_PAYOUT, "LT-9", Decimal("55.00"))
    assert found.evidence["ledger_account"] == "****SH-9"


def test_paid_figures_take_each_source_separately() -> None:
    """Paid figures: the journal's amount, the ledger's, InvestSuite's SETTLED quantity and the kept events."""
    figures: dict[str, PaidFigures] = {}
    add_paid(figures, PAYOUT, TRANSFER, REMOTE)
    add_paid(figures, replace(PAYOUT, payout_id="p-2", event_id=None), None, RemoteFacts((), None))
    eur = figures["EUR"]
    assert (eur.payouts, eur.journal, eur.ledger, eur.investsuite, eur.events) == (
        2,
        Decimal("200.00"),
        Decimal("100"),
        Decimal("100.00"),
        Decimal("100.00"),
    )
    assert not eur.agree


def test_book_cash_within_the_tolerance_is_clean() -> None:
    """InvestSuite cash and the ledger balance within the tolerance: no break, both counted."""
    figures: dict[str, BookFigures] = {}
    account = BookAccount("CASH-1", "EUR", "CUSTOMER_INVESTMENT_CASH", Decimal("500.01"), Decimal("300"))
    portfolio = BookPortfolio("P1", "EUR", Decimal("500.00"), "CASH-1")
    assert match_book_account(portfolio, account, Decimal("0.01"), figures) is None
    assert (figures["EUR"].investsuite_cash, figures["EUR"].ledger_balance) == (Decimal("500.00"), Decimal("500.01"))


def test_book_difference_beyond_the_tolerance_is_a_cash_mismatch() -> None:
    """A difference beyond the tolerance is a CASH_MISMATCH with the difference as evidence."""
    figures: dict[str, BookFigures] = {}
    account = BookAccount("CASH-1", "EUR", "CUSTOMER_INVESTMENT_CASH", Decimal("400"), Decimal("400"))
    found = match_book_account(BookPortfolio("P1", "EUR", Decimal("500"), "CASH-1"), account, Decimal(0), figures)
    assert found is not None and found.type is BreakType.CASH_MISMATCH
    assert found.evidence["difference"] == Decimal(100)


def test_book_unmapped_missing_and_orphan_accounts_are_named() -> None:
    """No mapping, no ledger account, another currency, and a customer account nobody maps to: each named."""
    figures: dict[str, BookFigures] = {}
    usd = BookAccount("CASH-2", "USD", "CUSTOMER_INVESTMENT_CASH", Decimal(1), Decimal(1))
    cases = [
        (BookPortfolio("P1", "EUR", Decimal(1), None), None),
        (BookPortfolio("P2", "EUR", Decimal(1), "CASH-X"), None),
        (BookPortfolio("P3", "EUR", Decimal(1), "CASH-2"), usd),
    ]
    types = [match_book_account(p, a, Decimal(0), figures) for p, a in cases]
    assert [t.type if t else None for t in types] == [
        BreakType.UNMAPPED_PORTFOLIO,
        BreakType.NO_LEDGER_ACCOUNT,
        BreakType.CURRENCY_MISMATCH,
    ]
    assert figures["EUR"].breaks == 3
    orphan = orphan_account("CASH-7", "EUR", Decimal(5), {"CASH-1"})
    assert orphan is not None and orphan.type is BreakType.ORPHAN_LEDGER_ACCOUNT
    assert orphan_account("CASH-1", "EUR", Decimal(5), {"CASH-1"}) is None


def test_deposits_announced_after_the_payout_raise_the_holdings_ceiling() -> None:
    """Cash above the target by exactly the deposits the job announced afterwards is no HOLDINGS_NOT_UPDATED."""
    raised = replace(REMOTE, portfolio=PortfolioFact("P1", True, Decimal(0), "0", Decimal("1400.00")))
    assert _types(remote=raised) == [BreakType.HOLDINGS_NOT_UPDATED]
    assert _types(replace(PAYOUT, later_credits=Decimal("500.00")), remote=raised) == []
    assert _types(replace(PAYOUT, later_credits=Decimal("499.99")), remote=raised) == [BreakType.HOLDINGS_NOT_UPDATED]


def test_a_later_payout_of_the_portfolio_takes_the_divest_over() -> None:
    """The customer asked again: the divest holds the new request; with a later payout that is not this break."""
    asked_again = replace(REMOTE, portfolio=PortfolioFact("P1", True, Decimal("300"), "300", Decimal("900.00")))
    assert _types(remote=asked_again) == [BreakType.DIVEST_NOT_CLEARED]
    assert _types(replace(PAYOUT, later_payout=True), remote=asked_again) == []


def test_a_payout_in_flight_is_counted_apart_not_as_a_difference() -> None:
    """Posted but not completed: its own in-flight figures, the paid figures still agree."""
    moving = replace(PAYOUT, state="TRANSACTION_RECORDED", reached=frozenset({"ledger_posted", "transaction_recorded"}))
    figures: dict[str, PaidFigures] = {}
    add_paid(figures, PAYOUT, TRANSFER, REMOTE)
    add_paid(figures, moving, TRANSFER, REMOTE)
    eur = figures["EUR"]
    assert (eur.journal, eur.ledger, eur.investsuite) == (Decimal("100.00"),) * 3
    assert (eur.in_flight_count, eur.in_flight_ledger, eur.in_flight_investsuite) == (1, Decimal("100"), Decimal("100"))
    assert eur.agree


def test_a_payout_stopped_after_the_ledger_stays_a_difference() -> None:
    """NEEDS_ATTENTION after the ledger post: the ledger holds it, the journal did not pay it: they disagree."""
    stopped = replace(PAYOUT, state="NEEDS_ATTENTION", reached=frozenset({"ledger_posted"}), event_id=None)
    figures: dict[str, PaidFigures] = {}
    add_paid(figures, stopped, TRANSFER, RemoteFacts(()))
    assert figures["EUR"].in_flight_count == 0 and not figures["EUR"].agree
