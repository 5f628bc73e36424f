"""``POST /events/deposit/`` in the sandbox: InvestSuite books an announced deposit itself, once per key.

The event's body is validated as every event (``rules.validate_event``: ``amount`` a decimal string at the
currency's minor unit, ``currency`` without ``$``, a portfolio id; an unknown portfolio is 422). Then, for a
deposit, in ONE database transaction with the event record (``SandboxStore.record_event`` with a booking):

1. the portfolio row is locked; an Idempotency-Key seen before answers first: the same body replays the
   stored response (``Idempotent-Replayed: true``) and changes nothing, another body is 409;
2. the portfolio must accept a deposit (``deposit_refusal``): ``currency`` is its base currency (else
   422), it is REAL_MONEY, not archived, not deleted, with status ACTIVE or WAITING_FOR_FUNDS (else 409
   "Business logic error" with ``detail: [{loc: [body, data, portfolio], msg, type: conflict.portfolio_*}]``;
   a reused key's 409 names ``[header, Idempotency-Key]`` instead, so the two are told apart). A refusal
   records nothing, so the key stays free;
3. InvestSuite records a SETTLED ``CASH_DEPOSIT`` transaction (quantity = the amount, ``external_id`` =
   the Idempotency-Key, datetime now), raises the ``$CCY`` holding by the amount (exact Decimal, a missing
   cash key starts at 0), sets ``funded_since`` to now when it is null (never changes it otherwise) and
   bumps ``version`` (``book_deposit``).

Faults behave as for every write (``app.Sandbox.endpoint``): an injected 5xx answers before anything is
done; a lost response (504) comes after the commit, so the deposit is applied and a resend with the same
key replays it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from batch.sandbox.rules import Problem, conflict, conflict_at, transaction_document
from batch.sandbox.store import Document, now_iso

#: the statuses in which InvestSuite accepts a deposit (DESIGN §9.6)
DEPOSIT_STATUSES = ("ACTIVE", "WAITING_FOR_FUNDS")


def unknown_portfolio() -> Problem:
    """422: the event names no portfolio InvestSuite knows."""
    return Problem(
        422,
        {
            "title": "Validation error",
            "detail": [{"loc": ["body", "data", "portfolio"], "msg": "portfolio not found"}],
            "status": 422,
        },
    )


def deposit_refusal(document: Document, currency: str) -> Problem | None:
    """Why the portfolio cannot receive a deposit in ``currency`` (422 or 409), or None."""
    portfolio_id = document.get("id")
    base = document.get("base_currency")
    if currency != base:
        return Problem(
            422,
            {
                "title": "Validation error",
                "detail": [
                    {
                        "loc": ["body", "data", "currency"],
                        "msg": f"{currency} is not the base currency of portfolio {portfolio_id} ({base})",
                    }
                ],
                "status": 422,
            },
        )
    if document.get("deleted"):
        return _refused(f"portfolio {portfolio_id} is deleted", "deleted")
    if document.get("money_type") != "REAL_MONEY":
        money_type = document.get("money_type")
        return _refused(f"portfolio {portfolio_id} is {money_type}: deposits are for REAL_MONEY", "money_type")
    if document.get("archived"):
        return _refused(f"portfolio {portfolio_id} is archived", "archived")
    status = document.get("status")
    if status not in DEPOSIT_STATUSES:
        need = " or ".join(DEPOSIT_STATUSES)
        return _refused(f"portfolio {portfolio_id} has status {status}: deposits need {need}", "status")
    return None


def _refused(msg: str, why: str) -> Problem:
    """409 naming the portfolio (``loc``) and why (``type``): never confused with a reused Idempotency-Key."""
    return conflict_at(["body", "data", "portfolio"], msg, f"conflict.portfolio_{why}")


def _cash(value: object, key: str, portfolio_id: object) -> Decimal:
    """The ``$CCY`` holding as an exact Decimal (a number or a numeric string; absent = 0)."""
    if value is None:
        return Decimal(0)
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = Decimal("NaN")
    else:
        number = Decimal("NaN")
    if not number.is_finite():
        raise conflict(f"portfolio {portfolio_id}: the cash holding {key} is not a number ({value!r})")
    return number


def book_deposit(document: Document | None, data: dict[str, str], key: str) -> tuple[Document, Document]:
    """The portfolio after the deposit and the SETTLED CASH_DEPOSIT transaction; raises ``Problem`` on a refusal."""
    if document is None:
        raise unknown_portfolio()
    refusal = deposit_refusal(document, data["currency"])
    if refusal is not None:
        raise refusal
    amount = Decimal(data["amount"])
    cash_key = f"${data['currency']}"
    now = now_iso()
    holdings = document.get("portfolio") or {}
    if not isinstance(holdings, dict):
        raise conflict(f"portfolio {document.get('id')}: the holdings are not an object")
    holdings = dict(holdings)
    holdings[cash_key] = _cash(holdings.get(cash_key), cash_key, document.get("id")) + amount
    updated = dict(document)
    updated["portfolio"] = holdings
    if not document.get("funded_since"):
        updated["funded_since"] = now
    updated["version"] = int(document.get("version", 1)) + 1
    updated["version_datetime"] = now
    movement = {"type": "CASH_DEPOSIT", "status": "SETTLED", "datetime": now, "instrument_id": cash_key}
    transaction = transaction_document(
        str(document["id"]),
        str(document.get("base_currency")),
        {"external_id": key, "movements": [{**movement, "quantity": amount}]},
    )
    return updated, transaction
