"""Unit tests of the InvestSuite client against scripted responses (httpx.MockTransport, no sleeping).

Retries are stamina's: most tests run in its testing mode (``tests/conftest.py``: no waits). Tests that
observe the waits take the ``clock`` fixture: testing mode off and tenacity's sleep (stamina's) on a fake
clock, so a wait is recorded and advances the clock the client's time bound reads, and nothing waits.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
import stamina
import tenacity
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from batch.adapters.investsuite import (
    PENDING_QUERY,
    InvestSuiteClient,
    MalformedPortfolio,
    NotProcessedError,
    RemotePortfolio,
    dumps_json,
    loads_json,
    parse_retry_after,
)
from batch.errors import (
    ConfigError,
    CredentialsError,
    NotFoundError,
    PayloadError,
    RemotePermanentError,
    RemoteTransientError,
)
from batch.settings import InvestSuiteSettings

BASE = "https://api.test"
SECRET = "s3cr3t-access-key-value"
PID = "P01HZZZZZZZZZZZZZZZZZZZZZZ"
UID = "U01HZZZZZZZZZZZZZZZZZZZZZZ"

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeClock:
    """monotonic + sleep pair: sleeping advances time and is recorded, nothing really waits."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """A fake clock that stamina's waits advance too (stamina sleeps with tenacity's ``time.sleep``)."""
    fake = FakeClock()
    monkeypatch.setattr(tenacity.nap, "time", fake)
    with stamina.set_testing(False):
        yield fake


class FakeApi:
    """Routes requests: auth endpoints answered here, everything else by the test's handler."""

    def __init__(self, handler: Handler, *, expires_in: Any = "300") -> None:
        self.handler = handler
        self.expires_in = expires_in
        self.logins = 0
        self.refreshes = 0
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        if request.url.path == "/auth/login/":
            body = json.loads(request.content)
            assert body == {"access_key_id": "AKID", "secret_access_key": SECRET}
            with self.lock:
                self.logins += 1
                n = self.logins
            return httpx.Response(200, json=self._token(f"tok-login-{n}"))
        if request.url.path == "/auth/refresh-token/":
            with self.lock:
                self.refreshes += 1
                n = self.refreshes
            return httpx.Response(200, json=self._token(f"tok-refresh-{n}"))
        return self.handler(request)

    def _token(self, access: str) -> dict[str, Any]:
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": f"refresh-{access}",
        }

    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if not r.url.path.startswith("/auth/")]


def make_settings(**overrides: Any) -> InvestSuiteSettings:
    values: dict[str, Any] = {
        "base_url": BASE,
        "access_key_id": "AKID",
        "secret_access_key": SecretStr(SECRET),
        "max_attempts": 5,
        "max_retry_seconds": 120.0,
    }
    values.update(overrides)
    return InvestSuiteSettings(**values)


def make_client(
    api: FakeApi, clock: FakeClock | None = None, *, retry_writes: bool = False, **overrides: Any
) -> InvestSuiteClient:
    clock = clock or FakeClock()
    return InvestSuiteClient(
        make_settings(**overrides),
        transport=httpx.MockTransport(api),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        retry_writes=retry_writes,
    )


def json_response(status: int, text: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=text.encode(), headers={"Content-Type": "application/json", **headers})


def portfolio_doc(pid: str = PID, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": pid,
        "external_id": f"ext-{pid}",
        "name": "My portfolio",
        "owned_by_user_id": UID,
        "base_currency": "EUR",
        "money_type": "REAL_MONEY",
        "status": "ACTIVE",
        "archived": False,
        "deleted": False,
        "config": {"manager": "ROBO_ADVISOR_DISCRETIONARY", "manager_settings": {"divest_amount": "500"}},
        "portfolio": {"$EUR": 1000, "BE0000000001": 3},
        "version": 4,
    }
    doc.update(overrides)
    return doc


def user_doc(uid: str = UID) -> dict[str, Any]:
    return {
        "id": uid,
        "counter_account": {
            "bank_account_number": "BE71096123456769",
            "bank_account_number_type": "IBAN",
            "bank_id": "GKCCBEBB",
            "bank_id_type": "BIC",
        },
    }


def page_text(results: list[Any], next_url: str | None, *, count: Any = "2", offset: Any = "0") -> str:
    return json.dumps(
        {
            "next": next_url,
            "count": count,
            "offset": offset,
            "results": results,
            "_embedded": {UID: user_doc()},
        }
    )


# --------------------------------------------------------------------------- JSON and Decimal


def test_numbers_and_numeric_strings_become_decimal_never_float() -> None:
    """JSON numbers (1e100, 0.1, 12000.50) parse to exact Decimals; numeric strings stay raw and parse in to_view."""
    text = json.dumps(portfolio_doc())
    text = text.replace('"500"', "1e100").replace('"$EUR": 1000', '"$EUR": 12000.50, "X": 0.1')
    text = text.replace('"BE0000000001": 3', '"BE0000000001": "3.5"')
    api = FakeApi(lambda r: json_response(200, text))
    with make_client(api) as client:
        portfolio = client.get_portfolio(PID)
    assert portfolio.config["manager_settings"]["divest_amount"] == Decimal("1E+100")
    assert isinstance(portfolio.portfolio["$EUR"], Decimal)
    assert portfolio.portfolio["X"] == Decimal("0.1")
    assert portfolio.portfolio["BE0000000001"] == "3.5"
    view = portfolio.to_view("BE71096123456769")
    assert view.divest_raw == Decimal("1E+100")
    assert view.holdings == {"$EUR": Decimal("12000.50"), "X": Decimal("0.1"), "BE0000000001": Decimal("3.5")}
    assert view.cash == Decimal("12000.50")
    assert view.holdings_error is None
    assert view.counter_account == "BE71096123456769"


