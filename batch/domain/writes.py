"""Every InvestSuite write of a withdrawal, built from parsed values and checked against the docs' strictest reading.

A payout's three writes — the SETTLED cash transaction, the portfolio PATCH (whole ``config`` with the
divest amount, whole holdings map with the cash lowered) and the withdraw event — are built here and
nowhere else, and ``prepare_withdrawal`` builds and checks all three *before* the ledger post: a payout
whose writes would be refused moves no money (HOLD ``INVALID_REMOTE_DATA`` naming the field).

What "normalised" means (DESIGN §9.2):

- numbers are JSON numbers built from ``Decimal`` (never strings, never floats, never exponent form: the
  codec writes plain notation), whatever InvestSuite served (``"12.5"``, ``12.5``, ``1.25E+1``);
- cash (holdings ``$CCY`` keys, cash movement quantities, event amounts) at exactly the currency's minor
  unit (EUR ``1750.00``, JPY ``1234``, KWD ``125.125``): a value with more decimals than the currency has
  cannot be written without changing it, so it is refused, never rounded;
- positions as exact decimals (``12.500`` -> ``12.5``; ``0`` kept), never negative;
- holdings keys are ``$`` + an ISO 4217 code we know, or an ISIN; ``config`` carries only its documented
  fields, its write-once ``manager`` unchanged, ``manager_version`` an integer >= 1, the manager-settings
  amounts as numbers; the event amount is a decimal string at the minor unit, its currency without ``$``.

Pure: values in, values (or InvalidRemoteDataError) out; the clock is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from batch.domain.money import FULL_WITHDRAWAL_THRESHOLD, MINOR_UNITS, parse_amount, quantize_down, quantum
from batch.errors import InvalidAmountError, InvalidRemoteDataError

PORTFOLIO_ID_RE = re.compile(r"^P[0-9A-HJKMNP-TV-Z]{26}$")
ISIN_RE = re.compile(r"^[A-Z]{2}[A-Z0-9]{9}[0-9]$")
CASH_KEY_RE = re.compile(r"^\$[A-Z]{3}$")
MANAGERS = frozenset({"USER_MANAGED", "ROBO_ADVISOR_ADVISORY", "ROBO_ADVISOR_DISCRETIONARY"})
CONFIG_FIELDS = frozenset({"manager", "manager_version", "manager_settings"})
#: manager-settings fields that hold amounts: written back as JSON numbers
SETTINGS_AMOUNTS = ("divest_amount", "start_amount", "recurring_deposit_amount")
#: the longest external_id a transaction accepts
EXTERNAL_ID_MAX = 64
#: stands in for the ledger reference when the write set is checked before the ledger post
PLACEHOLDER_REFERENCE = "L" * 23


def _number(value: Any, field: str) -> Decimal:
    try:
        return parse_amount(value)
    except InvalidAmountError as exc:
        raise InvalidRemoteDataError(field, f"not a number ({exc})") from exc


def cash_amount(value: Decimal, currency: str, field: str) -> Decimal:
    """``value`` at exactly the currency's minor unit; refused if that would change it or it is negative."""
    if currency not in MINOR_UNITS:
        raise InvalidRemoteDataError(field, f"unknown currency {currency!r}")
    try:
        exact = value.quantize(quantum(currency))
    except ArithmeticError as exc:
        raise InvalidRemoteDataError(field, f"{value} is too large to write") from exc
    if exact != value:
        raise InvalidRemoteDataError(field, f"{value} has more decimals than {currency} allows")
    if exact < 0:
        raise InvalidRemoteDataError(field, f"{value} is negative")
    return exact


def _position(value: Decimal, field: str) -> Decimal:
    if value < 0:
        raise InvalidRemoteDataError(field, f"{value} is negative")
    if value == 0:
        return Decimal(0)
    normal = value.normalize()
    # normalize() may give an exponent (1E+2); the quantize keeps the value and drops it
    return normal.quantize(Decimal(1)) if normal == normal.to_integral_value() else normal


def normalise_holdings(raw: Any) -> dict[str, Decimal]:
    """The holdings map as it can be written back: every key checked, every value a normalised Decimal."""
    if not isinstance(raw, Mapping):
        raise InvalidRemoteDataError("portfolio", "the holdings map is not an object")
    holdings: dict[str, Decimal] = {}
    for key, value in raw.items():
        field = f"portfolio.{key}"
        if not isinstance(key, str):
            raise InvalidRemoteDataError(field, "key is not a string")
        number = _number(value, field)
        if CASH_KEY_RE.match(key):
            holdings[key] = cash_amount(number, key[1:], field)
        elif ISIN_RE.match(key):
            holdings[key] = _position(number, field)
        else:
            raise InvalidRemoteDataError(field, "key is neither $ + an ISO 4217 code nor an ISIN")
    return holdings


