"""Contract test: the response examples of the InvestSuite digest, fed verbatim through the client and the rules.

``/work/shared/reference/investsuite-api.md`` (the digest of the InvestSuite docs) gives example values
for the responses the job reads. Where the docs give an example value the job must accept it: each
example text below is copied from the digest (``[ ... ]`` placeholders filled with a documented item)
and served by an ``httpx.MockTransport``; what the client parses then goes through the reconciliation's
rules, which must find the payout settled and count it as InvestSuite's.
"""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from batch.adapters.investsuite import InvestSuiteClient
from batch.errors import NotFoundError, RemotePermanentError
from batch.service.reconcile.figures import PaidFigures, add_paid
from batch.service.reconcile.readback import portfolio_fact
from batch.service.reconcile.rules import (
    LedgerFact,
    PayoutFacts,
    RemoteFacts,
    match_payout,
)
from batch.service.reconcile.transactions import transaction_fact
from tests.unit.test_investsuite_client import FakeClock, make_settings

# §1: the login / refresh response, verbatim ("expires_in" is a string)
LOGIN = '{"access_token": "...", "token_type": "Bearer", "expires_in": "300", "refresh_token": "..."}'
# §2: the listing envelope, verbatim except ``[ ... ]`` filled and ``next`` null (the last page)
ENVELOPE = '{"next": null, "count": "20", "offset": "20", "results": [RESULTS], "_embedded": {}}'
# §4: the documented withdrawal movement, verbatim, and the response-only example values of a transaction
MOVEMENT = (
    '{"type": "CASH_WITHDRAWAL", "status": "SETTLED",\n'
    '   "datetime": "2021-10-06T00:00:00+00:00", "instrument_id": "$USD", "quantity": -500.0}'
)
TRANSACTION = (
    '{"id": "T01FHCP1CZ9F1S207KJHNA5V244", "external_id": "P01FHAR57WS6Q8AV1GH5EATYKP1/14031738752",'
    ' "portfolio_id": "P01F8ZSNV0J45R9DFZ3D7D8C26F", "portfolio_currency": "USD", "type": "CASH_TRANSFER",'
    ' "status": "COMPLETED", "movements": [MOVEMENT]}'
)
# §3: the holdings map example, and the documented portfolio fields (divest reset to 0 after the payout)
PORTFOLIO = (
    '{"id": "P01F8ZSNV0J45R9DFZ3D7D8C26F", "owned_by_user_id": "UXXXXXXXXXXXXXXXXXXXXXXXXXX",'
    ' "base_currency": "USD", "money_type": "REAL_MONEY", "status": "ACTIVE", "archived": false,'
    ' "config": {"manager": "ROBO_ADVISOR_DISCRETIONARY", "manager_settings": {"divest_amount": 0}},'
    ' "portfolio": {"$USD": 12000, "BE92189F1066": 127}}'
)
PID = "P01F8ZSNV0J45R9DFZ3D7D8C26F"
EXTERNAL_ID = "P01FHAR57WS6Q8AV1GH5EATYKP1/14031738752"


def _serve(listing: str) -> InvestSuiteClient:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/auth/"):
            body = LOGIN
        elif path.endswith("/transactions/"):
            body = listing
        elif path.startswith("/portfolios/"):
            body = PORTFOLIO
        else:
            body = ENVELOPE.replace("[RESULTS]", f"[{PORTFOLIO}]")
        return httpx.Response(200, content=body.encode(), headers={"Content-Type": "application/json"})

    clock = FakeClock()
    return InvestSuiteClient(
        make_settings(), transport=httpx.MockTransport(handler), sleep=clock.sleep, monotonic=clock.monotonic
    )


def _payout() -> PayoutFacts:
    return PayoutFacts(
        payout_id="p-1",
        portfolio_id=PID,
        currency="USD",
        amount=Decimal("500.00"),
        state="COMPLETED",
        reached=frozenset(
            {"ledger_posted", "transaction_recorded", "divest_cleared", "holdings_updated", "event_sent", "completed"}
        ),
        ledger_reference=EXTERNAL_ID,
        transaction_id="T01FHCP1CZ9F1S207KJHNA5V244",
        divest_target=Decimal(0),
        holdings_target_cash=Decimal(12000),
        event_id="E1",
    )


