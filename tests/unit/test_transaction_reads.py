"""The reconciliations' bulk read of transactions: per portfolio, ``external_id in [...]`` 100 ids a request.

Client side against scripted answers (``httpx.MockTransport``): the requests it makes and what it keeps. Service
side with the in-memory ``FakeInvestSuite``: one listing per portfolio, and the same facts (so the same breaks)
as the per-payout lookup by ``external_id eq`` it replaces.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import pytest

from batch.adapters.investsuite_models import RemotePortfolio
from batch.errors import NotFoundError
from batch.service.reconcile.readback import portfolio_fact, read_back
from batch.service.reconcile.rules import PayoutFacts, PortfolioFact, RemoteFacts, match_payout
from batch.service.reconcile.transactions import transaction_fact, transactions_of
from tests.fakes import FakeInvestSuite
from tests.unit.test_investsuite_client import PID, FakeApi, json_response, make_client, portfolio_doc
from tests.unit.test_reconcile import PAYOUT, TRANSFER

ROUTE = "GET /portfolios/{id}/transactions/"
_IN = re.compile(r"^external_id in \[(.*)\]$")


def _asked(request: httpx.Request) -> list[str]:
    """The ids of an ``external_id in [...]`` query (the test's ids hold no comma)."""
    match = _IN.match(request.url.params["query"])
    assert match is not None, request.url.params["query"]
    return [value.strip().strip("'") for value in match.group(1).split(",")]


def _tx(tid: str, external_id: str, quantity: str = "-100.00", status: str = "SETTLED") -> dict[str, Any]:
    movement = {"type": "CASH_WITHDRAWAL", "status": status, "instrument_id": "$EUR", "quantity": quantity}
    return {"id": tid, "external_id": external_id, "portfolio_id": PID, "status": "COMPLETED", "movements": [movement]}


def _listing(rows: list[dict[str, Any]], next_url: str | None = None) -> httpx.Response:
    return json_response(200, json.dumps({"next": next_url, "count": str(len(rows)), "results": rows}))


def test_250_external_ids_of_a_portfolio_are_read_in_3_listing_requests() -> None:
    """250 ids (one twice): three `external_id in [...]` requests of 100, 100 and 50 ids, limit 100, each id found."""
    ids = [f"LT-{i:04d}" for i in range(250)]
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked = _asked(request)
        sizes.append(len(asked))
        assert request.url.params["limit"] == "100"
        return _listing([_tx(f"T{x}", x) for x in asked])

    with make_client(FakeApi(handler)) as client:
        found = client.transactions_by_external_id(PID, [*ids, ids[0]])
    assert sizes == [100, 100, 50]
    assert client.calls[ROUTE] == 3
    assert {x: [t.id for t in found[x]] for x in ids} == {x: [f"T{x}"] for x in ids}


def test_every_id_asked_is_a_key_and_several_transactions_under_one_id_are_all_kept() -> None:
    """An id nothing carries maps to [] (missing); two transactions under one id are both kept (a duplicate)."""
    rows = [_tx("T1", "LT-1"), _tx("T2", "LT-1"), _tx("T3", "LT-2")]
    with make_client(FakeApi(lambda r: _listing(rows))) as client:
        found = client.transactions_by_external_id(PID, ["LT-1", "LT-2", "LT-3"])
    assert {x: [t.id for t in ts] for x, ts in found.items()} == {"LT-1": ["T1", "T2"], "LT-2": ["T3"], "LT-3": []}


def test_the_listing_follows_next_and_a_transaction_two_pages_repeat_counts_once() -> None:
    """`next` is followed as returned; the same transaction id on two pages is one transaction, not a duplicate."""
    pages = {
        None: _listing([_tx("T1", "LT-1"), _tx("T2", "LT-2")], "/portfolios/P/transactions/?page=2"),
        "2": _listing([_tx("T2", "LT-2"), _tx("T3", "LT-2")]),
    }
    with make_client(FakeApi(lambda r: pages[r.url.params.get("page")])) as client:
        found = client.transactions_by_external_id(PID, ["LT-1", "LT-2"])
    assert client.calls[ROUTE] == 2
    assert {x: [t.id for t in ts] for x, ts in found.items()} == {"LT-1": ["T1"], "LT-2": ["T2", "T3"]}


def test_a_wildcard_match_of_another_request_is_not_taken_for_an_id_of_this_one() -> None:
    """`*` is a wildcard: a row matched only by a wildcard id is dropped, never added to an id it did not ask for."""
    ids = ["A*", *(f"B-{i:03d}" for i in range(100))]  # "A*" and 99 B ids in the first request, "B-099" in the second

    def handler(request: httpx.Request) -> httpx.Response:
        asked = _asked(request)
        rows = [_tx(f"T{x}", x) for x in asked if "*" not in x]
        if "A*" in asked:  # the server's wildcard also matches these
            rows += [_tx("TAB", "AB"), _tx("TB099-wild", "B-099")]
        return _listing(rows)

    with make_client(FakeApi(handler)) as client:
        found = client.transactions_by_external_id(PID, ids)
    assert found["A*"] == []
    assert [t.id for t in found["B-099"]] == ["TB-099"]


def test_an_id_with_a_quote_is_refused_before_any_request() -> None:
    """The query language has no escape: one id with a quote refuses the whole read and nothing is sent."""
    api = FakeApi(lambda r: _listing([]))
    with make_client(api) as client, pytest.raises(ValueError, match="single quote"):
        client.transactions_by_external_id(PID, ["LT-1", "it's"])
    assert api.api_requests() == []


def test_a_portfolio_investsuite_does_not_know_is_not_found() -> None:
    """A 404 on the listing is a NotFoundError (the reconciliation reads it as the portfolio gone)."""
    api = FakeApi(lambda r: json_response(404, '{"title": "Resource not found"}'))
    with make_client(api) as client, pytest.raises(NotFoundError):
        client.transactions_by_external_id(PID, ["LT-1"])


# -- the service: grouped by portfolio, the same facts as one lookup per payout ------------------------------


def _paid_portfolio(pid: str) -> dict[str, Any]:
    """A portfolio as ``PAYOUT`` left it: divest cleared, 900.00 EUR of cash."""
    config = {"manager": "ROBO_ADVISOR_DISCRETIONARY", "manager_settings": {"divest_amount": 0}}
    return portfolio_doc(pid, config=config, portfolio={"$EUR": "900.00"})


def _fake(portfolios: list[str]) -> FakeInvestSuite:
    fake = FakeInvestSuite()
    for pid in portfolios:
        fake.portfolios[pid] = _paid_portfolio(pid)
    return fake


def test_250_payouts_of_one_portfolio_cost_3_listing_requests_and_of_3_portfolios_3() -> None:
    """One listing per portfolio, 100 ids a request: 250 ids of one portfolio -> 3 requests; 3 portfolios -> 3."""
    fake = _fake(["P1", "P2", "P3"])
    with ThreadPoolExecutor(4) as pool:
        found = transactions_of(pool, fake, [("P1", f"LT-{i}") for i in range(250)])
        assert fake.listings == 3
        assert len(found) == 250
        assert all(ts == [] for ts in found.values())
        fake.listings = 0
        transactions_of(pool, fake, [("P1", "LT-1"), ("P2", "LT-2"), ("P3", "LT-3"), ("P3", "LT-4")])
    assert fake.listings == 3


def test_a_gone_portfolio_reads_as_none_for_each_of_its_ids_and_others_are_still_read() -> None:
    """A portfolio answering 404 gives None (gone) for its ids; another portfolio's ids are read as usual."""
    fake = _fake(["P1"])
    fake.transactions.append({**_tx("T1", "LT-1"), "portfolio_id": "P1"})
    with ThreadPoolExecutor(2) as pool:
        found = transactions_of(pool, fake, [("P1", "LT-1"), ("GONE", "LT-2"), ("GONE", "LT-3")])
    assert found[("GONE", "LT-2")] is None and found[("GONE", "LT-3")] is None
    assert [t.id for t in found[("P1", "LT-1")] or []] == ["T1"]


def _per_payout(fake: FakeInvestSuite, payout: PayoutFacts, listed: dict[str, RemotePortfolio]) -> RemoteFacts:
    """The read-back as it was before the bulk read: one `external_id eq` lookup per payout (the reference)."""
    remote = listed.get(payout.portfolio_id)
    if remote is None or payout.portfolio_id not in fake.portfolios:
        return RemoteFacts(transactions=None, portfolio=PortfolioFact(payout.portfolio_id, found=False))
    found = fake.find_transactions(payout.portfolio_id, payout.ledger_reference or "")
    return RemoteFacts(tuple(transaction_fact(t) for t in found), portfolio_fact(remote, payout.currency))


def test_the_bulk_read_gives_every_payout_the_breaks_its_own_lookup_gave() -> None:
    """Settled, missing, duplicate, other amount, pending, gone portfolio: the same breaks as one lookup per payout."""
    fake = _fake(["P1", "P2", "P3"])
    rows = [
        _tx("T1", "LT-ok"),
        _tx("T2", "LT-dup"),
        _tx("T3", "LT-dup"),
        _tx("T4", "LT-amount", quantity="-90.00"),
        _tx("T5", "LT-pending", status="PENDING"),
    ]
    fake.transactions += [{**row, "portfolio_id": "P1"} for row in rows]
    fake.transactions.append({**_tx("T6", "LT-ok"), "portfolio_id": "P2"})  # another portfolio's: never counted
    recorded = {"LT-ok": "T1", "LT-dup": "T2", "LT-amount": "T4", "LT-pending": "T5", "LT-missing": "T9"}
    payouts = [replace(PAYOUT, payout_id=f"p-{x}", ledger_reference=x, transaction_id=t) for x, t in recorded.items()]
    payouts += [
        replace(PAYOUT, payout_id="p-other-portfolio", portfolio_id="P3", ledger_reference="LT-ok"),
        replace(PAYOUT, payout_id="p-gone-now", portfolio_id="P4", ledger_reference="LT-x"),  # listed, then 404
        replace(PAYOUT, payout_id="p-not-listed", portfolio_id="P5", ledger_reference="LT-y"),
    ]
    listed = {pid: RemotePortfolio.model_validate(_paid_portfolio(pid)) for pid in ("P1", "P2", "P3", "P4")}
    wanted = [(p.portfolio_id, p.ledger_reference or "") for p in payouts if p.portfolio_id in listed]

    with ThreadPoolExecutor(4) as pool:
        transactions = transactions_of(pool, fake, wanted)
    breaks: dict[str, list[str]] = {}
    for payout in payouts:
        transfer = replace(TRANSFER, reference=payout.ledger_reference or "", idempotency_key=payout.payout_id)
        bulk, alone = read_back(payout, listed, transactions), _per_payout(fake, payout, listed)
        assert bulk == alone, payout.payout_id
        assert match_payout(payout, transfer, bulk) == match_payout(payout, transfer, alone)
        breaks[payout.payout_id] = [str(b.type) for b in match_payout(payout, transfer, bulk)]
    assert fake.listings == 2  # P1 and P3 (P4 answered 404)
    assert breaks["p-LT-ok"] == [] and breaks["p-other-portfolio"] == ["MISSING_TRANSACTION"]
    assert breaks["p-LT-dup"] == ["DUPLICATE_TRANSACTION"]
    assert breaks["p-LT-missing"] == ["MISSING_TRANSACTION"]
    assert breaks["p-LT-amount"] == ["AMOUNT_MISMATCH"] and breaks["p-LT-pending"] == ["TRANSACTION_NOT_SETTLED"]
    assert breaks["p-gone-now"] == breaks["p-not-listed"] != []
