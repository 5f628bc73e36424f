"""Fault injection and operations of the sandbox: latency, 5xx, lost responses, 429, stats, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from batch.adapters.postgres import Dsns
from tests.fixtures.sandbox import RunningSandbox, SandboxState


@pytest.fixture
def store(module_dsns: Dsns) -> SandboxState:
    return SandboxState(module_dsns.sandbox)


@pytest.fixture
def client(module_sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    module_sandbox.admin.set_faults()
    module_sandbox.admin.reset_stats()
    with module_sandbox.client() as http:
        yield http
    module_sandbox.admin.set_faults()


def test_faults_are_off_by_default_and_settable(module_sandbox: RunningSandbox) -> None:
    """GET /_sandbox/faults shows every fault off; PUT replaces the settings and rejects unknown keys."""
    module_sandbox.admin.set_faults()
    assert module_sandbox.admin.faults() == {
        "latency_ms": 0,
        "error_rate": 0.0,
        "error_statuses": None,
        "lose_response_rate": 0.0,
        "rate_limit_per_second": None,
        "methods": None,
        "path_prefixes": None,
        "seed": None,
    }
    assert module_sandbox.admin.set_faults(latency_ms=5)["latency_ms"] == 5
    assert httpx.put(module_sandbox.base_url + "/_sandbox/faults", json={"bogus": 1}).status_code == 400
    assert module_sandbox.admin.set_faults()["latency_ms"] == 0


def test_latency_is_asynchronous(client: httpx.Client, module_sandbox: RunningSandbox) -> None:
    """With 200 ms latency, 50 concurrent requests finish in far less than 50 x 200 ms."""
    module_sandbox.admin.set_faults(latency_ms=200)
    headers = dict(client.headers)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=module_sandbox.base_url, headers=headers, timeout=30) as http:
            responses = await asyncio.gather(*(http.get("/portfolios/?limit=1") for _ in range(50)))
        return [r.status_code for r in responses]

    started = time.monotonic()
    statuses = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert statuses == [200] * 50
    assert 0.2 <= elapsed < 5.0


def test_error_rate_one_answers_5xx_and_can_be_restricted(client: httpx.Client, module_sandbox: RunningSandbox) -> None:
    """error_rate 1.0 makes every request 500/503; restricted to POST, GETs still work."""
    module_sandbox.admin.set_faults(error_rate=1.0)
    assert all(client.get("/portfolios/").status_code in (500, 503) for _ in range(5))
    module_sandbox.admin.set_faults(error_rate=1.0, methods=["POST"])
    assert client.get("/portfolios/").status_code == 200
    module_sandbox.admin.set_faults(error_rate=1.0, path_prefixes=["/events/"])
    assert client.get("/portfolios/").status_code == 200


def test_lost_response_commits_the_write_then_answers_504(
    client: httpx.Client, module_sandbox: RunningSandbox, store: SandboxState
) -> None:
    """lose_response_rate 1.0: PATCH and POST answer 504 but their effect is visible afterwards; GET unaffected."""
    made = store.add_portfolio(divest_amount=Decimal(100))
    module_sandbox.admin.set_faults(lose_response_rate=1.0)
    assert client.get(f"/portfolios/{made['id']}").status_code == 200
    patched = client.patch(f"/portfolios/{made['id']}/", json={"portfolio": {"$EUR": 900}})
    assert patched.status_code == 504
    movement = {
        "type": "CASH_WITHDRAWAL",
        "status": "SETTLED",
        "datetime": "2026-01-02T00:00:00+00:00",
        "instrument_id": "$EUR",
        "quantity": -100,
    }
    posted = client.post(
        f"/portfolios/{made['id']}/transactions/", json={"external_id": "LT-9", "movements": [movement]}
    )
    assert posted.status_code == 504
    module_sandbox.admin.set_faults()
    doc = client.get(f"/portfolios/{made['id']}").json()
    assert doc["portfolio"] == {"$EUR": 900} and doc["version"] == 2
    found = client.get(f"/portfolios/{made['id']}/transactions/", params={"query": "external_id eq 'LT-9'"}).json()
    assert found["count"] == "1"


def test_rate_limit_answers_429_with_retry_after(client: httpx.Client, module_sandbox: RunningSandbox) -> None:
    """Over rate_limit_per_second requests get 429 with an integer Retry-After; admin calls are never limited."""
    module_sandbox.admin.set_faults(rate_limit_per_second=2)
    statuses = [client.get("/portfolios/?limit=1") for _ in range(6)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and statuses[0].status_code == 200
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert module_sandbox.admin.stats()["by_status"]["429"] == len(limited)


def test_stats_count_requests_by_route_and_status(
    client: httpx.Client, module_sandbox: RunningSandbox, store: SandboxState
) -> None:
    """Every non-admin request is counted under its route template and status; reset clears them."""
    made = store.add_portfolio()
    client.get(f"/portfolios/{made['id']}")
    client.get(f"/portfolios/{made['id']}/")
    client.patch(f"/portfolios/{made['id']}/", json={})
    client.get("/portfolios/?limit=1")
    client.get("/nowhere")
    stats = module_sandbox.admin.stats()
    assert stats["by_route"]["GET /portfolios/{id}"] == 2
    assert stats["by_route"]["PATCH /portfolios/{id}/"] == 1
    assert stats["by_route"]["GET /portfolios/"] == 1
    assert stats["by_status"]["404"] == 1
    assert stats["total"] == 6  # the five above and the client fixture's login
    module_sandbox.admin.reset_stats()
    assert module_sandbox.admin.stats()["total"] == 0


def test_state_survives_a_killed_sandbox(sandbox: RunningSandbox, sandbox_store: SandboxState) -> None:
    """After kill -9 and restart, portfolios, transactions, events and tokens are still there."""
    made = sandbox_store.add_portfolio()
    with sandbox.client() as http:
        assert http.patch(f"/portfolios/{made['id']}/", json={"archived": True}).status_code == 200
        key = {"Idempotency-Key": "restart-1"}
        body = {"data": {"amount": "1", "currency": "EUR", "portfolio": made["id"]}}
        event = http.post("/events/withdraw/", json=body, headers=key).json()
        sandbox.restart(kill=True)
        assert http.get(f"/portfolios/{made['id']}").json()["archived"] is True
        assert http.post("/events/withdraw/", json=body, headers=key).json() == event
