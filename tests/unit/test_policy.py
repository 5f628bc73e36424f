"""The decision policy, one table row per money scenario, plus properties that hold for any input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.domain.model import Decision, LedgerView, PortfolioView, Reason, ReconciliationPolicy
from batch.domain.money import MINOR_UNITS, minor_unit
from batch.domain.policy import Policy, Verdict, decide
from batch.settings import PolicySettings

D = Decimal
TODAY = date(2026, 11, 21)
ISIN = "US0378331005"


def portfolio(**overrides: Any) -> PortfolioView:
    """An eligible EUR portfolio asking 100 EUR with 1000 EUR cash; override what a case is about."""
    values: dict[str, Any] = {
        "portfolio_id": "P-1",
        "external_id": "EXT-1",
        "owner_user_id": "U-1",
        "base_currency": "EUR",
        "money_type": "REAL_MONEY",
        "status": "ACTIVE",
        "archived": False,
        "deleted": False,
        "divest_raw": D("100"),
        "holdings": {"$EUR": D("1000")},
        "holdings_error": None,
        "counter_account": "BE71096123456769",
    }
    values.update(overrides)
    return PortfolioView(**values)


def ledger(available: str | Decimal = "1000", currency: str = "EUR") -> LedgerView:
    """The ledger account the portfolio maps to, 1000 EUR available by default."""
    return LedgerView(account_reference="EXT-1", currency=currency, available=D(available))


@dataclass(frozen=True)
class Expect:
    """What a row expects of the verdict; flags default to False."""

    decision: Decision
    reason: Reason
    pay_amount: Decimal | None = None
    requested: Decimal | None = None
    full_withdrawal: bool = False
    reconciliation_break: bool = False
    held_payout: bool = False


@dataclass(frozen=True)
class Case:
    """One row of the table: the inputs to ``decide`` and the verdict expected."""

    portfolio: PortfolioView
    expect: Expect
    ledger: LedgerView | None = field(default_factory=ledger)
    policy: Policy = field(default_factory=Policy)
    run_totals: Mapping[str, Decimal] | None = None


PAY, DEFER, SKIP, HOLD = Decision.PAY, Decision.DEFER, Decision.SKIP, Decision.HOLD
R = Reason
TOLERANT = Policy(reconciliation_tolerance=D("500"))
STRICT = Policy(reconciliation_policy=ReconciliationPolicy.HOLD)
CAP_100 = Policy(max_payout={"EUR": D("100")})
CAP_99 = Policy(max_payout={"EUR": D("99.99")})
RUN_CAP = Policy(max_run_total={"EUR": D("1000")})
NO_CASH: dict[str, Decimal] = {}


def full(divest: str = "1E+100", **overrides: Any) -> PortfolioView:
    """A full-withdrawal request (divest amount >= 1e100)."""
    return portfolio(divest_raw=D(divest), **overrides)


CASES = [
    # --- partial withdrawals ---------------------------------------------------------------------
    pytest.param(Case(portfolio(), Expect(PAY, R.PARTIAL, D("100.00"), D("100.00"))), id="partial-enough-cash"),
    pytest.param(
        Case(portfolio(divest_raw=D("1000")), Expect(PAY, R.PARTIAL, D("1000.00"), D("1000.00"))),
        id="partial-exactly-all-cash",
    ),
    pytest.param(
        Case(portfolio(divest_raw=D("1500")), Expect(DEFER, R.INSUFFICIENT_CASH, None, D("1500.00"))),
        id="partial-insufficient-cash",
    ),
    pytest.param(
        Case(portfolio(divest_raw=D("1000.01")), Expect(DEFER, R.INSUFFICIENT_CASH, None, D("1000.01"))),
        id="partial-one-cent-short",
    ),
    # --- full withdrawals ------------------------------------------------------------------------
    pytest.param(
        Case(
            full(holdings={"$EUR": D("750.25")}),
            Expect(PAY, R.FULL_WITHDRAWAL, D("750.25"), D("750.25"), True),
            ledger("750.25"),
        ),
        id="full-1e100-no-positions",
    ),
    pytest.param(
        Case(
            full("1e100", holdings={"$EUR": D("750.25")}),
            Expect(PAY, R.FULL_WITHDRAWAL, D("750.25"), D("750.25"), True),
            ledger("750.25"),
        ),
        id="full-1e100-lowercase-exponent",
    ),
    pytest.param(
        Case(
            full("3.5E+120", holdings={"$EUR": D("750.25")}),
            Expect(PAY, R.FULL_WITHDRAWAL, D("750.25"), D("750.25"), True),
            ledger("750.25"),
        ),
        id="full-above-1e100",
    ),
    pytest.param(
        Case(
            full(holdings={"$EUR": D("800")}),
            Expect(PAY, R.FULL_WITHDRAWAL, D("800.00"), D("800.00"), True),
            ledger("1000"),
            TOLERANT,
        ),
        id="full-pays-min-investsuite-smaller",
    ),
    pytest.param(
        Case(full(), Expect(PAY, R.FULL_WITHDRAWAL, D("600.00"), D("600.00"), True), ledger("600"), TOLERANT),
        id="full-pays-min-ledger-smaller",
    ),
    pytest.param(
        Case(
            full(holdings={"$EUR": D("1000"), ISIN: D("3")}), Expect(DEFER, R.POSITIONS_OPEN, None, D("1000.00"), True)
        ),
        id="full-positions-open",
    ),
    pytest.param(
        Case(
            full(holdings={"$EUR": D("1000"), ISIN: D("0.0001")}),
            Expect(DEFER, R.POSITIONS_OPEN, None, D("1000.00"), True),
        ),
        id="full-fractional-position-open",
    ),
    pytest.param(
        Case(
            full(holdings={"$EUR": D("1000"), ISIN: D("0")}),
            Expect(PAY, R.FULL_WITHDRAWAL, D("1000.00"), D("1000.00"), True),
        ),
        id="full-zero-quantity-position-is-closed",
    ),
    pytest.param(
        Case(
            full(holdings={"$EUR": D("1000"), ISIN: D("0E-8")}),
            Expect(PAY, R.FULL_WITHDRAWAL, D("1000.00"), D("1000.00"), True),
        ),
        id="full-zero-with-exponent-position-is-closed",
    ),
    pytest.param(
        Case(
            full(holdings={"$EUR": D("1000"), "$USD": D("50")}),
            Expect(PAY, R.FULL_WITHDRAWAL, D("1000.00"), D("1000.00"), True),
        ),
        id="full-other-cash-key-is-not-a-position",
    ),
    pytest.param(
        Case(full(holdings=NO_CASH), Expect(DEFER, R.NOTHING_TO_PAY, None, D("0"), True), ledger("0")),
        id="full-no-cash-anywhere",
    ),
    # --- eligibility -----------------------------------------------------------------------------
    pytest.param(Case(portfolio(money_type="PAPER_MONEY"), Expect(SKIP, R.PAPER_MONEY)), id="paper-money"),
    pytest.param(Case(portfolio(archived=True), Expect(SKIP, R.ARCHIVED)), id="archived"),
    pytest.param(Case(portfolio(deleted=True), Expect(SKIP, R.DELETED)), id="deleted"),
    pytest.param(
        Case(portfolio(status="WAITING_FOR_FUNDS"), Expect(SKIP, R.STATUS_NOT_ALLOWED)), id="status-waiting-for-funds"
    ),
    pytest.param(Case(portfolio(status=None), Expect(SKIP, R.STATUS_NOT_ALLOWED)), id="status-missing"),
    pytest.param(
        Case(
            portfolio(status="WAITING_FOR_FUNDS"),
            Expect(PAY, R.PARTIAL, D("100.00"), D("100.00")),
            policy=Policy(allowed_statuses=frozenset({"ACTIVE", "WAITING_FOR_FUNDS"})),
        ),
        id="custom-statuses-allow-waiting-for-funds",
    ),
    pytest.param(
        Case(portfolio(), Expect(SKIP, R.STATUS_NOT_ALLOWED), policy=Policy(allowed_statuses=frozenset({"OPEN"}))),
        id="custom-statuses-exclude-active",
    ),
    # --- where to pay ----------------------------------------------------------------------------
    pytest.param(
        Case(portfolio(), Expect(HOLD, R.NO_LEDGER_ACCOUNT, None, D("100.00")), ledger=None), id="no-ledger-account"
    ),
    pytest.param(
        Case(portfolio(), Expect(HOLD, R.CURRENCY_MISMATCH, None, D("100.00")), ledger("1000", "USD")),
        id="ledger-currency-mismatch",
    ),
    pytest.param(
        Case(portfolio(counter_account=None), Expect(HOLD, R.NO_COUNTER_ACCOUNT, None, D("100.00"))),
        id="no-counter-account",
    ),
    # --- reconciliation --------------------------------------------------------------------------
    pytest.param(
        Case(
            portfolio(),
            Expect(PAY, R.PARTIAL, D("100.00"), D("100.00")),
            ledger("999.99"),
            Policy(reconciliation_tolerance=D("0.01")),
        ),
        id="break-at-tolerance-not-flagged",
    ),
    pytest.param(
        Case(
            portfolio(),
            Expect(PAY, R.PARTIAL, D("100.00"), D("100.00"), reconciliation_break=True),
            ledger("999.98"),
            Policy(reconciliation_tolerance=D("0.01")),
        ),
        id="break-just-beyond-tolerance-flagged",
    ),
    pytest.param(
        Case(
            portfolio(divest_raw=D("400")),
            Expect(PAY, R.PARTIAL, D("400.00"), D("400.00"), reconciliation_break=True),
            ledger("400"),
        ),
        id="break-pay-smaller-ledger-smaller-pays",
    ),
    pytest.param(
        Case(
            portfolio(divest_raw=D("400"), holdings={"$EUR": D("400")}),
            Expect(PAY, R.PARTIAL, D("400.00"), D("400.00"), reconciliation_break=True),
            ledger("1000"),
        ),
        id="break-pay-smaller-investsuite-smaller-pays",
    ),
    pytest.param(
        Case(
            portfolio(divest_raw=D("400.01")),
            Expect(DEFER, R.INSUFFICIENT_CASH, None, D("400.01"), reconciliation_break=True),
            ledger("400"),
        ),
        id="break-smaller-ledger-short-defers",
    ),
    pytest.param(
        Case(
            portfolio(divest_raw=D("500"), holdings={"$EUR": D("400")}),
            Expect(DEFER, R.INSUFFICIENT_CASH, None, D("500.00"), reconciliation_break=True),
            ledger("1000"),
        ),
        id="break-smaller-investsuite-short-defers",
    ),
    pytest.param(
        Case(
            portfolio(),
            Expect(HOLD, R.RECONCILIATION_BREAK, None, D("100.00"), reconciliation_break=True),
            ledger("400"),
            STRICT,
        ),
        id="break-policy-hold",
    ),
    pytest.param(
        Case(portfolio(), Expect(PAY, R.PARTIAL, D("100.00"), D("100.00")), policy=STRICT),
        id="no-break-policy-hold-pays",
    ),
    pytest.param(
        Case(full(), Expect(HOLD, R.RECONCILIATION_BREAK, None, D("400.00"), True, True), ledger("400"), STRICT),
        id="full-break-policy-hold",
    ),
    pytest.param(
        Case(
            portfolio(holdings=NO_CASH),
            Expect(DEFER, R.INSUFFICIENT_CASH, None, D("100.00"), reconciliation_break=True),
        ),
        id="missing-investsuite-cash-key-is-zero",
    ),
    pytest.param(
        Case(
            portfolio(holdings=NO_CASH, divest_raw=D("0.01")),
            Expect(DEFER, R.INSUFFICIENT_CASH, None, D("0.01")),
            ledger("0"),
        ),
        id="missing-investsuite-cash-key-is-zero-no-break",
    ),
    # --- amounts and minor units -----------------------------------------------------------------
    pytest.param(
        Case(portfolio(divest_raw=D("10.005")), Expect(PAY, R.PARTIAL, D("10.00"), D("10.00"))), id="eur-10.005-down"
    ),
    pytest.param(
        Case(portfolio(divest_raw=D("10.009")), Expect(PAY, R.PARTIAL, D("10.00"), D("10.00"))), id="eur-10.009-down"
    ),
    pytest.param(
        Case(
            portfolio(base_currency="JPY", divest_raw=D("1234.5"), holdings={"$JPY": D("5000")}),
            Expect(PAY, R.PARTIAL, D("1234"), D("1234")),
            ledger("5000", "JPY"),
        ),
        id="jpy-1234.5-down",
    ),
    pytest.param(
        Case(
            portfolio(base_currency="KWD", divest_raw=D("1.2345"), holdings={"$KWD": D("10")}),
            Expect(PAY, R.PARTIAL, D("1.234"), D("1.234")),
            ledger("10", "KWD"),
        ),
        id="kwd-1.2345-down",
    ),
    pytest.param(
        Case(portfolio(divest_raw=D("1E+2")), Expect(PAY, R.PARTIAL, D("100.00"), D("100.00"))),
        id="exponent-form-amount",
    ),
    pytest.param(
        Case(portfolio(divest_raw=D("1000.009")), Expect(PAY, R.PARTIAL, D("1000.00"), D("1000.00"))),
        id="rounded-down-fits-cash",
    ),
    pytest.param(
        Case(
            portfolio(divest_raw=D("100"), holdings={"$EUR": D("100.009")}),
            Expect(PAY, R.PARTIAL, D("100.00"), D("100.00")),
            ledger("100.009"),
        ),
        id="cash-rounded-down-too",
    ),
    pytest.param(Case(portfolio(divest_raw=D("0.004")), Expect(HOLD, R.INVALID_AMOUNT)), id="below-minor-unit"),
    pytest.param(
        Case(
            portfolio(base_currency="JPY", divest_raw=D("0.9"), holdings={"$JPY": D("5000")}),
            Expect(HOLD, R.INVALID_AMOUNT),
            ledger("5000", "JPY"),
        ),
        id="below-minor-unit-jpy",
    ),
    pytest.param(Case(portfolio(divest_raw=D("-5")), Expect(HOLD, R.INVALID_AMOUNT)), id="negative"),
    pytest.param(Case(portfolio(divest_raw="12,50"), Expect(HOLD, R.INVALID_AMOUNT)), id="non-numeric-string"),
    pytest.param(Case(portfolio(divest_raw="NaN"), Expect(HOLD, R.INVALID_AMOUNT)), id="nan-string"),
    pytest.param(Case(portfolio(divest_raw=D("1e20")), Expect(HOLD, R.INVALID_AMOUNT)), id="absurd-1e20"),
    pytest.param(
        Case(portfolio(divest_raw=D("9.99E+99")), Expect(HOLD, R.INVALID_AMOUNT)), id="absurd-just-below-full"
    ),
    pytest.param(Case(portfolio(divest_raw=D("0")), Expect(SKIP, R.NO_DIVEST_AMOUNT)), id="zero"),
    pytest.param(Case(portfolio(divest_raw=D("0.00")), Expect(SKIP, R.NO_DIVEST_AMOUNT)), id="zero-with-decimals"),
    pytest.param(Case(portfolio(divest_raw=None), Expect(SKIP, R.NO_DIVEST_AMOUNT)), id="none"),
    pytest.param(
        Case(
            portfolio(base_currency="XYZ", holdings={"$XYZ": D("1000")}),
            Expect(HOLD, R.UNKNOWN_CURRENCY),
            ledger("1000", "XYZ"),
        ),
        id="unknown-currency",
    ),
    # --- holdings --------------------------------------------------------------------------------
    pytest.param(
        Case(portfolio(holdings_error="$EUR: not a number: 'abc'"), Expect(HOLD, R.INVALID_HOLDINGS)),
        id="holdings-error",
    ),
    pytest.param(
        Case(portfolio(holdings={"$EUR": D("-0.01")}), Expect(HOLD, R.INVALID_HOLDINGS)), id="negative-cash-holding"
    ),
    pytest.param(
        Case(portfolio(holdings={"$EUR": D("1e30")}), Expect(HOLD, R.INVALID_HOLDINGS)),
        id="absurd-cash-holding",
    ),
    # --- caps ------------------------------------------------------------------------------------
    pytest.param(
        Case(portfolio(), Expect(HOLD, R.OVER_PAYOUT_CAP, D("100.00"), D("100.00"), held_payout=True), policy=CAP_99),
        id="over-payout-cap",
    ),
    pytest.param(
        Case(portfolio(), Expect(PAY, R.PARTIAL, D("100.00"), D("100.00")), policy=CAP_100), id="exactly-payout-cap"
    ),
    pytest.param(
        Case(
            full(), Expect(HOLD, R.OVER_PAYOUT_CAP, D("1000.00"), D("1000.00"), True, held_payout=True), policy=CAP_100
        ),
        id="full-over-payout-cap",
    ),
    pytest.param(
        Case(portfolio(), Expect(PAY, R.PARTIAL, D("100.00"), D("100.00")), policy=Policy(max_payout={"USD": D("1")})),
        id="cap-in-other-currency-does-not-apply",
    ),
    pytest.param(
        Case(
            portfolio(),
            Expect(HOLD, R.OVER_RUN_CAP, D("100.00"), D("100.00"), held_payout=True),
            policy=RUN_CAP,
            run_totals={"EUR": D("900.01")},
        ),
        id="over-run-cap",
    ),
    pytest.param(
        Case(
            portfolio(), Expect(PAY, R.PARTIAL, D("100.00"), D("100.00")), policy=RUN_CAP, run_totals={"EUR": D("900")}
        ),
        id="exactly-run-cap",
    ),
    pytest.param(
        Case(
            portfolio(), Expect(PAY, R.PARTIAL, D("100.00"), D("100.00")), policy=RUN_CAP, run_totals={"USD": D("5000")}
        ),
        id="run-totals-other-currency",
    ),
    pytest.param(
        Case(
            portfolio(divest_raw=D("1001"), holdings={"$EUR": D("2000")}),
            Expect(HOLD, R.OVER_RUN_CAP, D("1001.00"), D("1001.00"), held_payout=True),
            ledger("2000"),
            RUN_CAP,
        ),
        id="over-run-cap-first-payout",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_decide(case: Case) -> None:
    """decide() gives each money scenario the decision, reason, amounts and flags the design asks for."""
    verdict = decide(case.portfolio, case.ledger, case.policy, TODAY, case.run_totals)
    got = Expect(
        verdict.decision,
        verdict.reason,
        verdict.pay_amount,
        verdict.requested,
        verdict.full_withdrawal,
        verdict.reconciliation_break,
        verdict.held_payout,
    )
    assert got == case.expect
    assert verdict.currency == case.portfolio.base_currency
    if verdict.pay_amount is not None:
        # Equal and with the currency's exact minor unit (10.00, not 10 or 10.000).
        assert verdict.pay_amount.as_tuple().exponent == -minor_unit(case.portfolio.base_currency)


def test_break_note_names_both_figures() -> None:
    """A reconciliation break's note shows the ledger and the InvestSuite cash it was found between."""
    verdict = decide(portfolio(), ledger("400"), Policy(), TODAY)
    assert verdict.reconciliation_break
    assert "400.00" in verdict.note and "1000.00" in verdict.note
    assert (verdict.ledger_available, verdict.investsuite_cash) == (D("400.00"), D("1000.00"))