def _check(listing: str) -> None:
    client = _serve(listing)
    client.authenticate()
    found = client.find_transactions(PID, EXTERNAL_ID)
    portfolio = client.get_portfolio(PID)
    remote = RemoteFacts(tuple(transaction_fact(t) for t in found), portfolio_fact(portfolio, "USD"))
    transfer = LedgerFact(EXTERNAL_ID, "p-1", "CASH-1", Decimal("500.00"), "USD")
    assert match_payout(_payout(), transfer, remote) == []
    figures: dict[str, PaidFigures] = {}
    add_paid(figures, _payout(), transfer, remote)
    assert figures["USD"].investsuite == Decimal("500.00")
    assert figures["USD"].agree


def test_documented_transaction_in_the_listing_envelope_is_settled() -> None:
    """The docs' transaction (status "COMPLETED", SETTLED CASH_WITHDRAWAL -500.0) in the envelope: no break, counted."""
    _check(ENVELOPE.replace("[RESULTS]", "[" + TRANSACTION.replace("[MOVEMENT]", f"[{MOVEMENT}]") + "]"))


def test_documented_bare_object_answer_by_external_id_is_settled() -> None:
    """The docs' by-external-id query answers a bare object: parsed, settled, counted."""
    _check(TRANSACTION.replace("[MOVEMENT]", f"[{MOVEMENT}]"))


def test_documented_executed_status_is_accepted() -> None:
    """The docs say "use EXECUTED or SETTLED": an EXECUTED movement under "COMPLETED" is settled too."""
    executed = MOVEMENT.replace('"status": "SETTLED"', '"status": "EXECUTED"')
    _check(TRANSACTION.replace("[MOVEMENT]", f"[{executed}]"))


def test_examples_are_valid_json_as_copied() -> None:
    """The copied examples are JSON once their placeholders are filled (the test reads what the docs print)."""
    for text in (LOGIN, PORTFOLIO, MOVEMENT, TRANSACTION.replace("[MOVEMENT]", "[]")):
        json.loads(text)


# §6: the documented error bodies, verbatim (placeholders filled)
UNAUTHORIZED = (
    '{"title": "Unauthorized", "description": "JWT invalid", "request_id": "5b8e0a4e-3c4a-4a8e-9d6f-2f6d1c3b7a10",'
    ' "timestamp": "2022-06-10T07:49:26.341Z"}'
)
NOT_FOUND = '{"title": "Resource not found", "detail": "...", "status": 404}'
BAD_REQUEST = (
    '{"title": "Bad request", "detail": [{"loc": ["body", "<field>"], "msg": "extra fields not permitted",'
    ' "type": "value_error.extra"}], "status": 400, "body": {}}'
)


def _answering(*answers: tuple[int, str]) -> tuple[InvestSuiteClient, list[str]]:
    """A client whose API answers these (status, body) in turn after the login (then the portfolio)."""
    seen: list[str] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/auth/"):
            return httpx.Response(200, content=LOGIN.encode(), headers={"Content-Type": "application/json"})
        seen.append(request.url.path)
        status, body = queue.pop(0) if queue else (200, PORTFOLIO)
        return httpx.Response(status, content=body.encode(), headers={"Content-Type": "application/json"})

    clock = FakeClock()
    client = InvestSuiteClient(
        make_settings(), transport=httpx.MockTransport(handler), sleep=clock.sleep, monotonic=clock.monotonic
    )
    return client, seen


def test_documented_401_body_logs_in_again_and_the_read_succeeds() -> None:
    """The docs' 401 body ("JWT invalid"): the client logs in again and the GET is answered."""
    client, seen = _answering((401, UNAUTHORIZED))
    assert client.get_portfolio(PID).id == PID
    assert len(seen) == 2


def test_documented_404_and_400_bodies_are_typed_errors() -> None:
    """The docs' 404 body is NotFoundError; its 400 body a permanent refusal (4xx not retryable)."""
    client, seen = _answering((404, NOT_FOUND))
    with pytest.raises(NotFoundError):
        client.get_portfolio(PID)
    client, seen = _answering((400, BAD_REQUEST))
    with pytest.raises(RemotePermanentError):
        client.get_portfolio(PID)
    assert len(seen) == 1  # not retried
