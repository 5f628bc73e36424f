"""Finding portfolios by external id with the documented list query, end to end against the real sandbox.

One sandbox and one set of databases serve the whole module (``module_sandbox``): every test adds
portfolios under external ids no other test uses (CASH-, DUP-, TWIN-, WILD-, IN-), so what one test
finds or counts is only its own, as on a fresh database."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from batch.adapters.investsuite import InvestSuiteClient
from batch.adapters.postgres import Dsns
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.query import compile_sql, parse_query
from batch.sandbox.seed import libpq_dsn, portfolio_document, user_document
from batch.sandbox.store import dumps, new_id
from batch.settings import InvestSuiteSettings
from tests.fixtures.sandbox import RunningSandbox, SandboxState


@pytest.fixture
def client(module_sandbox: RunningSandbox) -> Iterator[InvestSuiteClient]:
    """A new client per test (its call counts are this test's own) on the module's sandbox."""
    settings = InvestSuiteSettings(
        base_url=module_sandbox.base_url,
        access_key_id=DEFAULT_ACCESS_KEY_ID,
        secret_access_key=SecretStr(DEFAULT_SECRET_ACCESS_KEY),
    )
    with InvestSuiteClient(settings) as client:
        yield client


@pytest.fixture
def sandbox_store(module_dsns: Dsns) -> SandboxState:
    """The module's sandbox database, for adding portfolios straight in PostgreSQL."""
    return SandboxState(module_dsns.sandbox)


def _add_many(store: SandboxState, external_ids: list[str], **fields: Any) -> list[str]:
    """Insert one portfolio (and its owner) per external id in one transaction; return the portfolio ids."""
    rng = random.Random(len(external_ids))
    ids: list[str] = []
    with psycopg.connect(store.dsn) as conn, conn.cursor() as cur:
        for index, external_id in enumerate(external_ids):
            user_id, portfolio_id = new_id("U"), new_id("P")
            doc = portfolio_document(portfolio_id, user_id, 500_000 + index, external_id=external_id, **fields)
            user = user_document(user_id, 500_000 + index, rng)
            cur.execute("INSERT INTO sandbox.users (id, doc) VALUES (%s, %s::json)", [user_id, dumps(user)])
            cur.execute("INSERT INTO sandbox.portfolios (id, doc) VALUES (%s, %s::json)", [portfolio_id, dumps(doc)])
            ids.append(portfolio_id)
    return ids


def test_lookup_of_250_ids_asks_100_per_request(client: InvestSuiteClient, sandbox_store: SandboxState) -> None:
    """230 known and 20 unknown external ids: three listing requests (100, 100, 50 ids), each known id found once."""
    known = [f"CASH-{i:06d}" for i in range(230)]
    portfolio_ids = dict(zip(known, _add_many(sandbox_store, known), strict=True))
    _add_many(sandbox_store, ["CASH-NOT-ASKED"])
    asked = [*known, *(f"NOBODY-{i}" for i in range(20)), known[0]]

    found = client.find_portfolios_by_external_ids(asked)

    assert {external_id: p.id for external_id, p in found.items()} == portfolio_ids
    assert client.calls["GET /portfolios/"] == 3


def test_deleted_duplicates_give_way_to_the_live_portfolio_across_pages(
    client: InvestSuiteClient, sandbox_store: SandboxState
) -> None:
    """60 ids each carried by a deleted and a live portfolio (120 matches: two pages): the live one is returned."""
    external_ids = [f"DUP-{i:03d}" for i in range(60)]
    _add_many(sandbox_store, external_ids, deleted=True)
    live = dict(zip(external_ids, _add_many(sandbox_store, external_ids), strict=True))

    found = client.find_portfolios_by_external_ids(external_ids)

    assert {external_id: p.id for external_id, p in found.items()} == live
    assert client.calls["GET /portfolios/"] == 2


def test_id_carried_by_two_live_portfolios_is_left_out_and_logged(
    client: InvestSuiteClient, sandbox_store: SandboxState
) -> None:
    """An external id two live portfolios carry is ambiguous: absent from the result, with a warning naming both."""
    both = _add_many(sandbox_store, ["TWIN-1", "TWIN-1"])
    (single,) = _add_many(sandbox_store, ["SINGLE-1"])
    with capture_logs() as logs:
        found = client.find_portfolios_by_external_ids(["TWIN-1", "SINGLE-1"])
    assert {external_id: p.id for external_id, p in found.items()} == {"SINGLE-1": single}
    (warning,) = [entry for entry in logs if entry["event"] == "investsuite.external_id_ambiguous"]
    assert warning["external_id"] == "TWIN-1" and sorted(warning["portfolio_ids"]) == sorted(both)


def test_wildcard_in_an_id_matches_only_itself(client: InvestSuiteClient, sandbox_store: SandboxState) -> None:
    """'*' is a wildcard in the query language: an asked id with '*' returns only a portfolio carrying it exactly."""
    _add_many(sandbox_store, ["WILD-1", "WILD-2", "WILD-*"])
    found = client.find_portfolios_by_external_ids(["WILD-*"])
    assert list(found) == ["WILD-*"]


@pytest.mark.parametrize("bad", ["O'Brien", ""])
def test_id_with_a_quote_or_empty_is_refused_before_any_request(client: InvestSuiteClient, bad: str) -> None:
    """An external id with a single quote (the query language cannot quote it) or an empty one is refused unasked."""
    with pytest.raises(ValueError, match="single quote"):
        client.find_portfolios_by_external_ids(["FINE-1", bad])
    assert client.calls["GET /portfolios/"] == 0


def test_lookup_of_nothing_asks_nothing(client: InvestSuiteClient) -> None:
    """An empty list of external ids returns an empty map without a request."""
    assert client.find_portfolios_by_external_ids([]) == {}
    assert sum(client.calls.values()) == 0


def test_sandbox_in_query_matches_exactly_the_listed_strings(
    module_sandbox: RunningSandbox, sandbox_store: SandboxState
) -> None:
    """GET /portfolios/?query=external_id in ['A', 'B'] lists exactly the portfolios carrying one of them."""
    ids = _add_many(sandbox_store, ["IN-A", "IN-B", "IN-C", "IN-AB"])
    with module_sandbox.client() as http:
        body = http.get("/portfolios/", params={"query": "external_id in ['IN-A', 'IN-B', 'NONE']"}).json()
        mixed = http.get("/portfolios/", params={"query": "external_id in ['IN-C', 'IN-A*']"}).json()
    assert sorted(d["id"] for d in body["results"]) == sorted(ids[:2])
    assert sorted(d["id"] for d in mixed["results"]) == sorted([ids[0], ids[2], ids[3]])


@pytest.mark.parametrize("query", ["external_id in ['IN-A', 'IN-B']", "external_id eq 'IN-A'"])
def test_external_id_queries_read_the_external_id_index(module_dsns: Dsns, query: str) -> None:
    """The compiled external-id lookups match the index portfolios_by_external_id (a 100-id lookup stays cheap)."""
    where, params = compile_sql(parse_query(query))
    with psycopg.connect(libpq_dsn(module_dsns.sandbox)) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(f"EXPLAIN SELECT id FROM sandbox.portfolios WHERE {where} ORDER BY id", params).fetchall()
    assert "portfolios_by_external_id" in " ".join(str(row[0]) for row in plan)