def test_policy_from_settings() -> None:
    """PolicySettings.to_policy copies every decision-relevant setting into frozen values."""
    policy = PolicySettings(
        allowed_statuses=("ACTIVE", "WAITING_FOR_FUNDS"),
        reconciliation_tolerance=D("0.05"),
        reconciliation_policy=ReconciliationPolicy.HOLD,
        max_payout={"EUR": D("10000")},
        max_run_total={"EUR": D("1000000")},
    ).to_policy()
    assert policy == Policy(
        allowed_statuses=frozenset({"ACTIVE", "WAITING_FOR_FUNDS"}),
        reconciliation_tolerance=D("0.05"),
        reconciliation_policy=ReconciliationPolicy.HOLD,
        max_payout={"EUR": D("10000")},
        max_run_total={"EUR": D("1000000")},
    )


# --- properties ----------------------------------------------------------------------------------

REASONS_BY_DECISION = {
    Decision.PAY: {R.PARTIAL, R.FULL_WITHDRAWAL},
    Decision.DEFER: {R.INSUFFICIENT_CASH, R.POSITIONS_OPEN, R.NOTHING_TO_PAY, R.BALANCE_CHANGED, R.PAYOUT_IN_PROGRESS},
    Decision.SKIP: {R.PAPER_MONEY, R.ARCHIVED, R.DELETED, R.STATUS_NOT_ALLOWED, R.NO_DIVEST_AMOUNT},
    Decision.HOLD: {
        R.INVALID_AMOUNT,
        R.UNKNOWN_CURRENCY,
        R.NO_LEDGER_ACCOUNT,
        R.CURRENCY_MISMATCH,
        R.NO_COUNTER_ACCOUNT,
        R.RECONCILIATION_BREAK,
        R.OVER_PAYOUT_CAP,
        R.OVER_RUN_CAP,
        R.MALFORMED_PAYLOAD,
        R.INVALID_HOLDINGS,
    },
}