def test_loads_json_refuses_nan_and_infinity() -> None:
    """Non-standard NaN/Infinity JSON constants are not silently accepted as numbers."""
    with pytest.raises(ValueError):
        loads_json('{"a": NaN}')


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("500", Decimal("500")), (Decimal("12.34"), Decimal("12.34")), (7, Decimal(7)), ("abc", "abc"), (None, None)],
)
def test_to_view_keeps_parsed_divest_or_raw_text(raw: Any, expected: Decimal | str | None) -> None:
    """to_view returns the divest amount as Decimal when it parses, else the raw text, None when null."""
    doc = portfolio_doc()
    doc["config"]["manager_settings"]["divest_amount"] = raw
    assert RemotePortfolio.model_validate(doc).to_view(None).divest_raw == expected


def test_to_view_without_manager_settings_has_no_divest() -> None:
    """A portfolio whose config lacks manager_settings has no divest amount (None), not an error."""
    view = RemotePortfolio.model_validate(portfolio_doc(config={"manager": "X"})).to_view(None)
    assert view.divest_raw is None


@pytest.mark.parametrize("bad", ["abc", "NaN", None, True])
def test_to_view_flags_unparseable_holdings(bad: Any) -> None:
    """A holding quantity that is not a finite number sets holdings_error naming the instrument."""
    view = RemotePortfolio.model_validate(portfolio_doc(portfolio={"$EUR": 10, "BE1": bad})).to_view(None)
    assert view.holdings_error is not None
    assert "BE1" in view.holdings_error
    assert view.holdings["$EUR"] == Decimal(10)


def test_extra_fields_are_preserved() -> None:
    """Unknown portfolio fields survive validation (the PATCH sends nested objects back whole)."""
    portfolio = RemotePortfolio.model_validate(portfolio_doc(funded_since="2024-01-01T00:00:00+00:00"))
    assert portfolio.model_dump()["funded_since"] == "2024-01-01T00:00:00+00:00"


def test_dumps_json_writes_decimals_as_plain_numbers_and_refuses_floats() -> None:
    """Decimals are sent as JSON numbers in plain notation (no float round trip); floats are refused."""
    text = dumps_json({"q": Decimal("-500.10"), "big": Decimal("1E+3"), "tiny": Decimal("5E-7"), "n": [1, None]})
    assert text == '{"q":-500.10,"big":1000,"tiny":0.0000005,"n":[1,null]}'
    assert loads_json(text)["q"] == Decimal("-500.10")
    with pytest.raises(TypeError):
        dumps_json({"q": 0.1})
    with pytest.raises(ValueError):
        dumps_json(Decimal("NaN"))


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimal_json_round_trip_is_exact(value: Decimal) -> None:
    """Any finite Decimal sent by the client parses back to the same value (no float on the way)."""
    assert loads_json(dumps_json({"q": value}))["q"] == value


# --------------------------------------------------------------------------- pagination


def test_pages_follow_next_relative_then_absolute_with_string_or_number_counts() -> None:
    """`next` is followed exactly (relative, then absolute); count/offset may be strings or numbers."""
    p1, p2, p3 = (portfolio_doc(f"P0{i}") for i in range(3))

    def handler(request: httpx.Request) -> httpx.Response:
        offset = request.url.params.get("offset")
        if offset is None:
            return json_response(200, page_text([p1], "/portfolios/?limit=1&offset=P01&x=1", count="3"))
        if offset == "P01":
            return json_response(200, page_text([p2], f"{BASE}/portfolios/?limit=1&offset=2", count=3, offset=1))
        return json_response(200, page_text([p3], None, count=3, offset="2"))

    api = FakeApi(handler)
    with make_client(api) as client:
        pages = list(client.iter_pending_pages(page_size=1))
    assert [p.page_number for p in pages] == [1, 2, 3]
    assert [item.id for p in pages for item in p.items if isinstance(item, RemotePortfolio)] == ["P00", "P01", "P02"]
    assert pages[0].next_url == "/portfolios/?limit=1&offset=P01&x=1"
    assert pages[2].next_url is None
    assert (pages[0].count, pages[1].count, pages[1].offset) == ("3", "3", "1")
    assert pages[0].users[UID].counter_account is not None
    first, second, third = api.api_requests()
    assert first.url.params["query"] == PENDING_QUERY
    assert first.url.params["limit"] == "1"
    assert first.url.params["embed"] == "owned_by_user_id"
    assert str(second.url) == f"{BASE}/portfolios/?limit=1&offset=P01&x=1"
    assert str(third.url) == f"{BASE}/portfolios/?limit=1&offset=2"
    assert all(r.headers["Authorization"] == "Bearer tok-login-1" for r in api.api_requests())
    assert client.calls["GET /portfolios/"] == 3
    assert client.calls["POST /auth/login/"] == 1


