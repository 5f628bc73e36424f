"""POST /events/deposit/ on the real sandbox: strict refusals, booked once with its event, replays change nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from batch.adapters.postgres import Dsns
from batch.domain.deposit import KEY_REUSED, REFUSED, refusal_kind
from batch.sandbox.store import dumps
from tests.fixtures.sandbox import RunningSandbox, SandboxState


@pytest.fixture
def store(module_dsns: Dsns) -> SandboxState:
    return SandboxState(module_dsns.sandbox)


@pytest.fixture
def client(module_sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    module_sandbox.admin.set_faults()
    with module_sandbox.client() as http:
        yield http
    module_sandbox.admin.set_faults()


def _portfolio(store: SandboxState, *, funded_since: Any = "keep", **fields: Any) -> dict[str, Any]:
    """A portfolio built by seed.portfolio_document; ``funded_since`` overrides the seeded timestamp."""
    made = store.add_portfolio(**fields)
    if funded_since != "keep":
        made["funded_since"] = funded_since
        with psycopg.connect(store.dsn) as conn:
            conn.execute("UPDATE sandbox.portfolios SET doc = %s::json WHERE id = %s", [dumps(made), made["id"]])
    return made


def _deposit(
    client: httpx.Client, portfolio: dict[str, Any], amount: str, key: str, currency: str = ""
) -> httpx.Response:
    body = {
        "data": {"amount": amount, "currency": currency or portfolio["base_currency"], "portfolio": portfolio["id"]}
    }
    return client.post("/events/deposit/", json=body, headers={"Idempotency-Key": key})


def _deposits(store: SandboxState, portfolio_id: str) -> list[dict[str, Any]]:
    return [t for t in store.transactions(portfolio_id) if t["movements"][0]["type"] == "CASH_DEPOSIT"]


def _key() -> str:
    return f"LT-{uuid.uuid4().hex[:16]}"


def test_deposit_records_a_settled_transaction_and_raises_the_cash(client: httpx.Client, store: SandboxState) -> None:
    """A deposit adds a SETTLED CASH_DEPOSIT keyed by the Idempotency-Key and raises $EUR exactly; version + 1."""
    made = _portfolio(store, cash=Decimal("1000.00"))
    key = _key()
    answer = _deposit(client, made, "1500.00", key)
    assert answer.status_code == 201 and answer.json()["type"] == "deposit"
    after = store.portfolio(made["id"])
    assert after is not None
    assert after["portfolio"]["$EUR"] == Decimal("2500.00")
    assert after["version"] == made["version"] + 1
    assert after["funded_since"] == made["funded_since"]
    (transaction,) = _deposits(store, made["id"])
    assert transaction["external_id"] == key and transaction["status"] == "COMPLETED"
    (movement,) = transaction["movements"]
    assert (movement["status"], movement["instrument_id"], movement["quantity"]) == (
        "SETTLED",
        "$EUR",
        Decimal("1500.00"),
    )
    assert [e["idempotency_key"] for e in store.events()].count(key) == 1


def test_replay_with_the_same_key_and_body_changes_nothing(client: httpx.Client, store: SandboxState) -> None:
    """The same key and body answer the stored 201 (Idempotent-Replayed) and book nothing more."""
    made = _portfolio(store)
    key = _key()
    first = _deposit(client, made, "100.00", key)
    replay = _deposit(client, made, "100.00", key)
    assert replay.status_code == 201 and replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    after = store.portfolio(made["id"])
    assert after is not None and after["portfolio"]["$EUR"] == Decimal("1100.00")
    assert after["version"] == made["version"] + 1
    assert len(_deposits(store, made["id"])) == 1


def test_same_key_with_another_body_is_409_and_changes_nothing(client: httpx.Client, store: SandboxState) -> None:
    """A key reused with another amount, or for another portfolio, is 409 naming the key, and books nothing more."""
    made, other = _portfolio(store), _portfolio(store)
    key = _key()
    assert _deposit(client, made, "100.00", key).status_code == 201
    booked = store.portfolio(made["id"])
    reused = _deposit(client, made, "100.01", key)
    assert reused.status_code == 409
    assert reused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert refusal_kind(409, reused.text) == KEY_REUSED
    assert _deposit(client, other, "100.00", key).status_code == 409
    assert store.portfolio(made["id"]) == booked
    assert booked is not None and booked["portfolio"]["$EUR"] == Decimal("1100.00")
    assert store.portfolio(other["id"]) == other
    assert len(_deposits(store, made["id"])) == 1 and _deposits(store, other["id"]) == []


@pytest.mark.parametrize(
    ("fields", "status", "says"),
    [
        ({"archived": True}, 409, "archived"),
        ({"deleted": True}, 409, "deleted"),
        ({"money_type": "PAPER_MONEY"}, 409, "PAPER_MONEY"),
        ({"status": "INACTIVE"}, 409, "status INACTIVE"),
        ({"status": "WAITING_FOR_ACCOUNT"}, 409, "status WAITING_FOR_ACCOUNT"),
        ({"currency": "USD"}, 422, "not the base currency"),
    ],
    ids=["archived", "deleted", "paper", "inactive", "waiting-for-account", "currency"],
)
def test_ineligible_portfolio_refuses_the_deposit_and_keeps_the_key_free(
    client: httpx.Client, store: SandboxState, fields: dict[str, Any], status: int, says: str
) -> None:
    """Archived, deleted, paper, other statuses are 409 and another currency 422, naming why; nothing is booked."""
    made = _portfolio(store, **fields)
    key = _key()
    refused = _deposit(client, made, "100.00", key, currency="EUR")
    assert refused.status_code == status
    assert says in str(refused.json()["detail"])
    if status == 409:
        assert refused.json()["title"] == "Business logic error"
    assert store.portfolio(made["id"]) == made
    assert _deposits(store, made["id"]) == []
    assert key not in [e["idempotency_key"] for e in store.events()]
    if status == 409:  # names the portfolio, never the key: a refusal is told apart from a reused key
        assert refused.json()["detail"][0]["loc"] == ["body", "data", "portfolio"]
        assert refusal_kind(409, refused.text) == REFUSED


def test_unknown_portfolio_and_malformed_deposits_are_refused(client: httpx.Client, store: SandboxState) -> None:
    """An unknown portfolio is 422; a numeric amount, more decimals than the currency or '$EUR' are 400."""
    made = _portfolio(store)
    unknown = {**made, "id": "P00000000000000000000000000"}
    assert _deposit(client, unknown, "100.00", _key()).status_code == 422
    assert _deposit(client, made, "10.005", _key()).status_code == 400
    assert _deposit(client, made, "100", _key(), currency="$EUR").status_code == 400
    body = {"data": {"amount": 100, "currency": "EUR", "portfolio": made["id"]}}
    assert client.post("/events/deposit/", json=body, headers={"Idempotency-Key": _key()}).status_code == 400
    assert store.portfolio(made["id"]) == made


def test_funded_since_is_set_by_the_first_deposit_and_never_changed(client: httpx.Client, store: SandboxState) -> None:
    """A WAITING_FOR_FUNDS portfolio gets funded_since at its first deposit; a second deposit keeps it."""
    made = _portfolio(store, status="WAITING_FOR_FUNDS", cash=Decimal("0.00"), funded_since=None)
    assert _deposit(client, made, "1000.00", _key()).status_code == 201
    first = store.portfolio(made["id"])
    assert first is not None and first["funded_since"] is not None
    assert _deposit(client, made, "0.50", _key()).status_code == 201
    second = store.portfolio(made["id"])
    assert second is not None and second["funded_since"] == first["funded_since"]
    assert second["portfolio"]["$EUR"] == Decimal("1000.50")
    assert second["status"] == "WAITING_FOR_FUNDS"


@pytest.mark.parametrize(
    ("currency", "cash", "amount", "expected"),
    [
        ("JPY", Decimal(500000), "50000", Decimal(550000)),
        ("KWD", Decimal("1000.000"), "125.125", Decimal("1125.125")),
        ("EUR", "2250.00", "0.01", Decimal("2250.01")),
        ("EUR", Decimal("1.0E+3"), "10", Decimal("1010")),
    ],
    ids=["jpy", "kwd", "cash-as-string", "cash-in-exponent-form"],
)
def test_cash_is_raised_exactly_in_the_currency(
    client: httpx.Client, store: SandboxState, currency: str, cash: Any, amount: str, expected: Decimal
) -> None:
    """The $CCY holding is raised by the exact amount whatever form it was stored in (number, string, exponent)."""
    made = _portfolio(store, currency=currency, cash=Decimal(0))
    made["portfolio"][f"${currency}"] = cash
    made = _portfolio_replaced(store, made)
    assert _deposit(client, made, amount, _key()).status_code == 201
    after = store.portfolio(made["id"])
    assert after is not None and after["portfolio"][f"${currency}"] == expected


def test_missing_cash_key_starts_at_zero(client: httpx.Client, store: SandboxState) -> None:
    """Holdings without the $EUR key get it, holding exactly the deposit; other positions are kept."""
    made = _portfolio(store, positions={"IE00B4L5Y983": Decimal("12.5")})
    del made["portfolio"]["$EUR"]
    made = _portfolio_replaced(store, made)
    assert _deposit(client, made, "42.00", _key()).status_code == 201
    after = store.portfolio(made["id"])
    assert after is not None and after["portfolio"] == {"IE00B4L5Y983": Decimal("12.5"), "$EUR": Decimal("42.00")}


def _portfolio_replaced(store: SandboxState, document: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(store.dsn) as conn:
        conn.execute("UPDATE sandbox.portfolios SET doc = %s::json WHERE id = %s", [dumps(document), document["id"]])
    stored = store.portfolio(document["id"])
    assert stored is not None
    return stored


def test_lost_response_applies_the_deposit_once(
    client: httpx.Client, module_sandbox: RunningSandbox, store: SandboxState
) -> None:
    """A deposit whose response is lost (504) was applied; resending it with the same key replays, once."""
    made = _portfolio(store)
    key = _key()
    module_sandbox.admin.set_faults(lose_response_rate=1.0, path_prefixes=["/events/"])
    assert _deposit(client, made, "250.00", key).status_code == 504
    module_sandbox.admin.set_faults()
    after = store.portfolio(made["id"])
    assert after is not None and after["portfolio"]["$EUR"] == Decimal("1250.00")
    resent = _deposit(client, made, "250.00", key)
    assert resent.status_code == 201 and resent.headers["Idempotent-Replayed"] == "true"
    assert store.portfolio(made["id"]) == after
    assert len(_deposits(store, made["id"])) == 1


def test_injected_5xx_applies_nothing_and_a_retry_applies_once(
    client: httpx.Client, module_sandbox: RunningSandbox, store: SandboxState
) -> None:
    """A 5xx answered before the deposit books nothing; the retry with the same key books it once."""
    made = _portfolio(store)
    key = _key()
    module_sandbox.admin.set_faults(error_rate=1.0, path_prefixes=["/events/"])
    assert _deposit(client, made, "250.00", key).status_code in (500, 503)
    module_sandbox.admin.set_faults()
    assert store.portfolio(made["id"]) == made and _deposits(store, made["id"]) == []
    assert _deposit(client, made, "250.00", key).status_code == 201
    assert _deposit(client, made, "250.00", key).status_code == 201
    after = store.portfolio(made["id"])
    assert after is not None and after["portfolio"]["$EUR"] == Decimal("1250.00")
    assert len(_deposits(store, made["id"])) == 1


def test_concurrent_deposits_with_one_key_book_once(client: httpx.Client, store: SandboxState) -> None:
    """Eight concurrent sends of one deposit all answer 201 with one body; the cash rises once."""
    made = _portfolio(store)
    key = _key()
    headers = dict(client.headers)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: _send(client.base_url, headers, made, key), range(8)))
    assert [status for status, _ in answers] == [201] * 8
    assert len({body for _, body in answers}) == 1
    after = store.portfolio(made["id"])
    assert after is not None and after["portfolio"]["$EUR"] == Decimal("1010.00")
    assert len(_deposits(store, made["id"])) == 1


def _send(base_url: httpx.URL, headers: dict[str, str], made: dict[str, Any], key: str) -> tuple[int, str]:
    with httpx.Client(base_url=base_url, headers=headers, timeout=10.0) as http:
        answer = _deposit(http, made, "10.00", key)
    return answer.status_code, answer.text


def test_withdraw_event_books_nothing(client: httpx.Client, store: SandboxState) -> None:
    """A withdraw event is only recorded: InvestSuite's holdings, transactions and version stay as they were."""
    made = _portfolio(store)
    body = {"data": {"amount": "100.00", "currency": "EUR", "portfolio": made["id"]}}
    assert client.post("/events/withdraw/", json=body, headers={"Idempotency-Key": _key()}).status_code == 201
    assert store.portfolio(made["id"]) == made
    assert store.transactions(made["id"]) == []