currencies = st.sampled_from(sorted(MINOR_UNITS))


def amounts(max_digits: int = 12, min_exp: int = -6, max_exp: int = 3) -> st.SearchStrategy[Decimal]:
    """Non-negative Decimals with varied exponents: 0.000123, 12.5, 1E+3, 10.00, ..."""
    return st.builds(
        lambda digits, exp: Decimal(digits).scaleb(exp),
        st.integers(0, 10**max_digits),
        st.integers(min_exp, max_exp),
    )


divest_amounts = st.one_of(
    amounts(),
    st.sampled_from([D("1E+100"), D("1e100"), D("5E+120")]),
    st.decimals(min_value=D("0"), max_value=D("1e15"), allow_nan=False, allow_infinity=False),
)
positions = st.dictionaries(
    st.sampled_from(["US0378331005", "IE00B4L5Y983", "LU0274208692"]),
    st.one_of(st.just(D(0)), st.just(D("0.000")), amounts(6, -4, 0)),
    max_size=3,
)


def rarely(strategy: st.SearchStrategy[Any], default: Any) -> st.SearchStrategy[Any]:
    """Mostly ``default``, sometimes a draw from ``strategy`` (keeps most examples on the PAY path)."""
    return st.one_of(st.just(default), st.just(default), st.just(default), strategy)