def test_embed_owner_false_omits_embed_and_default_page_size_from_settings() -> None:
    """Without embed_owner the listing asks for no embedding, and the page size comes from settings."""
    api = FakeApi(lambda r: json_response(200, json.dumps({"next": None, "results": []})))
    with make_client(api, page_size=42) as client:
        pages = list(client.iter_pending_pages(embed_owner=False))
    assert len(pages) == 1
    assert pages[0].users == {}
    request = api.api_requests()[0]
    assert "embed" not in request.url.params
    assert request.url.params["limit"] == "42"


def test_malformed_result_becomes_malformed_portfolio_not_dropped() -> None:
    """A result that does not validate (missing base_currency, not an object) is kept as MalformedPortfolio."""
    bad = portfolio_doc("PBAD")
    del bad["base_currency"]
    api = FakeApi(lambda r: json_response(200, page_text([portfolio_doc(), bad, "junk"], None)))
    with capture_logs() as logs, make_client(api) as client:
        (page,) = list(client.iter_pending_pages())
    good, malformed, junk = page.items
    assert isinstance(good, RemotePortfolio)
    assert isinstance(malformed, MalformedPortfolio)
    assert malformed.portfolio_id == "PBAD"
    assert "base_currency" in malformed.error
    assert malformed.raw == bad
    assert isinstance(junk, MalformedPortfolio)
    assert junk.portfolio_id is None
    assert [e["portfolio_id"] for e in logs if e["event"] == "investsuite.malformed_portfolio"] == ["PBAD", None]


@pytest.mark.parametrize(
    "body",
    [
        "<html><body>502 Bad Gateway</body></html>",
        '{"next": null, "count": 0}',
        '{"next": null, "results": {}}',
        '{"next": 5, "results": []}',
        "[]",
    ],
)
def test_malformed_envelope_raises_payload_error(body: str) -> None:
    """An HTML page or an envelope without a 'results' list is a PayloadError, not an empty page."""
    api = FakeApi(lambda r: httpx.Response(200, content=body.encode(), headers={"Content-Type": "text/html"}))
    with make_client(api) as client, pytest.raises(PayloadError):
        list(client.iter_pending_pages())


def test_next_to_another_origin_is_refused() -> None:
    """A `next` URL on another host is refused so the bearer token never leaves the configured origin."""
    api = FakeApi(lambda r: json_response(200, page_text([], "https://evil.example/portfolios/?offset=1")))
    with make_client(api) as client, pytest.raises(PayloadError, match="another origin"):
        list(client.iter_pending_pages())


def test_repeated_next_is_a_pagination_loop() -> None:
    """A server that keeps returning the same `next` stops the listing with PayloadError instead of looping."""
    api = FakeApi(lambda r: json_response(200, page_text([], "/portfolios/?offset=1")))
    with make_client(api) as client, pytest.raises(PayloadError, match="loop"):
        list(client.iter_pending_pages())


# --------------------------------------------------------------------------- auth


