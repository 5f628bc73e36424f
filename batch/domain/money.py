"""Money: Decimal amounts quantized to each currency's ISO 4217 minor unit. Never float."""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, Decimal, InvalidOperation

from batch.errors import InvalidAmountError, UnknownCurrencyError

# ISO 4217 minor units for the currencies a bank is likely to run; extend when needed.
MINOR_UNITS: dict[str, int] = {
    "EUR": 2,
    "USD": 2,
    "GBP": 2,
    "CHF": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "HUF": 2,
    "RON": 2,
    "CAD": 2,
    "AUD": 2,
    "NZD": 2,
    "SGD": 2,
    "HKD": 2,
    "AED": 2,
    "ZAR": 2,
    "MXN": 2,
    "BRL": 2,
    "CNY": 2,
    "INR": 2,
    "TRY": 2,
    "ILS": 2,
    "JPY": 0,
    "KRW": 0,
    "ISK": 0,
    "CLP": 0,
    "VND": 0,
    "KWD": 3,
    "BHD": 3,
    "OMR": 3,
    "JOD": 3,
    "TND": 3,
}

#: Any divest amount at or above this means "withdraw everything" (InvestSuite writes 1e100).
FULL_WITHDRAWAL_THRESHOLD = Decimal("1e100")

#: Amounts above this (and below the full-withdrawal marker) are treated as absurd input.
ABSURD_AMOUNT = Decimal("1e15")

_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


def minor_unit(currency: str) -> int:
    """Number of decimal places of the currency; raises UnknownCurrencyError for unknown codes."""
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency) or currency not in MINOR_UNITS:
        raise UnknownCurrencyError(f"unknown currency code {currency!r}")
    return MINOR_UNITS[currency]


def quantum(currency: str) -> Decimal:
    """The smallest amount of the currency, e.g. Decimal('0.01') for EUR, Decimal('1') for JPY."""
    return Decimal(1).scaleb(-minor_unit(currency))


def quantize_down(amount: Decimal, currency: str) -> Decimal:
    """Round an amount DOWN (towards zero) to the currency's minor unit."""
    return amount.quantize(quantum(currency), rounding=ROUND_DOWN)


def parse_amount(raw: object) -> Decimal:
    """Parse an API number (JSON number already read as Decimal/int, or a numeric string) to Decimal.

    Rejects floats (they have already lost precision), booleans, NaN, infinities and non-numeric
    strings with InvalidAmountError. Sign and size are checked by the caller, which knows the context.
    """
    if isinstance(raw, bool) or raw is None:
        raise InvalidAmountError(f"not a number: {raw!r}")
    if isinstance(raw, float):
        raise InvalidAmountError(f"float amounts are refused (precision already lost): {raw!r}")
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            raise InvalidAmountError("empty amount")
        try:
            value = Decimal(text)
        except InvalidOperation as exc:
            raise InvalidAmountError(f"not a number: {raw!r}") from exc
    else:
        raise InvalidAmountError(f"not a number: {raw!r}")
    if not value.is_finite():
        raise InvalidAmountError(f"not a finite number: {raw!r}")
    return value


def exact(amount: Decimal, currency: str | None) -> Decimal:
    """The amount at the currency's minor unit *at least*, never rounded: a sub-minor 10.005 EUR stays 10.005.

    For reports and reconciliation figures: the minor unit pads ("10.00", not "10"), extra digits the
    amount really carries are kept (trailing zeros beyond the minor unit are dropped). An unknown
    currency gets 8 places (the journal's NUMERIC scale) as its padding.
    """
    places = MINOR_UNITS.get(currency or "", 8)
    padded = amount.quantize(Decimal(1).scaleb(-places))
    if padded == amount:
        return padded
    return amount.normalize()  # it has digits past the minor unit, so no exponent form


def format_amount(amount: Decimal, currency: str) -> str:
    """Plain decimal string with exactly the currency's minor unit, e.g. '12.50' (never exponent form)."""
    return f"{quantize_down(amount, currency):f}"