@st.composite
def valid_case(draw: st.DrawFn) -> tuple[PortfolioView, LedgerView, Policy, dict[str, Decimal]]:
    """An eligible, readable portfolio with a ledger account in its own currency."""
    ccy = draw(currencies)
    cash = draw(amounts())
    holdings: dict[str, Decimal] = dict(draw(rarely(positions, {})))
    if draw(rarely(st.just(False), True)):
        holdings[f"${ccy}"] = cash
    available = draw(st.one_of(st.just(cash), amounts(3, -4, 0).map(lambda d: cash + d), amounts()))
    share = draw(st.integers(0, 120))
    divest = draw(
        st.one_of(
            st.builds(lambda tail: (cash * share / 100).quantize(D("1E-6")) + tail, amounts(3, -9, -6)),
            divest_amounts,
        )
    )
    view = portfolio(base_currency=ccy, divest_raw=divest, holdings=holdings)
    account = ledger(available, ccy)
    caps = st.dictionaries(st.just(ccy), amounts(12, -2, 3).map(lambda a: a + 1), max_size=1)
    policy = Policy(
        reconciliation_tolerance=draw(amounts(4, -3, 1)),
        reconciliation_policy=draw(rarely(st.just(ReconciliationPolicy.HOLD), ReconciliationPolicy.PAY_SMALLER)),
        max_payout=draw(rarely(caps, {})),
        max_run_total=draw(rarely(caps, {})),
    )
    totals = draw(st.dictionaries(st.just(ccy), amounts(), max_size=1))
    return view, account, policy, totals


