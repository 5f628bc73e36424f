"""Money: parsing API numbers to Decimal, rounding down to minor units, and printing amounts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batch.domain.money import (
    FULL_WITHDRAWAL_THRESHOLD,
    MINOR_UNITS,
    format_amount,
    minor_unit,
    parse_amount,
    quantize_down,
    quantum,
)
from batch.errors import DomainError, InvalidAmountError, UnknownCurrencyError

D = Decimal


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(D("12.50"), D("12.50"), id="json-number-as-decimal"),
        pytest.param(D("1E+100"), D("1E+100"), id="json-1e100-as-decimal"),
        pytest.param(12, D("12"), id="json-int"),
        pytest.param(0, D("0"), id="json-zero"),
        pytest.param(10**30, D(10**30), id="json-huge-int-exact"),
        pytest.param("12.50", D("12.50"), id="string"),
        pytest.param("  7.1 ", D("7.1"), id="string-with-blanks"),
        pytest.param("-3", D("-3"), id="negative-string-left-to-caller"),
        pytest.param("1e100", D("1e100"), id="string-1e100"),
        pytest.param("0.1", D("0.1"), id="string-no-binary-float-error"),
    ],
)
def test_parse_amount_accepts(raw: object, expected: Decimal) -> None:
    """parse_amount turns JSON numbers (Decimal/int) and numeric strings into the exact Decimal."""
    value = parse_amount(raw)
    assert isinstance(value, Decimal)
    assert value == expected
    assert str(value) == str(expected)


def test_parse_amount_1e100_reaches_full_withdrawal_threshold() -> None:
    """'1e100' parses to exactly the full-withdrawal marker."""
    assert parse_amount("1e100") >= FULL_WITHDRAWAL_THRESHOLD
    assert parse_amount("1e100") == FULL_WITHDRAWAL_THRESHOLD


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(12.5, id="float"),
        pytest.param(0.1, id="float-inexact"),
        pytest.param(True, id="bool-true"),
        pytest.param(False, id="bool-false"),
        pytest.param(None, id="none"),
        pytest.param("NaN", id="nan-string"),
        pytest.param("sNaN", id="signalling-nan-string"),
        pytest.param(D("NaN"), id="nan-decimal"),
        pytest.param("Infinity", id="infinity-string"),
        pytest.param("-Infinity", id="minus-infinity-string"),
        pytest.param(D("Infinity"), id="infinity-decimal"),
        pytest.param("", id="empty-string"),
        pytest.param("   ", id="blank-string"),
        pytest.param("abc", id="letters"),
        pytest.param("12,50", id="decimal-comma"),
        pytest.param([1], id="list"),
        pytest.param({"amount": 1}, id="dict"),
    ],
)
def test_parse_amount_rejects(raw: object) -> None:
    """parse_amount refuses floats, booleans, None, NaN, infinities and non-numeric input."""
    with pytest.raises(InvalidAmountError):
        parse_amount(raw)


def test_invalid_amount_is_a_domain_error() -> None:
    """InvalidAmountError sits under DomainError in the one error tree."""
    assert issubclass(InvalidAmountError, DomainError)
    assert issubclass(UnknownCurrencyError, DomainError)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param("10.005", "EUR", "10.00", id="eur-half-cent-down"),
        pytest.param("10.009", "EUR", "10.00", id="eur-never-up"),
        pytest.param("10", "EUR", "10.00", id="eur-pads-to-minor-unit"),
        pytest.param("1E+3", "EUR", "1000.00", id="eur-exponent-form"),
        pytest.param("0.004", "EUR", "0.00", id="eur-below-minor-unit"),
        pytest.param("1234.5", "JPY", "1234", id="jpy-no-decimals"),
        pytest.param("1234.999", "JPY", "1234", id="jpy-never-up"),
        pytest.param("1.2345", "KWD", "1.234", id="kwd-three-decimals"),
        pytest.param("1.2349", "KWD", "1.234", id="kwd-never-up"),
        pytest.param("-10.009", "EUR", "-10.00", id="negative-towards-zero"),
        pytest.param("99.99", "USD", "99.99", id="already-exact"),
    ],
)
def test_quantize_down(amount: str, currency: str, expected: str) -> None:
    """quantize_down rounds towards zero to exactly the currency's minor unit."""
    result = quantize_down(D(amount), currency)
    assert str(result) == expected


