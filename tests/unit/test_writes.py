"""The withdrawal's writes: normalised numbers, cash at minor units, and a named refusal for what cannot be written."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

import pytest

from batch import codec
from batch.domain import writes
from batch.domain.money import FULL_WITHDRAWAL_THRESHOLD
from batch.errors import InvalidRemoteDataError

PID = "P01KDVDNA165SCD45Z50N9MQEHR"
CONFIG = {"manager": "ROBO_ADVISOR_DISCRETIONARY", "manager_version": 1, "manager_settings": {"divest_amount": D(500)}}
WHEN = datetime(2026, 11, 30, 1, 30, tzinfo=UTC)


def _prepare(
    holdings: Any, config: Any = CONFIG, currency: str = "EUR", amount: D = D("500.00")
) -> writes.WithdrawalWrites:
    return writes.prepare_withdrawal(
        portfolio_id=PID,
        currency=currency,
        amount=amount,
        full_withdrawal=False,
        divest_planned=str(amount),
        divest_now=amount,
        config=config,
        holdings=holdings,
        when=WHEN,
        external_id="LT20261130-000000000001",
    )


@pytest.mark.parametrize(
    ("served", "written"),
    [
        ({"$EUR": "2250.00", "IE00BK5BQT80": "12.5"}, '{"$EUR":1750.00,"IE00BK5BQT80":12.5}'),
        ({"$EUR": D("2.25E+3"), "IE00BK5BQT80": D("1.250E+1")}, '{"$EUR":1750.00,"IE00BK5BQT80":12.5}'),
        (
            {"$EUR": 2250, "IE00BK5BQT80": D("100.000"), "IE00B4L5Y983": 0},
            '{"$EUR":1750.00,"IE00BK5BQT80":100,"IE00B4L5Y983":0}',
        ),
        ({"$EUR": D("2250.00"), "$JPY": "1200", "$KWD": D("1.5")}, '{"$EUR":1750.00,"$JPY":1200,"$KWD":1.500}'),
    ],
    ids=["strings", "exponent form", "integers and zero", "other cash at its own minor unit"],
)
def test_holdings_are_written_back_as_plain_json_numbers(served: dict[str, Any], written: str) -> None:
    """Whatever form InvestSuite served, the PATCH carries plain JSON numbers; cash at the minor unit."""
    assert codec.dumps(_prepare(served).patch["portfolio"]) == written


def test_cash_quantities_and_event_amounts_are_at_the_currency_minor_unit() -> None:
    """The journal's 8 decimals never reach InvestSuite: -500.00 EUR, -1234 JPY, 125.125 KWD as '125.125'."""
    eur = _prepare({"$EUR": D("1000")}, amount=D("500.00000000"))
    assert '"quantity":-500.00}' in codec.dumps(eur.transaction)
    jpy = _prepare({"$JPY": D(5000)}, currency="JPY", amount=D("1234.00000000"))
    assert '"quantity":-1234}' in codec.dumps(jpy.transaction) and jpy.event["data"]["amount"] == "1234"
    kwd = _prepare({"$KWD": D("1000.000")}, currency="KWD", amount=D("125.12500000"))
    assert kwd.event["data"] == {"amount": "125.125", "currency": "KWD", "portfolio": PID}