def test_401_relogins_once_then_succeeds() -> None:
    """A 401 (expired token) triggers one fresh login and one resend of the request."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer tok-login-1":
            return json_response(401, '{"title": "Unauthorized", "description": "JWT invalid"}')
        return json_response(200, json.dumps(user_doc()))

    api = FakeApi(handler)
    with capture_logs() as logs, make_client(api) as client:
        user = client.get_user(UID)
    assert user.counter_account is not None
    assert user.counter_account.bank_account_number == "BE71096123456769"
    assert seen == ["Bearer tok-login-1", "Bearer tok-login-2"]
    assert api.logins == 2
    assert client.calls == {"POST /auth/login/": 2, "GET /users/{id}": 2}
    assert {"event": "investsuite.relogin", "method": "GET", "route": "GET /users/{id}", "log_level": "info"} in logs


def test_second_401_is_permanent() -> None:
    """A 401 right after a fresh login is a RemotePermanentError (no login loop)."""
    api = FakeApi(lambda r: json_response(401, '{"title": "Unauthorized"}'))
    with make_client(api) as client, pytest.raises(RemotePermanentError) as info:
        client.get_portfolio(PID)
    assert info.value.status == 401
    assert api.logins == 2
    assert client.calls["GET /portfolios/{id}"] == 2


@pytest.mark.parametrize("status", [401, 403])
def test_login_refused_is_a_credentials_error_and_not_retried(status: int) -> None:
    """Credentials refused at login (401 or 403) raise CredentialsError (exit 2) after a single login attempt."""

    def transport(request: httpx.Request) -> httpx.Response:
        return json_response(status, '{"title": "Unauthorized"}')

    client = InvestSuiteClient(make_settings(), transport=httpx.MockTransport(transport), sleep=FakeClock().sleep)
    with client, pytest.raises(CredentialsError) as refused:
        client.get_portfolio(PID)
    assert str(refused.value) == (
        f"InvestSuite at {BASE} refused the login (HTTP {status} on POST /auth/login/): "
        "check investsuite.access_key_id and investsuite.secret_access_key"
    )
    assert isinstance(refused.value, ConfigError)
    assert SECRET not in str(refused.value)
    assert client.calls == {"POST /auth/login/": 1}


@pytest.mark.parametrize(
    ("configured", "missing"),
    [
        (
            {"access_key_id": None, "secret_access_key": None},
            "investsuite.access_key_id (BATCH_INVESTSUITE__ACCESS_KEY_ID), "
            "investsuite.secret_access_key (BATCH_INVESTSUITE__SECRET_ACCESS_KEY) are not set",
        ),
        (
            {"secret_access_key": None},
            "investsuite.secret_access_key (BATCH_INVESTSUITE__SECRET_ACCESS_KEY) is not set",
        ),
    ],
    ids=["none", "no-secret"],
)
def test_401_without_credentials_is_a_credentials_error_naming_what_is_missing(
    configured: dict[str, Any], missing: str
) -> None:
    """A 401 while no (complete) credentials are configured raises CredentialsError naming the unset settings."""
    api = FakeApi(lambda r: json_response(401, '{"title": "Unauthorized"}'))
    with make_client(api, **configured) as client, pytest.raises(CredentialsError) as caught:
        client.get_portfolio(PID)
    assert str(caught.value) == f"InvestSuite at {BASE} answered HTTP 401 and no credentials are configured: {missing}"
    assert api.logins == 0


def test_authenticate_logs_in_before_any_call() -> None:
    """authenticate() logs in once (and refuses early); without credentials it sends nothing."""
    api = FakeApi(lambda r: json_response(200, json.dumps(user_doc())))
    with make_client(api) as client:
        client.authenticate()
        client.authenticate()
        client.get_user(UID)
    assert api.logins == 1
    anonymous = FakeApi(lambda r: json_response(200, "{}"))
    with make_client(anonymous, access_key_id=None, secret_access_key=None) as client:
        client.authenticate()
    assert anonymous.requests == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("transport", ["thread-local", "httpx"])
def test_unreachable_server_names_the_base_url_and_the_cause(transport: str) -> None:
    """Nothing listening: NotProcessedError "InvestSuite at <base url> unreachable: connection refused (<route>)"."""
    port = _closed_port()
    settings = make_settings(base_url=f"http://user:pw-in-url@127.0.0.1:{port}/api/", max_attempts=1)
    own = httpx.HTTPTransport() if transport == "httpx" else None
    client = InvestSuiteClient(settings, transport=own, sleep=FakeClock().sleep)
    with client, pytest.raises(NotProcessedError) as caught:
        client.get_portfolio(PID)
    assert str(caught.value) == (
        f"InvestSuite at http://127.0.0.1:{port}/api unreachable: connection refused (POST /auth/login/)"
    )
    assert "pw-in-url" not in str(caught.value)


def test_token_refreshed_after_80_percent_of_its_life() -> None:
    """The access token is refreshed (not re-logged-in) once 80% of expires_in ("300" as a string) has passed."""
    clock = FakeClock()
    api = FakeApi(lambda r: json_response(200, json.dumps(user_doc())), expires_in="300")
    with make_client(api, clock) as client:
        client.get_user(UID)
        clock.now += 239
        client.get_user(UID)
        clock.now += 2  # 241 s > 0.8 * 300
        client.get_user(UID)
        client.get_user(UID)
    auths = [r.headers["Authorization"] for r in api.api_requests()]
    assert auths == ["Bearer tok-login-1", "Bearer tok-login-1", "Bearer tok-refresh-1", "Bearer tok-refresh-1"]
    refresh_request = next(r for r in api.requests if r.url.path == "/auth/refresh-token/")
    assert json.loads(refresh_request.content) == {"refresh_token": "refresh-tok-login-1"}
    assert (api.logins, api.refreshes) == (1, 1)


def test_numeric_expires_in_is_accepted_and_bad_expires_in_is_payload_error() -> None:
    """expires_in may be a number too; a missing or non-numeric one is a PayloadError."""
    api = FakeApi(lambda r: json_response(200, json.dumps(user_doc())), expires_in=300)
    with make_client(api) as client:
        client.get_user(UID)
    api = FakeApi(lambda r: json_response(200, json.dumps(user_doc())), expires_in="soon")
    with make_client(api) as client, pytest.raises(PayloadError, match="expires_in"):
        client.get_user(UID)


def test_concurrent_first_calls_log_in_once() -> None:
    """Many threads starting at once share one login (the auth lock), and every request is counted."""
    api = FakeApi(lambda r: json_response(200, json.dumps(portfolio_doc())))
    with make_client(api) as client:
        threads = [threading.Thread(target=client.get_portfolio, args=(PID,)) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert api.logins == 1
    assert client.calls == {"POST /auth/login/": 1, "GET /portfolios/{id}": 24}


def test_concurrent_401s_relogin_once() -> None:
    """When many threads hit 401 with the same stale token, only one of them logs in again."""
    barrier = threading.Barrier(8)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer tok-login-1":
            barrier.wait(timeout=5)
            return json_response(401, "{}")
        return json_response(200, json.dumps(portfolio_doc()))

    api = FakeApi(handler)
    with make_client(api) as client:
        client._current_token()  # log in before the threads start
        threads = [threading.Thread(target=client.get_portfolio, args=(PID,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert api.logins == 2
    assert client.calls["GET /portfolios/{id}"] == 16


# --------------------------------------------------------------------------- retries


def test_429_retry_after_is_honoured(clock: FakeClock) -> None:
    """A 429 with Retry-After: 7 is retried after waiting at least 7 seconds."""
    answers = [json_response(429, "{}", **{"Retry-After": "7"}), json_response(200, json.dumps(portfolio_doc()))]
    api = FakeApi(lambda r: answers.pop(0))
    with make_client(api, clock) as client:
        assert client.get_portfolio(PID).id == PID
    assert sum(clock.sleeps) >= 7
    assert max(clock.sleeps) >= 7
    assert clock.sleeps == [7]  # stamina's wait; the shared pause has passed when the retry goes out
    assert client.calls["GET /portfolios/{id}"] == 2


def test_503_retry_after_is_stamina_s_wait(clock: FakeClock) -> None:
    """A 503 with Retry-After: 3 makes stamina wait exactly 3 s (not its backoff) before the retry."""
    answers = [json_response(503, "busy", **{"Retry-After": "3"}), json_response(200, json.dumps(user_doc()))]
    api = FakeApi(lambda r: answers.pop(0))
    scheduled: list[stamina.instrumentation.RetryDetails] = []

    def on_retry(details: stamina.instrumentation.RetryDetails) -> None:
        scheduled.append(details)

    stamina.instrumentation.set_on_retry_hooks([on_retry])
    try:
        with make_client(api, clock) as client:
            client.get_user(UID)
    finally:
        stamina.instrumentation.set_on_retry_hooks(None)
    assert [(d.retry_num, d.wait_for) for d in scheduled] == [(1, 3.0)]
    assert isinstance(scheduled[0].caused_by, RemoteTransientError) and scheduled[0].caused_by.status == 503
    assert clock.sleeps == [3]
    assert client.calls["GET /users/{id}"] == 2


def test_429_pauses_every_thread_until_retry_after() -> None:
    """After a 429 with Retry-After, the next request from any caller waits until that instant."""
    clock = FakeClock()
    answers = [json_response(429, "{}", **{"Retry-After": "5"}), json_response(200, json.dumps(user_doc()))]
    api = FakeApi(lambda r: answers.pop(0))
    with make_client(api, clock, max_attempts=1) as client:
        client._current_token()
        with pytest.raises(NotProcessedError) as info:
            client.get_portfolio(PID)
        assert info.value.status == 429
        assert info.value.retry_after == 5
        client.get_user(UID)  # another caller: must wait the pause out before sending
    assert clock.sleeps == [5]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("1.5", 1.5), ("-3", 0.0), ("", None), ("soon", None), (None, None), ("nan", None)],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    """Retry-After in delta seconds is parsed; junk is ignored."""
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    """Retry-After as an HTTP date gives the seconds from now until then."""

    def now() -> datetime:
        return datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)

    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0


def test_5xx_is_retried_with_backoff_then_succeeds(clock: FakeClock) -> None:
    """503, 500 then 200: the GET is retried with growing backoff and the result returned."""
    answers = [json_response(503, "busy"), json_response(500, "oops"), json_response(200, json.dumps(user_doc()))]
    api = FakeApi(lambda r: answers.pop(0))
    with capture_logs() as logs, make_client(api, clock) as client:
        client.get_user(UID)
    assert client.calls["GET /users/{id}"] == 3
    # stamina's backoff: 0.5 * 2 ** (n - 1) s plus a jitter of up to 0.5 s
    assert len(clock.sleeps) == 2
    assert 0.5 <= clock.sleeps[0] <= 1.0
    assert 1.0 <= clock.sleeps[1] <= 1.5
    retries = [e for e in logs if e["event"] == "investsuite.retry"]
    assert retries[0] == {
        "event": "investsuite.retry",
        "log_level": "debug",
        "method": "GET",
        "route": "GET /users/{id}",
        "attempt": 1,
        "delay_seconds": round(clock.sleeps[0], 3),
        "status": 503,
        "retry_after": None,
        "error": "GET /users/{id}: HTTP 503: busy",
    }
    assert (retries[1]["attempt"], retries[1]["delay_seconds"]) == (2, round(clock.sleeps[1], 3))


def test_backoff_doubles_with_jitter_up_to_a_30_s_cap(clock: FakeClock) -> None:
    """Eight 503s: the waits double from 0.5 s (each plus at most 0.5 s of jitter) until they stay at 30 s."""
    answers = [json_response(503, "busy") for _ in range(8)] + [json_response(200, json.dumps(user_doc()))]
    api = FakeApi(lambda r: answers.pop(0))
    with make_client(api, clock, max_attempts=10, max_retry_seconds=1000.0) as client:
        client.get_user(UID)
    assert client.calls["GET /users/{id}"] == 9
    for n, wait in enumerate(clock.sleeps[:6]):
        assert 0.5 * 2**n <= wait <= 0.5 * 2**n + 0.5
    assert clock.sleeps[6:] == [30.0, 30.0]


def test_retries_follow_stamina_s_switches() -> None:
    """With stamina's testing mode at one attempt, a 503 on a read is final: the retries are stamina's."""
    api = FakeApi(lambda r: json_response(503, "busy"))
    with stamina.set_testing(True, attempts=1), make_client(api) as client, pytest.raises(RemoteTransientError):
        client.get_user(UID)
    assert client.calls["GET /users/{id}"] == 1


def test_transport_errors_on_reads_are_retried() -> None:
    """Timeouts and dropped connections on a GET are transient and retried."""
    errors: list[Exception] = [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped")]

    def handler(request: httpx.Request) -> httpx.Response:
        if errors:
            raise errors.pop(0)
        return json_response(200, json.dumps(portfolio_doc()))

    api = FakeApi(handler)
    with make_client(api) as client:
        client.get_portfolio(PID)
    assert client.calls["GET /portfolios/{id}"] == 3


def test_attempts_are_bounded() -> None:
    """A server that keeps failing raises RemoteTransientError after max_attempts requests."""
    api = FakeApi(lambda r: json_response(502, "<html>bad gateway</html>"))
    with (
        capture_logs() as logs,
        make_client(api, max_attempts=3) as client,
        pytest.raises(RemoteTransientError) as info,
    ):
        client.get_portfolio(PID)
    assert info.value.status == 502
    assert client.calls["GET /portfolios/{id}"] == 3
    assert [e["attempts"] for e in logs if e["event"] == "investsuite.gave_up"] == [3]


def test_retry_time_is_bounded(clock: FakeClock) -> None:
    """Retrying stops when the next wait would exceed max_retry_seconds, even with attempts left."""
    api = FakeApi(lambda r: json_response(429, "{}", **{"Retry-After": "30"}))
    with (
        capture_logs() as logs,
        make_client(api, clock, max_attempts=50, max_retry_seconds=100) as client,
        pytest.raises(NotProcessedError),
    ):
        client.get_portfolio(PID)
    assert client.calls["GET /portfolios/{id}"] == 4
    assert sum(clock.sleeps) <= 100
    assert clock.sleeps == [30, 30, 30]
    assert [(e["attempts"], e["elapsed_seconds"]) for e in logs if e["event"] == "investsuite.gave_up"] == [(4, 90.0)]


def test_a_backoff_that_could_end_past_the_time_bound_is_not_waited(clock: FakeClock) -> None:
    """With max_retry_seconds=1.9 the first backoff (0.5-1 s) is waited, the second (could end at 2.5 s) is not."""
    api = FakeApi(lambda r: json_response(503, "busy"))
    with (
        make_client(api, clock, max_attempts=10, max_retry_seconds=1.9) as client,
        pytest.raises(RemoteTransientError),
    ):
        client.get_user(UID)
    assert client.calls["GET /users/{id}"] == 2
    assert len(clock.sleeps) == 1
    assert sum(clock.sleeps) <= 1.9


@pytest.mark.parametrize("status", [400, 403, 409, 422])
def test_4xx_is_permanent_and_not_retried(status: int) -> None:
    """400/403/409/422 raise RemotePermanentError with the status and body after a single request."""
    api = FakeApi(lambda r: json_response(status, '{"title": "Business Logic Error"}'))
    with make_client(api) as client, pytest.raises(RemotePermanentError) as info:
        client.get_portfolio(PID)
    assert info.value.status == status
    assert "Business Logic Error" in (info.value.body or "")
    assert client.calls["GET /portfolios/{id}"] == 1


def test_404_is_not_found() -> None:
    """404 raises NotFoundError (a RemotePermanentError)."""
    api = FakeApi(lambda r: json_response(404, '{"title": "Resource not found"}'))
    with make_client(api) as client, pytest.raises(NotFoundError):
        client.get_user(UID)


def test_long_error_body_is_truncated() -> None:
    """Error bodies are truncated in the exception (no megabyte HTML pages in logs)."""
    api = FakeApi(lambda r: json_response(400, "x" * 10_000))
    with make_client(api) as client, pytest.raises(RemotePermanentError) as info:
        client.get_user(UID)
    assert len(str(info.value)) < 700


# --------------------------------------------------------------------------- writes


def _writes(client: InvestSuiteClient) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("POST /portfolios/{id}/transactions/", lambda: client.create_transaction(PID, {"external_id": "X"})),
        ("PATCH /portfolios/{id}/", lambda: client.patch_portfolio(PID, {"config": {}})),
        (
            "POST /events/withdraw/",
            lambda: client.post_withdraw_event(
                idempotency_key="K", amount=Decimal("1.00"), currency="EUR", portfolio_id=PID
            ),
        ),
    ]


@pytest.mark.parametrize(
    "failure",
    [
        lambda: json_response(503, "busy"),
        lambda: json_response(500, "boom"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("response lost"),
    ],
    ids=["503", "500", "read-timeout", "lost-response"],
)
def test_writes_with_unknown_outcome_are_not_retried(failure: Any) -> None:
    """POST transaction, PATCH portfolio and POST event are sent once when the outcome is unknown."""

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(failure, Exception):
            raise failure
        response: httpx.Response = failure()
        return response

    api = FakeApi(handler)
    with make_client(api) as client:
        for route, call in _writes(client):
            with pytest.raises(RemoteTransientError) as info:
                call()
            assert not isinstance(info.value, NotProcessedError)
            assert client.calls[route] == 1


def test_write_is_retried_when_login_failed_transiently_before_sending() -> None:
    """A write whose login hit a 503 was never sent, so it is retried once the login works."""
    logins: list[int] = []

    def transport(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/login/":
            logins.append(1)
            if len(logins) == 1:
                return json_response(503, "busy")
            return json_response(200, '{"access_token": "t", "expires_in": "300", "refresh_token": "r"}')
        return json_response(201, json.dumps({"id": "T1", "external_id": "X"}))

    clock = FakeClock()
    client = InvestSuiteClient(
        make_settings(max_attempts=1),
        transport=httpx.MockTransport(transport),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    with client:
        with pytest.raises(NotProcessedError, match="not sent"):
            client.create_transaction(PID, {"external_id": "X"})
        assert client.calls["POST /portfolios/{id}/transactions/"] == 0
    client = InvestSuiteClient(
        make_settings(max_attempts=3),
        transport=httpx.MockTransport(transport),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    logins.clear()
    with client:
        assert client.create_transaction(PID, {"external_id": "X"}).id == "T1"
        assert client.calls["POST /portfolios/{id}/transactions/"] == 1


def test_writes_retried_only_when_opted_in() -> None:
    """With retry_writes=True a write that got a 503 is retried like a read."""
    answers = [json_response(503, "busy"), json_response(201, json.dumps({"id": "T1", "external_id": "X"}))]
    api = FakeApi(lambda r: answers.pop(0))
    with make_client(api, retry_writes=True) as client:
        assert client.create_transaction(PID, {"external_id": "X"}).id == "T1"
    assert client.calls["POST /portfolios/{id}/transactions/"] == 2


def test_writes_are_resent_when_the_server_provably_did_not_process_them() -> None:
    """A write refused with 429 or whose connection never opened is safe to resend, and is."""
    answers: list[Any] = [
        httpx.ConnectError("refused"),
        json_response(429, "{}", **{"Retry-After": "1"}),
        json_response(201, json.dumps({"id": "T1", "external_id": "X"})),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        response: httpx.Response = answer
        return response

    api = FakeApi(handler)
    with make_client(api) as client:
        assert client.create_transaction(PID, {"external_id": "X"}).id == "T1"
    assert client.calls["POST /portfolios/{id}/transactions/"] == 3


def test_write_bodies_are_exact_json_with_decimal_numbers() -> None:
    """Transaction quantities and holdings go out as JSON numbers; the event amount as a string, with the key header."""
    bodies: dict[str, httpx.Request] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        bodies[f"{request.method} {request.url.path}"] = request
        if request.url.path.endswith("/transactions/"):
            return json_response(201, '{"id": "T1", "external_id": "REF-1", "movements": []}')
        if request.url.path.startswith("/events/"):
            return json_response(201, '{"status": "accepted"}')
        return json_response(200, json.dumps(portfolio_doc()))

    api = FakeApi(handler)
    movement = {
        "type": "CASH_WITHDRAWAL",
        "status": "SETTLED",
        "datetime": "2025-01-01T00:00:00+00:00",
        "instrument_id": "$EUR",
        "quantity": Decimal("-500.10"),
    }
    with make_client(api) as client:
        tx = client.create_transaction(PID, {"external_id": "REF-1", "movements": [movement]})
        patched = client.patch_portfolio(PID, {"portfolio": {"$EUR": Decimal("499.90"), "BE1": Decimal(3)}})
        receipt = client.post_withdraw_event(
            idempotency_key="PAYOUT-1", amount=Decimal("500.10"), currency="$EUR", portfolio_id=PID
        )
    assert tx.id == "T1"
    assert patched.id == PID
    assert receipt.status_code == 201
    assert receipt.idempotency_key == "PAYOUT-1"
    assert receipt.body == {"status": "accepted"}
    tx_req = bodies[f"POST /portfolios/{PID}/transactions/"]
    assert b'"quantity":-500.10' in tx_req.content
    assert tx_req.headers["Content-Type"] == "application/json"
    patch_req = bodies[f"PATCH /portfolios/{PID}/"]
    assert patch_req.content == b'{"portfolio":{"$EUR":499.90,"BE1":3}}'
    event_req = bodies["POST /events/withdraw/"]
    assert event_req.content == b'{"data":{"amount":"500.10","currency":"EUR","portfolio":"' + PID.encode() + b'"}}'
    assert event_req.headers["Idempotency-Key"] == "PAYOUT-1"


def test_event_with_empty_body_gives_a_receipt() -> None:
    """An event answered 201 with an empty body still yields a receipt (the response is undocumented)."""
    api = FakeApi(lambda r: httpx.Response(201))
    with make_client(api) as client:
        receipt = client.post_withdraw_event(idempotency_key="K", amount=Decimal(1), currency="EUR", portfolio_id=PID)
    assert receipt.body is None


def test_event_key_conflict_is_permanent() -> None:
    """A 409 on the withdraw event (same key, different body) is a RemotePermanentError, sent once."""
    api = FakeApi(lambda r: json_response(409, '{"title": "Conflict"}'))
    with make_client(api) as client, pytest.raises(RemotePermanentError) as info:
        client.post_withdraw_event(idempotency_key="K", amount=Decimal(1), currency="EUR", portfolio_id=PID)
    assert info.value.status == 409
    assert client.calls["POST /events/withdraw/"] == 1


def test_find_transactions_queries_by_external_id_and_keeps_exact_matches() -> None:
    """find_transactions sends `external_id eq '<x>'` and returns only exact matches (wildcards ignored)."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["query"] == "external_id eq 'REF-1'"
        rows = [{"id": "T1", "external_id": "REF-1"}, {"id": "T2", "external_id": "REF-10"}]
        return json_response(200, json.dumps({"next": None, "count": "2", "results": rows}))

    api = FakeApi(handler)
    with make_client(api) as client:
        found = client.find_transactions(PID, "REF-1")
        assert [t.id for t in found] == ["T1"]
        with pytest.raises(ValueError):
            client.find_transactions(PID, "it's")
    assert client.calls["GET /portfolios/{id}/transactions/"] == 1


