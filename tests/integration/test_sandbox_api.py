"""The sandbox serves the InvestSuite contract the payout job relies on (real HTTP, real PostgreSQL)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.server import SandboxProcess
from batch.sandbox.store import loads
from tests.fixtures.sandbox import RunningSandbox, SandboxState

PENDING = "config.manager_settings.divest_amount neq 0 and config.manager_settings.divest_amount neq null"
KEYS = {"access_key_id": "demo-access-key", "secret_access_key": "demo-secret-key"}


@pytest.fixture
def store(module_dsns: Dsns) -> SandboxState:
    return SandboxState(module_dsns.sandbox)


@pytest.fixture
def client(module_sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    module_sandbox.admin.set_faults()
    with module_sandbox.client() as http:
        yield http


def parse(response: httpx.Response) -> Any:
    return loads(response.content)


def test_login_returns_bearer_token_with_string_expiry(module_sandbox: RunningSandbox) -> None:
    """Login answers the documented shape, expires_in being a string of seconds."""
    body = httpx.post(module_sandbox.base_url + "/auth/login/", json=KEYS).json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == "300"
    assert body["access_token"] and body["refresh_token"]


def test_wrong_keys_and_missing_token_are_401(module_sandbox: RunningSandbox) -> None:
    """Wrong access keys and requests without a valid Bearer token get 401 with the documented body."""
    wrong = httpx.post(module_sandbox.base_url + "/auth/login/", json={**KEYS, "secret_access_key": "nope"})
    assert wrong.status_code == 401
    for headers in ({}, {"Authorization": "Bearer unknown"}):
        response = httpx.get(module_sandbox.base_url + "/portfolios/", headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert body["title"] == "Unauthorized" and body["description"] == "JWT invalid"
        assert body["request_id"] and body["timestamp"]


def test_refresh_gives_new_tokens_and_rotates(module_sandbox: RunningSandbox) -> None:
    """A refresh token yields a working access token once; reusing it is refused."""
    tokens = httpx.post(module_sandbox.base_url + "/auth/login/", json=KEYS).json()
    fresh = httpx.post(
        module_sandbox.base_url + "/auth/refresh-token/", json={"refresh_token": tokens["refresh_token"]}
    )
    assert fresh.status_code == 200 and fresh.json()["expires_in"] == "300"
    headers = {"Authorization": f"Bearer {fresh.json()['access_token']}"}
    assert httpx.get(module_sandbox.base_url + "/portfolios/?limit=1", headers=headers).status_code == 200
    again = httpx.post(
        module_sandbox.base_url + "/auth/refresh-token/", json={"refresh_token": tokens["refresh_token"]}
    )
    assert again.status_code == 401


def test_tokens_expire_after_their_ttl(dsns: Dsns) -> None:
    """An access token stops working once its TTL is over; a refresh then works again."""
    with SandboxProcess(dsns.sandbox, token_ttl_seconds=1) as process:
        tokens = httpx.post(process.base_url + "/auth/login/", json=KEYS).json()
        assert tokens["expires_in"] == "1"
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert httpx.get(process.base_url + "/portfolios/", headers=headers).status_code == 200
        time.sleep(1.2)
        assert httpx.get(process.base_url + "/portfolios/", headers=headers).status_code == 401
        refreshed = httpx.post(
            process.base_url + "/auth/refresh-token/", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200


def test_expire_tokens_admin_call_invalidates_every_token(module_sandbox: RunningSandbox) -> None:
    """POST /_sandbox/expire-tokens makes current access and refresh tokens answer 401."""
    tokens = httpx.post(module_sandbox.base_url + "/auth/login/", json=KEYS).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert module_sandbox.admin.expire_tokens() >= 2
    assert httpx.get(module_sandbox.base_url + "/portfolios/", headers=headers).status_code == 401
    refresh = httpx.post(
        module_sandbox.base_url + "/auth/refresh-token/", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status_code == 401


def test_next_style_absolute_and_relative_are_selectable(dsns: Dsns) -> None:
    """next_style="absolute" gives http://127.0.0.1:PORT/... links on every page; "relative" gives paths."""
    state = SandboxState(dsns.sandbox)
    for _ in range(5):
        state.add_portfolio()
    for style, prefix_of in (
        ("absolute", lambda p: p.base_url + "/portfolios/?"),
        ("relative", lambda p: "/portfolios/?"),
    ):
        with SandboxProcess(dsns.sandbox, next_style=style) as process:
            token = httpx.post(process.base_url + "/auth/login/", json=KEYS).json()["access_token"]
            url: str | None = "/portfolios/?limit=1"
            links = []
            with httpx.Client(base_url=process.base_url, headers={"Authorization": f"Bearer {token}"}) as http:
                while url is not None:
                    url = http.get(url).json()["next"]
                    if url is not None:
                        links.append(url)
            assert len(links) == 4 and all(link.startswith(prefix_of(process)) for link in links)