def normalise_config(raw: Any, divest_amount: Decimal) -> dict[str, Any]:
    """The whole ``config`` as it can be written back, with ``manager_settings.divest_amount`` set."""
    if not isinstance(raw, Mapping):
        raise InvalidRemoteDataError("config", "not an object")
    extra = sorted(set(raw) - CONFIG_FIELDS)
    if extra:
        raise InvalidRemoteDataError(f"config.{extra[0]}", "not a documented config field")
    if raw.get("manager") not in MANAGERS:
        raise InvalidRemoteDataError("config.manager", f"missing or not one of {sorted(MANAGERS)} (write-once)")
    config: dict[str, Any] = {"manager": raw["manager"]}
    if "manager_version" in raw:
        version = raw["manager_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidRemoteDataError("config.manager_version", f"{version!r} is not an integer >= 1")
        config["manager_version"] = version
    settings = raw.get("manager_settings", {})
    if not isinstance(settings, Mapping):
        raise InvalidRemoteDataError("config.manager_settings", "not an object")
    written = dict(settings)
    for name in SETTINGS_AMOUNTS:
        if written.get(name) is not None and name != "divest_amount":
            written[name] = _number(written[name], f"config.manager_settings.{name}")
    written["divest_amount"] = divest_amount
    config["manager_settings"] = written
    return config


def divest_after_payout(
    divest_now: Decimal | str | None, divest_planned: str, paid: Decimal, full_withdrawal: bool, currency: str
) -> Decimal:
    """What the divest amount becomes once ``paid`` is paid (DESIGN §3): 0, or what is still asked.

    A full withdrawal that was paid clears it. A request the customer raised after planning keeps the
    unpaid rest (a raise to a full withdrawal stays a full withdrawal); an unchanged or unreadable one
    is cleared.
    """
    if full_withdrawal or not isinstance(divest_now, Decimal):
        return Decimal(0)
    if divest_now >= FULL_WITHDRAWAL_THRESHOLD:
        return FULL_WITHDRAWAL_THRESHOLD
    try:
        planned = Decimal(divest_planned)
    except ArithmeticError:
        planned = None
    if planned is not None and divest_now == planned:
        return Decimal(0)
    return max(quantize_down(divest_now - paid, currency), Decimal(0))


def transaction_body(external_id: str, currency: str, amount: Decimal, when: datetime) -> dict[str, Any]:
    """``POST /portfolios/{id}/transactions/``: one SETTLED CASH_WITHDRAWAL movement, negative quantity."""
    if not external_id or len(external_id) > EXTERNAL_ID_MAX:
        raise InvalidRemoteDataError("external_id", f"must be 1 to {EXTERNAL_ID_MAX} characters")
    if when.tzinfo is None:
        raise InvalidRemoteDataError("movements.0.datetime", "must carry a UTC offset")
    quantity = cash_amount(amount, currency, "movements.0.quantity")
    if quantity <= 0:
        raise InvalidRemoteDataError("movements.0.quantity", "a withdrawal must move a positive amount")
    return {
        "external_id": external_id,
        "movements": [
            {
                "type": "CASH_WITHDRAWAL",
                "status": "SETTLED",
                "datetime": when.astimezone(UTC).isoformat(),
                "instrument_id": f"${currency}",
                "quantity": -quantity,
            }
        ],
    }


def event_body(portfolio_id: str, currency: str, amount: Decimal) -> dict[str, Any]:
    """``POST /events/withdraw/`` (and ``/events/deposit/``): amount a decimal string, currency without ``$``."""
    if not PORTFOLIO_ID_RE.match(portfolio_id):
        raise InvalidRemoteDataError("data.portfolio", f"{portfolio_id!r} is not a portfolio id")
    exact = cash_amount(amount, currency, "data.amount")
    if exact <= 0:
        raise InvalidRemoteDataError("data.amount", "must be greater than zero")
    return {"data": {"amount": format(exact, "f"), "currency": currency, "portfolio": portfolio_id}}


def patch_body(config: Any, holdings: Any, currency: str, target_cash: Decimal, divest: Decimal) -> dict[str, Any]:
    """``PATCH /portfolios/{id}/``: the whole config (divest set) and the whole holdings map (cash set)."""
    written = normalise_holdings(holdings)
    written[f"${currency}"] = cash_amount(target_cash, currency, f"portfolio.${currency}")
    if divest < 0:
        raise InvalidRemoteDataError("config.manager_settings.divest_amount", f"{divest} is negative")
    return {"config": normalise_config(config, divest), "portfolio": written}


@dataclass(frozen=True)
class WithdrawalWrites:
    """The three writes of one payout, as they would be sent now."""

    transaction: dict[str, Any]
    patch: dict[str, Any]
    event: dict[str, Any]
    base_cash: Decimal
    target_cash: Decimal
    divest_target: Decimal


def prepare_withdrawal(
    *,
    portfolio_id: str,
    currency: str,
    amount: Decimal,
    full_withdrawal: bool,
    divest_planned: str,
    divest_now: Decimal | str | None,
    config: Any,
    holdings: Any,
    when: datetime,
    external_id: str = PLACEHOLDER_REFERENCE,
) -> WithdrawalWrites:
    """Build and check every write of a withdrawal from InvestSuite's current data (raises InvalidRemoteDataError).

    Called before the ledger post with a placeholder reference, so a payout whose writes would be
    refused never moves money; the PATCH is built again from a fresh read when it is sent.
    """
    held = normalise_holdings(holdings)
    base = held.get(f"${currency}", Decimal(0))
    target = base - amount
    if target < 0:
        raise InvalidRemoteDataError(f"portfolio.${currency}", f"cash {base} is below the amount {amount}")
    divest = divest_after_payout(divest_now, divest_planned, amount, full_withdrawal, currency)
    return WithdrawalWrites(
        transaction=transaction_body(external_id, currency, amount, when),
        patch=patch_body(config, held, currency, target, divest),
        event=event_body(portfolio_id, currency, amount),
        base_cash=base,
        target_cash=target,
        divest_target=divest,
    )