def test_find_transactions_accepts_bare_object_answer() -> None:
    """A by-external-id query answered with a bare object (as in one doc example) is handled."""
    api = FakeApi(lambda r: json_response(200, '{"id": "T9", "external_id": "REF-9"}'))
    with make_client(api) as client:
        assert [t.id for t in client.find_transactions(PID, "REF-9")] == ["T9"]


def test_ids_are_single_path_segments() -> None:
    """An id cannot change the route: it is percent-encoded as one path segment."""
    api = FakeApi(lambda r: json_response(200, json.dumps(portfolio_doc())))
    with make_client(api) as client:
        client.get_portfolio("P1/../users/U1")
    assert api.api_requests()[0].url.raw_path == b"/portfolios/P1%2F..%2Fusers%2FU1"


# --------------------------------------------------------------------------- rate limit


def test_token_bucket_spaces_requests() -> None:
    """With rate_limit_per_second=2, requests beyond the burst wait 0.5 s each (shared bucket)."""
    clock = FakeClock()
    api = FakeApi(lambda r: json_response(200, json.dumps(user_doc())))
    with make_client(api, clock, rate_limit_per_second=2.0) as client:
        for _ in range(5):  # + 1 login = 6 requests, burst of 2
            client.get_user(UID)
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5]


def test_a_process_share_of_the_rate_limit_spaces_requests_wider() -> None:
    """limit_rate(1.0) (a 2/s limit shared by two processes) spaces this process's requests 1 s apart."""
    clock = FakeClock()
    api = FakeApi(lambda r: json_response(200, json.dumps(user_doc())))
    with make_client(api, clock, rate_limit_per_second=2.0) as client:
        client._current_token()  # login (1 token)
        client.limit_rate(1.0)  # the bucket now holds at most 1 token
        for _ in range(3):
            client.get_user(UID)
    assert clock.sleeps == [1.0, 1.0]