@st.composite
def any_case(draw: st.DrawFn) -> tuple[PortfolioView, LedgerView | None, Policy]:
    """Any portfolio the listing may return, eligible or not, readable or not."""
    ccy = draw(st.one_of(currencies, st.sampled_from(["XYZ", "eur", "EURO"])))
    divest = draw(
        st.one_of(st.none(), divest_amounts, amounts().map(lambda a: -a), st.sampled_from(["abc", "", "NaN", "12,50"]))
    )
    holdings: dict[str, Decimal] = dict(draw(positions))
    if draw(st.booleans()):
        holdings[f"${ccy}"] = draw(st.one_of(amounts(), amounts().map(lambda a: -a)))
    view = portfolio(
        base_currency=ccy,
        divest_raw=divest,
        holdings=holdings,
        money_type=draw(st.sampled_from(["REAL_MONEY", "PAPER_MONEY"])),
        status=draw(st.sampled_from(["ACTIVE", "WAITING_FOR_FUNDS", "CLOSED", None])),
        archived=draw(rarely(st.just(True), False)),
        deleted=draw(rarely(st.just(True), False)),
        holdings_error=draw(st.sampled_from([None, "ISIN: not a number"])),
        counter_account=draw(st.sampled_from([None, "BE71096123456769"])),
    )
    account = draw(st.one_of(st.none(), st.builds(ledger, amounts(), st.sampled_from([ccy, "EUR", "JPY"]))))
    policy = Policy(reconciliation_policy=draw(st.sampled_from(list(ReconciliationPolicy))))
    return view, account, policy


