"""What the sandbox accepts: the InvestSuite write rules, in the docs' strictest reading.

The sandbox is our reading of the public docs; on every write it takes the stricter one (DESIGN §9,
docs/design.md "Stricter sandbox"), so a job that passes here passes a server that reads them as
strictly. Pure functions over parsed JSON (numbers are Decimal, ``ExponentDecimal`` when the request
wrote them in exponent form); ``Problem`` carries the HTTP answer.

- numbers in writes are JSON numbers (never strings) in plain notation (never ``1e2``);
- cash — a holdings ``$CCY`` value, a cash movement's quantity, an event amount — has at most the
  currency's minor-unit decimals (ISO 4217), and the currency must be one we know;
- holdings keys are ``$CCY`` or an ISIN, quantities never negative;
- a CASH_WITHDRAWAL quantity is negative, a CASH_DEPOSIT quantity positive;
- ``config`` carries only its documented fields; ``manager`` and ``money_type`` are write-once;
  ``funded_since`` is set once and never changes; manager-settings amounts are numbers;
- unknown fields are refused everywhere (400 ``extra fields not permitted``).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from batch.domain.money import MINOR_UNITS
from batch.sandbox.store import Document, new_id, now_iso


class ExponentDecimal(Decimal):
    """A number the request wrote in exponent form (``1e2``): readable, but refused in writes."""


def parse_request_float(text: str) -> Decimal:
    """``parse_float`` for request bodies: remembers which numbers came in exponent form."""
    return ExponentDecimal(text) if "e" in text or "E" in text else Decimal(text)


PORTFOLIO_ID_RE = re.compile(r"^P[0-9A-HJKMNP-TV-Z]{26}$")
USER_ID_RE = re.compile(r"^U[0-9A-HJKMNP-TV-Z]{26}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
INSTRUMENT_RE = re.compile(r"^(\$[A-Z]{3}|[A-Z]{2}[A-Z0-9]{9}[0-9])$")
POSITIVE_DECIMAL_RE = re.compile(r"^\d+(\.\d+)?$")

MONEY_TYPES = frozenset({"REAL_MONEY", "PAPER_MONEY"})
MANAGERS = frozenset({"USER_MANAGED", "ROBO_ADVISOR_ADVISORY", "ROBO_ADVISOR_DISCRETIONARY"})
PORTFOLIO_STATUSES = frozenset({"WAITING_FOR_ACCOUNT", "WAITING_FOR_POLICY", "WAITING_FOR_FUNDS", "ACTIVE", "INACTIVE"})
MOVEMENT_TYPES = frozenset(
    {
        "CASH_DEPOSIT",
        "CASH_DIVIDEND",
        "CASH_WITHDRAWAL",
        "COUPON",
        "BUY",
        "SELL",
        "CORPORATE_ACTION_IN",
        "CORPORATE_ACTION_OUT",
        "REVERSE_STOCK_SPLIT",
        "STOCK_DIVIDEND",
        "STOCK_SPLIT",
        "TRANSFER_IN",
        "TRANSFER_OUT",
        "CUSTODY_FEE",
        "INSTRUMENT_ENTRY_EXIT_FEE",
        "MANAGEMENT_FEE",
        "OTHER_FEE",
        "OTHER_TAX",
        "SERVICE_ENTRY_EXIT_FEE",
        "TRANSACTION_FEE",
        "WITHHOLDING_TAX",
    }
)
MOVEMENT_STATUSES = frozenset(
    {"PLANNED", "PENDING", "PLACED", "EXECUTED", "SETTLED", "CANCELLED", "NOT_EXECUTED", "EXPIRED"}
)
TRADE_TYPES = frozenset({"CANCEL", "REBOOK", "INSTRUMENT_CHANGE", "CORRECTION"})
MOVEMENT_FIELDS = frozenset(
    {
        "type",
        "status",
        "datetime",
        "instrument_id",
        "quantity",
        "unit_price",
        "unit_price_currency",
        "external_id",
        "reference_external_id",
        "trade_type",
        "description",
        "reference_instrument_id",
    }
)
REQUIRED_MOVEMENT_FIELDS = ("type", "status", "datetime", "instrument_id", "quantity")
TRANSACTION_FIELDS = frozenset({"external_id", "movements", "optimization_id", "order_type", "description"})

PATCHABLE_PORTFOLIO_FIELDS = frozenset(
    {
        "name",
        "external_id",
        "owned_by_user_id",
        "owned_by_user_ids",
        "readable_by",
        "modifiable_by",
        "base_currency",
        "money_type",
        "config",
        "brokerage_account",
        "portfolio",
        "funded_since",
        "snapshot_datetime",
        "start_datetime",
        "archived",
        "status",
    }
)
READ_ONLY_PORTFOLIO_FIELDS = frozenset(
    {"id", "version", "version_datetime", "version_authored_by_user_id", "creation_datetime", "deleted", "_embedded"}
)
CONFIG_FIELDS = frozenset({"manager", "manager_version", "manager_settings"})

_CASH_MOVEMENTS = frozenset({"CASH_DEPOSIT", "CASH_WITHDRAWAL"})
_ORDER_MOVEMENTS = frozenset({"BUY", "SELL"})


class Problem(Exception):
    """An error answer: HTTP status and the InvestSuite-shaped body."""

    def __init__(self, status: int, body: Document, headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("title", ""))
        self.status = status
        self.body = body
        self.headers = headers


def bad_request(loc: list[str], msg: str, kind: str = "value_error") -> Problem:
    return Problem(400, {"title": "Bad request", "detail": [{"loc": loc, "msg": msg, "type": kind}], "status": 400})


def not_found(detail: str) -> Problem:
    return Problem(404, {"title": "Resource not found", "detail": detail, "status": 404})


def conflict(detail: str) -> Problem:
    return Problem(409, {"title": "Business logic error", "detail": detail, "status": 409})


def conflict_at(loc: list[str], msg: str, kind: str) -> Problem:
    """A 409 that names what it is about, in the docs' ``detail: [{loc, msg, type}]`` shape: a refused
    portfolio (``loc`` the body's portfolio) and a reused Idempotency-Key (``loc`` the header) differ."""
    return Problem(
        409, {"title": "Business logic error", "detail": [{"loc": loc, "msg": msg, "type": kind}], "status": 409}
    )


def unauthorized(description: str = "JWT invalid") -> Problem:
    return Problem(
        401,
        {"title": "Unauthorized", "description": description, "request_id": str(uuid.uuid4()), "timestamp": now_iso()},
    )


def _is_number(value: object) -> bool:
    """A JSON number in plain notation (strings, booleans and exponent form are not)."""
    return isinstance(value, int | Decimal) and not isinstance(value, bool | ExponentDecimal)


def number_error(value: object) -> str | None:
    """Why ``value`` is not a JSON number a write may carry, or None."""
    if isinstance(value, ExponentDecimal):
        return "must be a JSON number in plain notation, not exponent form"
    if isinstance(value, str):
        return "must be a JSON number, not a string"
    return None if _is_number(value) else "must be a JSON number"


def cash_error(currency: str, value: Decimal) -> str | None:
    """Why ``value`` is not an amount of ``currency`` (unknown currency, more decimals than its minor unit)."""
    places = MINOR_UNITS.get(currency)
    if places is None:
        return f"{currency} is not a currency we know the minor unit of"
    exponent = value.as_tuple().exponent  # as written: 500.00000000 has 8 decimals even if they are zeros
    if isinstance(exponent, int) and -exponent > places:
        return f"{value} is written with more decimals than {currency} has ({places})"
    return None


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None


def extra_fields(body: Document, allowed: frozenset[str], loc: list[str]) -> None:
    for field in body:
        if field not in allowed:
            raise bad_request([*loc, field], "extra fields not permitted", "value_error.extra")


# -- PATCH /portfolios/{id}/ ------------------------------------------------------------------------


def _field_error(name: str, value: Any) -> str | None:
    """Why a PATCH value is not acceptable for a top-level portfolio field, or None."""
    if name == "name":
        return None if isinstance(value, str) and 0 < len(value) <= 128 else "must be a string of 1 to 128 characters"
    if name == "external_id":
        return None if value is None or isinstance(value, str) else "must be a string or null"
    if name == "owned_by_user_id":
        return None if isinstance(value, str) and USER_ID_RE.match(value) else "must be a user id"
    if name in ("owned_by_user_ids", "readable_by", "modifiable_by"):
        ok = isinstance(value, list) and all(isinstance(v, str) and USER_ID_RE.match(v) for v in value)
        return None if ok else "must be a list of user ids"
    if name == "base_currency":
        return None if isinstance(value, str) and CURRENCY_RE.match(value) else "must be an ISO 4217 code"
    if name == "money_type":
        return None if value in MONEY_TYPES else f"must be one of {sorted(MONEY_TYPES)}"
    if name == "config":
        if not isinstance(value, dict):
            return "must be an object"
        extra = sorted(set(value) - CONFIG_FIELDS)
        if extra:
            return f"extra fields not permitted in config: {extra}"
        if "manager" in value and value["manager"] not in MANAGERS:
            return f"config.manager must be one of {sorted(MANAGERS)}"
        version = value.get("manager_version", 1)
        if not (isinstance(version, int) and not isinstance(version, bool) and version >= 1):
            return "config.manager_version must be an integer >= 1"
        if "manager_settings" in value and not isinstance(value["manager_settings"], dict):
            return "config.manager_settings must be an object"
        for amount in ("divest_amount", "start_amount", "recurring_deposit_amount"):
            setting = value.get("manager_settings", {}).get(amount)
            if setting is not None and number_error(setting) is not None:
                return f"config.manager_settings.{amount} {number_error(setting)}"
        return None
    if name == "brokerage_account":
        return None if value is None or isinstance(value, dict) else "must be an object or null"
    if name == "portfolio":
        if not isinstance(value, dict):
            return "must be an object mapping instrument ids to quantities"
        for key, quantity in value.items():
            if not INSTRUMENT_RE.match(key):
                return f"{key!r} is neither an ISIN nor $ + an ISO 4217 code"
            problem = number_error(quantity)
            if problem is not None:
                return f"the quantity of {key} {problem}"
            if quantity < 0:
                return f"the quantity of {key} must not be negative"
            if key.startswith("$"):
                problem = cash_error(key[1:], Decimal(quantity))
                if problem is not None:
                    return f"the cash {key}: {problem}"
        return None
    if name in ("funded_since", "snapshot_datetime", "start_datetime"):
        return None if value is None or _is_datetime(value) else "must be an ISO 8601 date-time with offset or null"
    if name == "archived":
        return None if isinstance(value, bool) else "must be a boolean"
    if name == "status":
        return None if value in PORTFOLIO_STATUSES else f"must be one of {sorted(PORTFOLIO_STATUSES)}"
    return "unknown field"  # pragma: no cover - callers check the field list first


def validate_portfolio_patch(patch: Any) -> Document:
    """The PATCH body if acceptable; raises Problem(400) otherwise."""
    if not isinstance(patch, dict):
        raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
    for field, value in patch.items():
        if field in READ_ONLY_PORTFOLIO_FIELDS:
            raise bad_request(["body", field], "field is read-only", "value_error.readonly")
        if field not in PATCHABLE_PORTFOLIO_FIELDS:
            raise bad_request(["body", field], "extra fields not permitted", "value_error.extra")
        error = _field_error(field, value)
        if error is not None:
            raise bad_request(["body", field], error)
    return patch


def apply_portfolio_patch(document: Document, patch: Document) -> tuple[int, Document]:
    """Apply a validated PATCH: top-level fields replace the stored ones whole; version + 1."""
    if document.get("deleted"):
        return 409, conflict(f"portfolio {document.get('id')} is deleted").body
    if "money_type" in patch and patch["money_type"] != document.get("money_type"):
        return 409, conflict("money_type is write-once and cannot be changed").body
    if "config" in patch:
        old_manager = (document.get("config") or {}).get("manager")
        if patch["config"].get("manager") != old_manager:
            return 409, conflict("config.manager is write-once and cannot be changed (or removed)").body
    if "funded_since" in patch and document.get("funded_since") and patch["funded_since"] != document["funded_since"]:
        return 409, conflict("funded_since is set once and cannot be changed").body
    updated = dict(document)
    updated.update(patch)
    updated["version"] = int(document.get("version", 1)) + 1
    updated["version_datetime"] = now_iso()
    return 200, updated


# -- POST /portfolios/{id}/transactions/ ------------------------------------------------------------


def validate_transaction(body: Any) -> Document:
    """The transaction request if acceptable; raises Problem(400) otherwise."""
    if not isinstance(body, dict):
        raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
    extra_fields(body, TRANSACTION_FIELDS, ["body"])
    external_id = body.get("external_id")
    if external_id is not None and not (isinstance(external_id, str) and len(external_id) <= 64):
        raise bad_request(["body", "external_id"], "must be a string of at most 64 characters")
    if body.get("order_type") not in (None, "MARKET", "LIMIT"):
        raise bad_request(["body", "order_type"], "must be MARKET or LIMIT")
    movements = body.get("movements")
    if not isinstance(movements, list) or not movements:
        raise bad_request(["body", "movements"], "at least one movement is required")
    for index, movement in enumerate(movements):
        loc = ["body", "movements", str(index)]
        if not isinstance(movement, dict):
            raise bad_request(loc, "a movement must be an object", "type_error.dict")
        extra_fields(movement, MOVEMENT_FIELDS, loc)
        for field in REQUIRED_MOVEMENT_FIELDS:
            if field not in movement:
                raise bad_request([*loc, field], "field required", "value_error.missing")
        if movement["type"] not in MOVEMENT_TYPES:
            raise bad_request([*loc, "type"], "not a known movement type", "type_error.enum")
        if movement["status"] not in MOVEMENT_STATUSES:
            raise bad_request([*loc, "status"], "not a known movement status", "type_error.enum")
        if not _is_datetime(movement["datetime"]):
            raise bad_request([*loc, "datetime"], "must be an ISO 8601 date-time with offset")
        if not (isinstance(movement["instrument_id"], str) and INSTRUMENT_RE.match(movement["instrument_id"])):
            raise bad_request([*loc, "instrument_id"], "must be $ + an ISO 4217 code or an ISIN")
        problem = number_error(movement["quantity"])
        if problem is not None:
            raise bad_request([*loc, "quantity"], problem, "type_error.number")
        quantity = Decimal(movement["quantity"])
        if movement["instrument_id"].startswith("$"):
            problem = cash_error(movement["instrument_id"][1:], quantity)
            if problem is not None:
                raise bad_request([*loc, "quantity"], problem)
        if movement["type"] == "CASH_WITHDRAWAL" and quantity >= 0:
            raise bad_request([*loc, "quantity"], "a CASH_WITHDRAWAL removes cash: the quantity must be negative")
        if movement["type"] == "CASH_DEPOSIT" and quantity <= 0:
            raise bad_request([*loc, "quantity"], "a CASH_DEPOSIT adds cash: the quantity must be positive")
        if "unit_price" in movement and number_error(movement["unit_price"]) is not None:
            raise bad_request([*loc, "unit_price"], "must be a number", "type_error.number")
        if movement.get("trade_type") not in (None, *TRADE_TYPES):
            raise bad_request([*loc, "trade_type"], "not a known trade type", "type_error.enum")
    return body


def transaction_status(movements: list[Document], latest: str) -> str:
    """The transaction-level status computed from its movements (the docs' example value "COMPLETED")."""
    if all(m["status"] in ("EXECUTED", "SETTLED") for m in movements):
        return "COMPLETED"
    if latest in ("CANCELLED", "NOT_EXECUTED", "EXPIRED"):
        return "CANCELLED"
    return "PENDING"


def transaction_document(portfolio_id: str, currency: str | None, body: Document) -> Document:
    """The stored transaction: type and status computed from its movements, as the docs' example shows.

    ``status`` is response-only: "COMPLETED" once every movement is EXECUTED or SETTLED (the docs'
    example value), "CANCELLED" once the latest is cancelled/not executed/expired, else "PENDING".
    """
    movements: list[Document] = body["movements"]
    latest = max(enumerate(movements), key=lambda item: (datetime.fromisoformat(item[1]["datetime"]), item[0]))
    kinds = {m["type"] for m in movements}
    if kinds <= _CASH_MOVEMENTS:
        kind = "CASH_TRANSFER"
    elif kinds & _ORDER_MOVEMENTS:
        kind = "ORDER"
    elif kinds & {"TRANSFER_IN", "TRANSFER_OUT"}:
        kind = "SECURITY_TRANSFER"
    elif kinds & {"CORPORATE_ACTION_IN", "CORPORATE_ACTION_OUT", "STOCK_SPLIT", "REVERSE_STOCK_SPLIT"}:
        kind = "CORPORATE_ACTION"
    else:
        kind = "ADMINISTRATIVE"
    stamp = now_iso()
    return {
        "id": new_id("T"),
        "portfolio_id": portfolio_id,
        "portfolio_currency": currency,
        "external_id": body.get("external_id"),
        "optimization_id": body.get("optimization_id"),
        "order_type": body.get("order_type"),
        "description": body.get("description"),
        "type": kind,
        "status": transaction_status(movements, latest[1]["status"]),
        "movements": movements,
        "creation_datetime": stamp,
        "version": 1,
        "version_datetime": stamp,
        "deleted": False,
    }


# -- POST /events/{kind}/ ---------------------------------------------------------------------------


def validate_event(body: Any) -> dict[str, str]:
    """The event's ``data`` if acceptable; raises Problem(400) otherwise."""
    if not isinstance(body, dict):
        raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
    extra_fields(body, frozenset({"data"}), ["body"])
    data = body.get("data")
    if not isinstance(data, dict):
        raise bad_request(["body", "data"], "field required", "value_error.missing")
    extra_fields(data, frozenset({"amount", "currency", "portfolio"}), ["body", "data"])
    for field in ("amount", "currency", "portfolio"):
        if field not in data:
            raise bad_request(["body", "data", field], "field required", "value_error.missing")
    amount = data["amount"]
    if not isinstance(amount, str) or not POSITIVE_DECIMAL_RE.match(amount):
        raise bad_request(["body", "data", "amount"], "must be a string holding a positive decimal number")
    try:
        positive = Decimal(amount) > 0
    except InvalidOperation:  # pragma: no cover - the regex already checked
        positive = False
    if not positive:
        raise bad_request(["body", "data", "amount"], "must be greater than zero")
    currency = data["currency"]
    if not isinstance(currency, str) or not CURRENCY_RE.match(currency):
        raise bad_request(["body", "data", "currency"], "must be an ISO 4217 code without '$'")
    problem = cash_error(currency, Decimal(amount))
    if problem is not None:
        raise bad_request(["body", "data", "amount"], problem)
    portfolio = data["portfolio"]
    if not isinstance(portfolio, str) or not PORTFOLIO_ID_RE.match(portfolio):
        raise bad_request(["body", "data", "portfolio"], "must be a portfolio id")
    return {"amount": amount, "currency": currency, "portfolio": portfolio}