def test_token_bucket_is_shared_by_threads() -> None:
    """Concurrent callers draw from one bucket: total waiting matches the rate, not per-thread rates."""
    clock = FakeClock()
    api = FakeApi(lambda r: json_response(200, json.dumps(user_doc())))
    with make_client(api, clock, rate_limit_per_second=10.0) as client:
        client._current_token()
        threads = [threading.Thread(target=client.get_user, args=(UID,)) for _ in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # 31 requests, burst 10 -> at least 21 tokens had to be waited for at 10/s
    assert clock.now - 1000.0 >= 2.0


# --------------------------------------------------------------------------- secrets


def test_secrets_and_tokens_never_in_logs_or_exceptions() -> None:
    """The secret key, tokens and Authorization header appear in no log event and no exception text."""
    answers = [
        json_response(401, "{}"),
        json_response(503, f"echo {SECRET} Bearer tok-login-2"),
        json_response(400, f"bad request; you sent Authorization: Bearer tok-login-2 and {SECRET}"),
    ]
    api = FakeApi(lambda r: answers.pop(0))
    with capture_logs() as logs, make_client(api) as client, pytest.raises(RemotePermanentError) as info:
        client.get_portfolio(PID)
    texts = [repr(logs), repr(info.value), str(info.value), repr(info.value.body), repr(client.__dict__.get("calls"))]
    cause = info.value.__cause__
    if cause is not None:
        texts.append(repr(cause))
    joined = "\n".join(texts)
    for needle in (SECRET, "tok-login-1", "tok-login-2", "refresh-tok-login"):
        assert needle not in joined
    assert "***" in str(info.value)
    assert {e["event"] for e in logs} >= {"investsuite.login", "investsuite.relogin", "investsuite.retry"}


def test_settings_secret_is_masked_in_client_repr() -> None:
    """The settings object the client holds prints the secret masked."""
    client = make_client(FakeApi(lambda r: json_response(200, "{}")))
    with client:
        assert SECRET not in repr(client._settings)
