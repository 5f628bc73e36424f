"""The InvestSuite client against the real sandbox server over HTTP (PostgreSQL-backed, faults injected)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from batch.adapters.investsuite import InvestSuiteClient, MalformedPortfolio, RemotePortfolio
from batch.adapters.postgres import Dsns
from batch.errors import RemotePermanentError, RemoteTransientError
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.scenario import NOT_PENDING_CASES
from batch.sandbox.seed import seed_scenario
from batch.sandbox.server import SandboxAdmin, SandboxProcess
from batch.settings import InvestSuiteSettings
from tests.fixtures.sandbox import RunningSandbox

SEEDED = 250


def client_for(sandbox: Seeded, **overrides: Any) -> InvestSuiteClient:
    """A real client (real httpx transport, real sleeps) pointed at the sandbox."""
    values: dict[str, Any] = {
        "base_url": sandbox.base_url,
        "access_key_id": DEFAULT_ACCESS_KEY_ID,
        "secret_access_key": SecretStr(DEFAULT_SECRET_ACCESS_KEY),
        "connect_timeout_seconds": 5.0,
        "read_timeout_seconds": 10.0,
        "max_attempts": 8,
        "max_retry_seconds": 30.0,
    }
    values.update(overrides)
    return InvestSuiteClient(InvestSuiteSettings(**values))


@dataclass(frozen=True)
class Seeded:
    """A running sandbox holding a seeded scenario, and how many of its portfolios are pending."""

    sandbox: RunningSandbox
    expected_pending: int

    @property
    def base_url(self) -> str:
        return self.sandbox.base_url

    @property
    def admin(self) -> SandboxAdmin:
        return self.sandbox.admin


@pytest.fixture
def seeded(sandbox: RunningSandbox, dsns: Dsns) -> Seeded:
    """The sandbox with a seeded scenario of SEEDED portfolios."""
    manifest = seed_scenario(dsns.sandbox, dsns.ledger, size=SEEDED)
    not_pending = sum(manifest["cases"].get(case, 0) for case in NOT_PENDING_CASES)
    return Seeded(sandbox, SEEDED - not_pending)


def pending_ids(client: InvestSuiteClient, page_size: int) -> tuple[list[str], int]:
    """Every portfolio id on every pending page (valid and malformed) and the number of pages."""
    ids: list[str] = []
    pages = 0
    for page in client.iter_pending_pages(page_size=page_size):
        pages += 1
        assert len(page.items) <= page_size
        for item in page.items:
            if isinstance(item, RemotePortfolio):
                ids.append(item.id)
            else:
                assert isinstance(item, MalformedPortfolio)
                ids.append(item.portfolio_id or f"<malformed {pages}>")
    return ids, pages


def first_portfolio(client: InvestSuiteClient) -> RemotePortfolio:
    for page in client.iter_pending_pages(page_size=10):
        for item in page.items:
            if isinstance(item, RemotePortfolio):
                return item
    raise AssertionError("the seeded scenario has no valid pending portfolio")


def test_pagination_covers_every_pending_portfolio_with_page_sizes_100_and_7(seeded: Seeded) -> None:
    """Following `next` lists the same complete set of pending portfolios with page size 100 and 7 (≥3 pages)."""
    with client_for(seeded) as client:
        big, big_pages = pending_ids(client, 100)
        small, small_pages = pending_ids(client, 7)
    assert len(big) == seeded.expected_pending
    assert len(set(big)) == len(big)
    assert sorted(big) == sorted(small)
    assert big_pages == math.ceil(len(big) / 100) >= 3
    assert small_pages == math.ceil(len(small) / 7)
    assert client.calls["GET /portfolios/"] == big_pages + small_pages


def test_embedded_owners_carry_counter_accounts(seeded: Seeded) -> None:
    """Pages embed the owners, and get_user returns the same counter account."""
    with client_for(seeded) as client:
        page = next(iter(client.iter_pending_pages(page_size=20)))
        owners = {item.owned_by_user_id for item in page.items if isinstance(item, RemotePortfolio)}
        assert owners & set(page.users)
        user_id = next(iter(owners & set(page.users)))
        assert user_id is not None
        assert client.get_user(user_id).counter_account == page.users[user_id].counter_account


def test_token_expiry_midway_relogs_in_and_completes(seeded: Seeded) -> None:
    """Tokens expired by the server mid-listing cause one re-login and the listing completes unchanged."""
    with client_for(seeded) as client:
        reference = [
            item.id
            for page in client.iter_pending_pages(page_size=50)
            for item in page.items
            if isinstance(item, RemotePortfolio)
        ]
        assert client.calls["POST /auth/login/"] == 1
        ids: list[str] = []
        for page in client.iter_pending_pages(page_size=50):
            ids.extend(item.id for item in page.items if isinstance(item, RemotePortfolio))
            if page.page_number == 2:
                seeded.admin.expire_tokens()
        assert client.calls["POST /auth/login/"] == 2
    assert sorted(ids) == sorted(reference)


def test_5xx_faults_on_reads_are_retried_transparently(seeded: Seeded) -> None:
    """With 30% of GETs failing 500/503, the listing still returns the complete set (retries happen)."""
    with client_for(seeded) as client:
        reference, _ = pending_ids(client, 25)
    seeded.admin.set_faults(error_rate=0.3, methods=["GET"], seed=7)
    seeded.admin.reset_stats()
    # No waiting between tries (stamina's testing mode, tests/conftest.py): the server is real, the retries too.
    with client_for(seeded, max_attempts=10) as client:
        faulty, _ = pending_ids(client, 25)
    stats = seeded.admin.stats()
    assert sorted(faulty) == sorted(reference)
    assert sum(n for code, n in stats["by_status"].items() if code.startswith("5")) > 0


def test_server_rate_limit_429_is_honoured_by_all_threads(seeded: Seeded) -> None:
    """Against a 20 req/s server limit, 8 threads doing 80 GETs all succeed by honouring Retry-After."""
    with client_for(seeded) as client:
        ids = [p for p in pending_ids(client, 100)[0] if not p.startswith("<")][:80]
    seeded.admin.set_faults(rate_limit_per_second=20)
    seeded.admin.reset_stats()
    errors: list[BaseException] = []
    with client_for(seeded, max_retry_seconds=60.0, max_attempts=20) as client:

        def work(chunk: list[str]) -> None:
            try:
                for pid in chunk:
                    assert client.get_portfolio(pid).id == pid
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(ids[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert seeded.admin.stats()["by_status"].get("429", 0) > 0


def test_client_side_rate_limit_avoids_429(seeded: Seeded) -> None:
    """A client-side limit below the server's keeps the server from answering 429 at all."""
    with client_for(seeded) as client:
        portfolio = first_portfolio(client)
    seeded.admin.set_faults(rate_limit_per_second=20)
    seeded.admin.reset_stats()
    with client_for(seeded, rate_limit_per_second=10.0) as client:
        threads = [
            threading.Thread(target=lambda: [client.get_portfolio(portfolio.id) for _ in range(4)]) for _ in range(5)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.calls["GET /portfolios/{id}"] == 20
    assert seeded.admin.stats()["by_status"].get("429", 0) == 0


def test_latency_within_read_timeout_succeeds_and_beyond_it_is_transient(seeded: Seeded) -> None:
    """300 ms latency is fine with a 5 s read timeout; with a 0.1 s read timeout it is a RemoteTransientError."""
    with client_for(seeded) as client:
        portfolio = first_portfolio(client)
        seeded.admin.set_faults(latency_ms=300)
        assert client.get_portfolio(portfolio.id).id == portfolio.id
    with (
        client_for(seeded, read_timeout_seconds=0.1, max_attempts=2, max_retry_seconds=5.0) as client,
        pytest.raises(RemoteTransientError),
    ):
        client.get_portfolio(portfolio.id)


def test_lost_response_on_transaction_post_is_found_by_read_back(seeded: Seeded) -> None:
    """A transaction whose response is lost is not re-sent, and a read-back by external_id finds it once."""
    with client_for(seeded) as client:
        portfolio = first_portfolio(client)
        body = {
            "external_id": "LEDGER-REF-LOST-1",
            "movements": [
                {
                    "type": "CASH_WITHDRAWAL",
                    "status": "SETTLED",
                    "datetime": "2025-01-02T00:00:00+00:00",
                    "instrument_id": f"${portfolio.base_currency}",
                    "quantity": Decimal("-12.34"),
                }
            ],
        }
        seeded.admin.set_faults(lose_response_rate=1.0, methods=["POST"])
        with pytest.raises(RemoteTransientError):
            client.create_transaction(portfolio.id, body)
        assert client.calls["POST /portfolios/{id}/transactions/"] == 1
        seeded.admin.set_faults()
        found = client.find_transactions(portfolio.id, "LEDGER-REF-LOST-1")
        assert len(found) == 1
        assert found[0].external_id == "LEDGER-REF-LOST-1"
        assert found[0].movements[0]["quantity"] == Decimal("-12.34")


def test_lost_response_on_patch_is_visible_by_read_back(seeded: Seeded) -> None:
    """A PATCH whose response is lost raises transient (not resent) and its effect is visible on a fresh GET."""
    with client_for(seeded) as client:
        portfolio = first_portfolio(client)
        config = dict(portfolio.config)
        config["manager_settings"] = {**config.get("manager_settings", {}), "divest_amount": Decimal(0)}
        seeded.admin.set_faults(lose_response_rate=1.0, methods=["PATCH"])
        with pytest.raises(RemoteTransientError):
            client.patch_portfolio(portfolio.id, {"config": config})
        assert client.calls["PATCH /portfolios/{id}/"] == 1
        seeded.admin.set_faults()
        fresh = client.get_portfolio(portfolio.id)
    assert fresh.to_view(None).divest_raw == Decimal(0)
    assert fresh.config["manager_settings"] == config["manager_settings"]


def test_patch_holdings_round_trips_exact_decimals(seeded: Seeded) -> None:
    """Holdings patched with Decimals come back with exactly the same digits."""
    with client_for(seeded) as client:
        portfolio = first_portfolio(client)
        holdings = dict(portfolio.portfolio)
        holdings[f"${portfolio.base_currency}"] = Decimal("1234.56")
        patched = client.patch_portfolio(portfolio.id, {"portfolio": holdings})
    assert patched.portfolio[f"${portfolio.base_currency}"] == Decimal("1234.56")
    assert patched.to_view(None).cash == Decimal("1234.56")


def test_withdraw_event_replay_is_idempotent_and_key_reuse_conflicts(seeded: Seeded) -> None:
    """Replaying the withdraw event with its key succeeds again; the same key with another amount is a 409."""
    with client_for(seeded) as client:
        portfolio = first_portfolio(client)
        first = client.post_withdraw_event(
            idempotency_key="PAYOUT-IT-1", amount=Decimal("10.50"), currency="EUR", portfolio_id=portfolio.id
        )
        again = client.post_withdraw_event(
            idempotency_key="PAYOUT-IT-1", amount=Decimal("10.50"), currency="EUR", portfolio_id=portfolio.id
        )
        assert first.status_code == again.status_code == 201
        assert first.body == again.body
        with pytest.raises(RemotePermanentError) as info:
            client.post_withdraw_event(
                idempotency_key="PAYOUT-IT-1", amount=Decimal("99.00"), currency="EUR", portfolio_id=portfolio.id
            )
    assert info.value.status == 409


def test_short_lived_tokens_are_refreshed_not_relogged(dsns: Dsns) -> None:
    """With a 2 s token lifetime, a slow listing refreshes (rotating refresh tokens) and never re-logs in."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=60)
    with SandboxProcess(dsns.sandbox, token_ttl_seconds=2) as process:
        settings = InvestSuiteSettings(
            base_url=process.base_url,
            access_key_id=DEFAULT_ACCESS_KEY_ID,
            secret_access_key=SecretStr(DEFAULT_SECRET_ACCESS_KEY),
        )
        with InvestSuiteClient(settings) as client:
            pages = 0
            for _ in client.iter_pending_pages(page_size=10):
                pages += 1
                time.sleep(1.0)
    assert pages >= 6
    assert client.calls["POST /auth/login/"] == 1
    assert client.calls["POST /auth/refresh-token/"] >= 2
    assert client.calls["GET /portfolios/"] == pages