@settings(max_examples=300, deadline=None)
@given(valid_case())
def test_pay_amount_bounds(case: tuple[PortfolioView, LedgerView, Policy, dict[str, Decimal]]) -> None:
    """Any amount decided for payment is > 0, within request, ledger and InvestSuite cash, in minor units."""
    view, account, policy, totals = case
    verdict = decide(view, account, policy, TODAY, totals)
    if verdict.decision is Decision.PAY:
        assert verdict.pay_amount is not None
    if verdict.pay_amount is None:
        return
    amount = verdict.pay_amount
    assert amount > 0
    assert amount <= account.available
    assert amount <= (view.cash or D(0))
    assert isinstance(view.divest_raw, Decimal)
    if verdict.full_withdrawal:
        assert not view.has_open_positions
    else:
        assert amount <= view.divest_raw
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # a finite amount ('n', 'N' and 'F' are NaN and infinity)
    assert -exponent <= minor_unit(view.base_currency)
    cap = policy.max_payout.get(view.base_currency)
    run_cap = policy.max_run_total.get(view.base_currency)
    if verdict.decision is Decision.PAY:
        assert cap is None or amount <= cap
        assert run_cap is None or totals.get(view.base_currency, D(0)) + amount <= run_cap


@settings(max_examples=300, deadline=None)
@given(any_case())
def test_every_verdict_has_one_decision_and_reason(case: tuple[PortfolioView, LedgerView | None, Policy]) -> None:
    """Any portfolio gets exactly one decision with a reason code belonging to that decision."""
    view, account, policy = case
    verdict = decide(view, account, policy, TODAY)
    assert isinstance(verdict, Verdict)
    assert isinstance(verdict.decision, Decision)
    assert isinstance(verdict.reason, Reason)
    owners = [d for d, reasons in REASONS_BY_DECISION.items() if verdict.reason in reasons]
    assert owners == [verdict.decision]
    assert (verdict.pay_amount is not None) == (verdict.decision is Decision.PAY or verdict.held_payout)


@settings(max_examples=200, deadline=None)
@given(any_case(), valid_case())
def test_decide_is_deterministic(
    anything: tuple[PortfolioView, LedgerView | None, Policy],
    valid: tuple[PortfolioView, LedgerView, Policy, dict[str, Decimal]],
) -> None:
    """decide() returns equal verdicts for equal inputs, whatever else ran in between."""
    view, account, policy = anything
    first = decide(view, account, policy, TODAY)
    valid_view, valid_account, valid_policy, totals = valid
    decide(valid_view, valid_account, valid_policy, TODAY, totals)
    assert decide(replace(view), account, policy, TODAY) == first
    assert decide(valid_view, valid_account, valid_policy, TODAY, dict(totals)) == decide(
        valid_view, valid_account, valid_policy, TODAY, totals
    )