def test_paging_follows_relative_and_absolute_next(
    client: httpx.Client, store: SandboxState, module_sandbox: RunningSandbox
) -> None:
    """Pages are ordered by id, next alternates relative/absolute and keeps query and embed; last next is null."""
    tag = uuid.uuid4().hex[:8].upper()
    made = [store.add_portfolio(external_id=f"PG-{tag}-{i}", divest_amount=Decimal(10)) for i in range(7)]
    url: str | None = f"/portfolios/?limit=2&query=external_id eq 'PG-{tag}-*'&embed=owned_by_user_id"
    seen: list[str] = []
    styles = set()
    while url is not None:
        page = client.get(url)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["count"] == str(len(body["results"])) and isinstance(body["offset"], str)
        for item in body["results"]:
            assert item["owned_by_user_id"] in body["_embedded"]
        seen += [item["id"] for item in body["results"]]
        url = body["next"]
        if url is not None:
            styles.add("absolute" if url.startswith(module_sandbox.base_url) else "relative")
            assert "query=" in url and "embed=owned_by_user_id" in url
    assert seen == sorted(p["id"] for p in made)
    assert styles == {"absolute", "relative"}


def test_limit_above_maximum_and_bad_query_are_400(client: httpx.Client) -> None:
    """limit > 100 and an unparseable query are refused with 400."""
    assert client.get("/portfolios/?limit=101").status_code == 400
    assert client.get("/portfolios/", params={"query": "status eq"}).status_code == 400
    assert client.get("/portfolios/", params={"query": "status like 'x'"}).status_code == 400
    assert client.get("/portfolios/?embed=first_name").status_code == 400


def test_pending_query_excludes_zero_and_null_divest(client: httpx.Client, store: SandboxState) -> None:
    """The documented pending query returns numeric and string divests, never 0, 0.0, null or missing."""
    tag = uuid.uuid4().hex[:8].upper()
    amounts: dict[str, Any] = {
        "zero": 0,
        "zero_fraction": Decimal("0.0"),
        "null": None,
        "full": Decimal("1E+100"),
        "partial": Decimal("10.005"),
        "string": "250.00",
        "negative": Decimal("-5"),
    }
    ids = {
        name: store.add_portfolio(external_id=f"PQ-{tag}-{name}", divest_amount=v)["id"] for name, v in amounts.items()
    }
    body = client.get(
        "/portfolios/", params={"query": f"{PENDING} and external_id eq 'PQ-{tag}-*'", "limit": 100}
    ).json()
    listed = {item["id"] for item in body["results"]}
    assert listed == {ids["full"], ids["partial"], ids["string"], ids["negative"]}


def test_listing_includes_archived_deleted_and_filters_on_flags(client: httpx.Client, store: SandboxState) -> None:
    """Archived and deleted portfolios are listed when they match; booleans, enums and or/() filter."""
    tag = uuid.uuid4().hex[:8].upper()
    archived = store.add_portfolio(external_id=f"PF-{tag}-a", archived=True, divest_amount=Decimal(5))
    deleted = store.add_portfolio(external_id=f"PF-{tag}-d", deleted=True, divest_amount=Decimal(5))
    paper = store.add_portfolio(external_id=f"PF-{tag}-p", money_type="PAPER_MONEY", divest_amount=Decimal(5))
    prefix = f"external_id eq 'PF-{tag}-*'"
    everything = client.get("/portfolios/", params={"query": f"{PENDING} and {prefix}"}).json()["results"]
    assert {p["id"] for p in everything} == {archived["id"], deleted["id"], paper["id"]}
    real = client.get(
        "/portfolios/", params={"query": f"{prefix} and money_type eq 'REAL_MONEY' and archived eq false"}
    )
    assert [p["id"] for p in real.json()["results"]] == [deleted["id"]]
    either = client.get(
        "/portfolios/", params={"query": f"{prefix} and (archived eq true or money_type neq 'REAL_MONEY')"}
    )
    assert {p["id"] for p in either.json()["results"]} == {archived["id"], paper["id"]}