@pytest.mark.parametrize(
    ("holdings", "config", "field"),
    [
        ({"$EUR": "1000.005"}, CONFIG, "portfolio.$EUR"),
        ({"$EUR": D(1000), "$JPY": D("10.5")}, CONFIG, "portfolio.$JPY"),
        ({"$EUR": D(1000), "$XYZ": D(1)}, CONFIG, "portfolio.$XYZ"),
        ({"$EUR": D(1000), "NOT-AN-ISIN": D(1)}, CONFIG, "portfolio.NOT-AN-ISIN"),
        ({"$EUR": D(1000), "IE00BK5BQT80": "twelve"}, CONFIG, "portfolio.IE00BK5BQT80"),
        ({"$EUR": D(1000), "IE00BK5BQT80": D(-1)}, CONFIG, "portfolio.IE00BK5BQT80"),
        ({"$EUR": D(1000), "IE00BK5BQT80": True}, CONFIG, "portfolio.IE00BK5BQT80"),
        ({"$EUR": D(100)}, CONFIG, "portfolio.$EUR"),
        ({"$EUR": D(1000)}, {**CONFIG, "extra": 1}, "config.extra"),
        ({"$EUR": D(1000)}, {"manager_settings": {}}, "config.manager"),
        ({"$EUR": D(1000)}, {**CONFIG, "manager_version": "1"}, "config.manager_version"),
        (
            {"$EUR": D(1000)},
            {**CONFIG, "manager_settings": {"start_amount": "lots"}},
            "config.manager_settings.start_amount",
        ),
        ({"$EUR": D(1000)}, {**CONFIG, "manager_settings": []}, "config.manager_settings"),
        ([], CONFIG, "portfolio"),
    ],
    ids=[
        "cash with 3 decimals in EUR",
        "JPY cash with decimals",
        "unknown currency cash key",
        "key neither cash nor ISIN",
        "non-numeric quantity",
        "negative position",
        "boolean quantity",
        "cash below the amount",
        "undocumented config field",
        "write-once manager missing",
        "manager_version as a string",
        "unreadable settings amount",
        "settings not an object",
        "holdings not an object",
    ],
)
def test_data_that_cannot_be_written_back_is_refused_naming_the_field(holdings: Any, config: Any, field: str) -> None:
    """Anything a strict server would refuse is refused before money moves, with the API's field name."""
    with pytest.raises(InvalidRemoteDataError) as caught:
        _prepare(holdings, config)
    assert caught.value.field == field


def test_config_is_sent_whole_with_settings_amounts_as_numbers() -> None:
    """The whole config goes back: the write-once manager unchanged, settings kept, amounts as numbers."""
    config = {
        "manager": "ROBO_ADVISOR_DISCRETIONARY",
        "manager_settings": {"policy_id": "Y1", "start_amount": "1000", "divest_amount": "500.00", "tags": ["a"]},
    }
    patch = _prepare({"$EUR": D(1000)}, config).patch
    assert patch["config"] == {
        "manager": "ROBO_ADVISOR_DISCRETIONARY",
        "manager_settings": {"policy_id": "Y1", "start_amount": D(1000), "divest_amount": D(0), "tags": ["a"]},
    }


@pytest.mark.parametrize(
    ("now", "planned", "paid", "full", "after"),
    [
        (D("500.00"), "500.00", D("500.00"), False, D(0)),
        (D("800.00"), "500.00", D("500.00"), False, D("300.00")),
        (D("1E+100"), "500.00", D("500.00"), False, D("1E+100")),
        (D("1E+100"), "1E+100", D("2500.00"), True, D(0)),
        (None, "500.00", D("500.00"), False, D(0)),
        ("abc", "500.00", D("500.00"), False, D(0)),
    ],
    ids=["unchanged", "raised keeps the rest", "raised to full stays full", "full paid", "cleared", "unreadable"],
)
def test_divest_after_a_payout(now: D | str | None, planned: str, paid: D, full: bool, after: D) -> None:
    """0 once paid; a raise after planning keeps the unpaid rest; a raise to a full withdrawal stays full."""
    assert writes.divest_after_payout(now, planned, paid, full, "EUR") == after


def test_a_full_withdrawal_marker_is_written_in_plain_notation() -> None:
    """1e100 goes back as a plain JSON number (no exponent form), still a full withdrawal."""
    assert codec.dumps(FULL_WITHDRAWAL_THRESHOLD) == "1" + "0" * 100


def test_transaction_and_event_refuse_what_the_api_would() -> None:
    """An external_id over 64 characters, a naive datetime and a bad portfolio id are refused."""
    with pytest.raises(InvalidRemoteDataError, match="external_id"):
        writes.transaction_body("X" * 65, "EUR", D(1), WHEN)
    with pytest.raises(InvalidRemoteDataError, match="datetime"):
        writes.transaction_body("X", "EUR", D(1), datetime(2026, 11, 30))
    with pytest.raises(InvalidRemoteDataError, match=r"data\.portfolio"):
        writes.event_body("P123", "EUR", D(1))