@pytest.mark.parametrize(
    ("currency", "places", "smallest"),
    [
        ("EUR", 2, "0.01"),
        ("USD", 2, "0.01"),
        ("JPY", 0, "1"),
        ("KRW", 0, "1"),
        ("KWD", 3, "0.001"),
        ("BHD", 3, "0.001"),
    ],
)
def test_minor_unit_and_quantum(currency: str, places: int, smallest: str) -> None:
    """minor_unit and quantum follow ISO 4217 for the currency."""
    assert minor_unit(currency) == places
    assert quantum(currency) == D(smallest)
    assert str(quantum(currency)) == smallest


@pytest.mark.parametrize("currency", ["XYZ", "eur", "EURO", "EU", "", "$EUR", " EUR"])
def test_minor_unit_rejects_unknown_currency(currency: str) -> None:
    """minor_unit raises UnknownCurrencyError for codes not in the table, wrong case or wrong length."""
    with pytest.raises(UnknownCurrencyError):
        minor_unit(currency)


def test_quantize_down_rejects_unknown_currency() -> None:
    """Rounding to an unknown currency is refused, not guessed."""
    with pytest.raises(UnknownCurrencyError):
        quantize_down(D("1.00"), "XYZ")


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param("1E+3", "EUR", "1000.00", id="positive-exponent"),
        pytest.param("1E+6", "JPY", "1000000", id="jpy-positive-exponent"),
        pytest.param("1.2E-7", "EUR", "0.00", id="tiny-negative-exponent"),
        pytest.param("0E-10", "EUR", "0.00", id="zero-with-exponent"),
        pytest.param("12.5", "EUR", "12.50", id="pads"),
        pytest.param("12.509", "EUR", "12.50", id="rounds-down"),
        pytest.param("1.5", "KWD", "1.500", id="kwd"),
        pytest.param("123456789012.34", "EUR", "123456789012.34", id="large"),
    ],
)
def test_format_amount(amount: str, currency: str, expected: str) -> None:
    """format_amount prints a plain decimal with the currency's minor unit, never exponent form."""
    assert format_amount(D(amount), currency) == expected


@given(
    st.decimals(min_value=D("-1e12"), max_value=D("1e12"), allow_nan=False, allow_infinity=False),
    st.sampled_from(sorted(MINOR_UNITS)),
)
def test_quantize_and_format_properties(amount: Decimal, currency: str) -> None:
    """For any amount: rounding never grows it, loses less than one minor unit, and prints without 'E'."""
    result = quantize_down(amount, currency)
    assert abs(result) <= abs(amount)
    assert abs(amount - result) < quantum(currency)
    assert result.as_tuple().exponent == -minor_unit(currency)
    text = format_amount(amount, currency)
    assert "E" not in text.upper()
    assert D(text) == result
    assert parse_amount(text) == result


def test_exact_keeps_sub_minor_digits_and_pads_to_the_minor_unit() -> None:
    """Report amounts are exact: 10.005 EUR stays 10.005 (never rounded into a PASS), 10 EUR shows 10.00."""
    from batch.domain.money import exact  # noqa: PLC0415
    from batch.service.reconcile.rules import text  # noqa: PLC0415
    from batch.service.reports.figures import quantized  # noqa: PLC0415

    assert format(exact(Decimal("10.005"), "EUR"), "f") == "10.005"
    assert format(exact(Decimal("5260.00500000"), "EUR"), "f") == "5260.005"
    assert format(exact(Decimal("10"), "EUR"), "f") == "10.00"
    assert format(exact(Decimal("100.00000000"), "JPY"), "f") == "100"
    assert quantized(Decimal("10.005"), "EUR") == Decimal("10.005")
    assert quantized(Decimal("5260.005"), "EUR") != Decimal("5260.00")
    assert text(Decimal("10.00500000"), "EUR") == "10.005"