def test_get_portfolio_keeps_number_precision_and_404(client: httpx.Client, store: SandboxState) -> None:
    """Amounts come back with their exact digits (1E+100, 10.005); an unknown id is a documented 404."""
    made = store.add_portfolio(divest_amount=Decimal("1E+100"), cash=Decimal("1234.567"))
    for path in (f"/portfolios/{made['id']}", f"/portfolios/{made['id']}/"):
        doc = parse(client.get(path))
        assert doc["config"]["manager_settings"]["divest_amount"] == Decimal("1E+100")
        assert str(doc["portfolio"]["$EUR"]) == "1234.567"
    missing = client.get("/portfolios/P00000000000000000000000000")
    assert missing.status_code == 404 and missing.json()["title"] == "Resource not found"


def test_patch_replaces_nested_objects_whole_and_bumps_version(client: httpx.Client, store: SandboxState) -> None:
    """PATCH replaces a nested object whole (holdings, config), keeps Decimal digits and increments version."""
    made = store.add_portfolio(positions={"IE00B4L5Y983": Decimal(3)}, divest_amount=Decimal(100))
    response = client.patch(
        f"/portfolios/{made['id']}/", content=b'{"portfolio": {"$EUR": 899.90, "IE00B4L5Y983": 3.14159}}'
    )
    assert response.status_code == 200, response.text
    doc = parse(response)
    assert doc["portfolio"] == {"$EUR": Decimal("899.90"), "IE00B4L5Y983": Decimal("3.14159")} and doc["version"] == 2
    assert str(doc["portfolio"]["$EUR"]) == "899.90"
    config = {"manager": "ROBO_ADVISOR_DISCRETIONARY", "manager_settings": {"divest_amount": 0}}
    doc = parse(client.patch(f"/portfolios/{made['id']}", json={"config": config}))
    assert doc["config"] == config and doc["version"] == 3
    stored = store.portfolio(made["id"])
    assert stored is not None and stored["config"] == config


def test_patch_refuses_unknown_read_only_and_write_once_fields(client: httpx.Client, store: SandboxState) -> None:
    """Unknown fields -> 400 extra, read-only fields -> 400, write-once money_type/config.manager -> 409."""
    made = store.add_portfolio()
    path = f"/portfolios/{made['id']}/"
    unknown = client.patch(path, json={"manager": {"manager_settings": {"divest_amount": 0}}})
    assert unknown.status_code == 400
    assert unknown.json()["detail"][0] == {
        "loc": ["body", "manager"],
        "msg": "extra fields not permitted",
        "type": "value_error.extra",
    }
    assert client.patch(path, json={"version": 9}).status_code == 400
    assert client.patch(path, json={"money_type": "PAPER_MONEY"}).status_code == 409
    assert client.patch(path, json={"config": {"manager": "USER_MANAGED"}}).status_code == 409
    assert client.patch(path, json={"config": {"manager_settings": {}}}).status_code == 409
    assert client.patch(path, json={"portfolio": {"$EUR": "12.00"}}).status_code == 400
    stored = store.portfolio(made["id"])
    assert stored is not None and stored["version"] == 1


def test_users_expose_counter_account(client: httpx.Client, store: SandboxState) -> None:
    """GET /users/{id} returns the IBAN/BIC counter account; a user may have none."""
    owner = store.add_portfolio()["owned_by_user_id"]
    account = client.get(f"/users/{owner}").json()["counter_account"]
    assert account["bank_account_number_type"] == "IBAN" and account["bank_id_type"] == "BIC"
    assert account["bank_account_number"].startswith("BE")
    bare = store.add_portfolio(counter_account=False)["owned_by_user_id"]
    assert client.get(f"/users/{bare}/").json()["counter_account"] is None
    assert client.get("/users/U00000000000000000000000000").status_code == 404


