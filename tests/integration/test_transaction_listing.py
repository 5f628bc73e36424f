"""Listing a portfolio's transactions by external id (`external_id in [...]`), end to end against the sandbox.

The reconciliations read transactions this way in bulk (``batch.service.reconcile.transactions``); each id must find
exactly what the single lookup of the execution path (`external_id eq '…'`, ``find_transactions``) finds.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from pydantic import SecretStr

from batch.adapters.investsuite import InvestSuiteClient
from batch.errors import NotFoundError
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.rules import transaction_document, validate_transaction
from batch.sandbox.store import dumps, new_id
from batch.settings import InvestSuiteSettings
from tests.fixtures.sandbox import RunningSandbox, SandboxState

ROUTE = "GET /portfolios/{id}/transactions/"


@pytest.fixture
def client(sandbox: RunningSandbox) -> Iterator[InvestSuiteClient]:
    settings = InvestSuiteSettings(
        base_url=sandbox.base_url,
        access_key_id=DEFAULT_ACCESS_KEY_ID,
        secret_access_key=SecretStr(DEFAULT_SECRET_ACCESS_KEY),
    )
    with InvestSuiteClient(settings) as client:
        yield client


def _add_transactions(store: SandboxState, portfolio_id: str, external_ids: list[str]) -> None:
    """One SETTLED cash withdrawal per external id (repeat an id for a duplicate), in one database transaction."""
    with psycopg.connect(store.dsn) as conn, conn.cursor() as cur:
        for index, external_id in enumerate(external_ids):
            movement = {
                "type": "CASH_WITHDRAWAL",
                "status": "SETTLED",
                "datetime": "2026-11-20T00:00:00+00:00",
                "instrument_id": "$EUR",
                "quantity": -(index + 1),
            }
            body = validate_transaction({"external_id": external_id, "movements": [movement]})
            doc = transaction_document(portfolio_id, "EUR", body) | {"id": new_id("T")}
            cur.execute(
                "INSERT INTO sandbox.transactions (id, portfolio_id, external_id, doc) VALUES (%s, %s, %s, %s::json)",
                [doc["id"], portfolio_id, external_id, dumps(doc)],
            )


def test_250_ids_are_listed_100_per_request_and_each_finds_what_its_eq_lookup_finds(
    client: InvestSuiteClient, sandbox_store: SandboxState
) -> None:
    """250 ids (3 of them duplicated, 20 unknown): 3 requests plus one page for 103 rows; same as eq per id."""
    portfolio, other = sandbox_store.add_portfolio()["id"], sandbox_store.add_portfolio()["id"]
    known = [f"LT-{i:04d}" for i in range(230)]
    _add_transactions(sandbox_store, portfolio, [*known, "LT-0000", "LT-0001", "LT-0002"])
    _add_transactions(sandbox_store, other, known[:50])  # another portfolio's: never found for this one
    asked = [*known, *(f"LT-NONE-{i:02d}" for i in range(20))]

    found = client.transactions_by_external_id(portfolio, asked)

    assert client.calls[ROUTE] == 4  # 100 ids (103 rows: two pages of 100), 100 ids, 50 ids
    assert sorted(found) == sorted(asked)
    for external_id in asked:
        alone = client.find_transactions(portfolio, external_id)
        assert sorted(t.id for t in found[external_id]) == sorted(t.id for t in alone), external_id
    assert [len(found[x]) for x in ("LT-0000", "LT-0002", "LT-0003", "LT-NONE-00")] == [2, 2, 1, 0]


def test_a_wildcard_id_finds_only_the_transaction_carrying_it_exactly(
    client: InvestSuiteClient, sandbox_store: SandboxState
) -> None:
    """'*' is a wildcard on the server: `W-*` finds only the transaction whose external id is `W-*`."""
    portfolio = sandbox_store.add_portfolio()["id"]
    _add_transactions(sandbox_store, portfolio, ["W-1", "W-2", "W-*"])
    found = client.transactions_by_external_id(portfolio, ["W-*", "W-1"])
    assert {x: [t.external_id for t in ts] for x, ts in found.items()} == {"W-*": ["W-*"], "W-1": ["W-1"]}


def test_an_id_with_a_quote_is_refused_before_any_request(client: InvestSuiteClient) -> None:
    """The query language cannot quote a single quote: the read is refused and nothing is asked."""
    with pytest.raises(ValueError, match="single quote"):
        client.transactions_by_external_id(new_id("P"), ["LT-1", "O'Brien"])
    assert client.calls[ROUTE] == 0


def test_the_listing_of_a_portfolio_the_sandbox_does_not_know_is_not_found(client: InvestSuiteClient) -> None:
    """`GET /portfolios/{unknown}/transactions/` answers 404: NotFoundError (the portfolio is gone)."""
    with pytest.raises(NotFoundError):
        client.transactions_by_external_id(new_id("P"), ["LT-1"])