def _withdrawal(external_id: str, quantity: str = "-500.0") -> bytes:
    movement = (
        '{"type": "CASH_WITHDRAWAL", "status": "SETTLED", "datetime": "2026-01-02T00:00:00+00:00", '
        f'"instrument_id": "$EUR", "quantity": {quantity}}}'
    )
    return f'{{"external_id": "{external_id}", "movements": [{movement}]}}'.encode()


def test_transactions_are_created_and_found_by_external_id_duplicates_allowed(
    client: httpx.Client, store: SandboxState
) -> None:
    """POST makes a CASH_TRANSFER (201) without touching holdings; a reused external_id makes a second one."""
    made = store.add_portfolio()
    path = f"/portfolios/{made['id']}/transactions/"
    first = client.post(path, content=_withdrawal("LT-1", "-500.10"), headers={"Content-Type": "application/json"})
    assert first.status_code == 201, first.text
    tx = parse(first)
    assert tx["id"][0] == "T" and tx["type"] == "CASH_TRANSFER" and tx["status"] == "COMPLETED" and tx["version"] == 1
    assert str(tx["movements"][0]["quantity"]) == "-500.10"
    assert client.post(path, content=_withdrawal("LT-1")).status_code == 201
    client.post(path, content=_withdrawal("LT-2"))
    found = client.get(path, params={"query": "external_id eq 'LT-1'"}).json()
    assert found["count"] == "2" and {t["external_id"] for t in found["results"]} == {"LT-1"}
    assert client.get(path, params={"query": "external_id eq 'LT-9'"}).json()["results"] == []
    stored = store.portfolio(made["id"])
    assert stored is not None and stored["portfolio"] == made["portfolio"]


def test_transaction_validation(client: httpx.Client, store: SandboxState) -> None:
    """Bad movements (unknown type, non-number quantity, extra field, none at all) are 400; unknown portfolio 404."""
    made = store.add_portfolio()
    path = f"/portfolios/{made['id']}/transactions/"
    movement = {
        "type": "CASH_WITHDRAWAL",
        "status": "SETTLED",
        "datetime": "2026-01-02T00:00:00Z",
        "instrument_id": "$EUR",
        "quantity": -1,
    }
    assert client.post(path, json={"external_id": "x", "movements": [movement]}).status_code == 201
    for bad in (
        {"external_id": "x", "movements": []},
        {"external_id": "x", "movements": [{**movement, "type": "CASH"}]},
        {"external_id": "x", "movements": [{**movement, "quantity": "-1"}]},
        {"external_id": "x", "movements": [{**movement, "colour": "red"}]},
        {"external_id": "x", "movements": [movement], "extra": 1},
    ):
        assert client.post(path, json=bad).status_code == 400, bad
    assert (
        client.post("/portfolios/P00000000000000000000000000/transactions/", json={"movements": [movement]}).status_code
        == 404
    )


def test_events_replay_same_key_and_refuse_a_different_body(client: httpx.Client, store: SandboxState) -> None:
    """Same Idempotency-Key + body replays the same 201 body; a different body is 409; bad data is 400/422."""
    made = store.add_portfolio()
    body = {"data": {"amount": "500.10", "currency": "EUR", "portfolio": made["id"]}}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/events/withdraw/", json=body, headers=key)
    assert first.status_code == 201 and first.json()["id"][0] == "E"
    replay = client.post("/events/withdraw/", json=body, headers=key)
    assert replay.status_code == 201 and replay.json() == first.json()
    changed = {"data": {**body["data"], "amount": "500.11"}}
    assert client.post("/events/withdraw/", json=changed, headers=key).status_code == 409
    fresh = {"Idempotency-Key": uuid.uuid4().hex}
    for bad in ({"amount": 500.1}, {"amount": "-1"}, {"amount": "0"}, {"currency": "$EUR"}):
        assert (
            client.post("/events/withdraw/", json={"data": {**body["data"], **bad}}, headers=fresh).status_code == 400
        )
    assert client.post("/events/withdraw/", json=body).status_code == 400
    unknown = {"data": {**body["data"], "portfolio": "P00000000000000000000000000"}}
    assert client.post("/events/deposit/", json=unknown, headers=fresh).status_code == 422
    assert len([e for e in store.events() if e["idempotency_key"] == key["Idempotency-Key"]]) == 1
