"""The typed, thread-safe InvestSuite REST client used by the payout job.

One ``InvestSuiteClient`` owns one ``httpx.Client`` (explicit timeouts; one keep-alive connection
per thread through ``http_transport``, or httpx's own pool behind a proxy) and is shared by all
executor threads. It returns validated models (``investsuite_models``, read by ``investsuite_pages``),
never raw responses, and translates every failure into ``batch.errors``:

* connect errors, timeouts, dropped connections, 429 and 5xx -> ``RemoteTransientError``
  (``status``, ``retry_after``); the subclass ``NotProcessedError`` marks failures where the
  server provably did not process the request (connection never made, pool timeout, 429); a
  connection never made names the base URL and the cause ("... unreachable: connection refused");
* login refused (401/403), or a 401 while no credentials are configured -> ``CredentialsError``
  (a configuration error: retrying cannot help);
* 404 -> ``NotFoundError``; other 4xx -> ``RemotePermanentError`` (body truncated, secrets redacted);
* a body that is not JSON or not the documented shape -> ``PayloadError``.

Retries go through stamina (``investsuite_retry``): reads (GET) and auth calls on
``RemoteTransientError``, writes (POST transaction, PATCH portfolio, POST event) only on
``NotProcessedError`` unless ``retry_writes=True`` (an unknown outcome is left to the step engine,
which reads back first); jittered exponential backoff, ``Retry-After`` as the wait, bounded by
``max_attempts`` and ``max_retry_seconds``. A 401 triggers one re-login and one resend (the server
refused the request before doing anything); a second 401 is a ``RemotePermanentError``. Tokens:
``investsuite_auth``.

Rate limiting (``throttle``): an optional token bucket (``rate_limit_per_second``) shared by all
threads, and a shared "not before" instant that a 429 with ``Retry-After`` pushes forward so every
thread pauses.

JSON is read with ``parse_float=Decimal`` and written with Decimals as plain JSON numbers; floats are
refused. Secrets, tokens and the Authorization header never reach logs or exception messages.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, Self

import httpx
import structlog

from batch.adapters.http_transport import ThreadLocalTransport
from batch.adapters.investsuite_auth import TokenKeeper
from batch.adapters.investsuite_models import (
    CounterAccount,
    EventReceipt,
    MalformedPortfolio,
    PortfolioPage,
    RemotePortfolio,
    RemoteTransaction,
    RemoteUser,
)
from batch.adapters.investsuite_pages import (
    decode,
    in_queries,
    portfolio_page,
    resolve_next,
    segment,
    transaction_rows,
    unambiguous,
    validate,
)
from batch.adapters.investsuite_retry import (
    CallRetries,
    NotProcessedError,
    connect_cause,
    not_sent_on_auth_failure,
    parse_retry_after,
    with_retries,
)
from batch.adapters.throttle import Throttle
from batch.codec import dumps as dumps_json
from batch.codec import loads as loads_json
from batch.errors import NotFoundError, PayloadError, RemotePermanentError, RemoteTransientError
from batch.settings import InvestSuiteSettings

__all__ = [
    "PENDING_QUERY",
    "CounterAccount",
    "EventReceipt",
    "InvestSuiteClient",
    "MalformedPortfolio",
    "NotProcessedError",
    "PortfolioPage",
    "RemotePortfolio",
    "RemoteTransaction",
    "RemoteUser",
    "dumps_json",
    "loads_json",
    "parse_retry_after",
]

log = structlog.get_logger(__name__)

#: The documented pending-withdrawal filter (``lt``/``gt`` are not supported on amounts).
PENDING_QUERY = "config.manager_settings.divest_amount neq 0 and config.manager_settings.divest_amount neq null"

_BODY_LIMIT = 500
_MAX_PAGE = 100  # the documented maximum ``limit``

ROUTE_LIST_PORTFOLIOS = "GET /portfolios/"
ROUTE_GET_PORTFOLIO = "GET /portfolios/{id}"
ROUTE_GET_USER = "GET /users/{id}"
ROUTE_CREATE_TRANSACTION = "POST /portfolios/{id}/transactions/"
ROUTE_FIND_TRANSACTIONS = "GET /portfolios/{id}/transactions/"
ROUTE_PATCH_PORTFOLIO = "PATCH /portfolios/{id}/"
ROUTE_WITHDRAW_EVENT = "POST /events/withdraw/"
ROUTE_DEPOSIT_EVENT = "POST /events/deposit/"


def _proxy_in_environment() -> bool:
    """Whether httpx would route through a proxy from the environment (then keep its own transport)."""
    return any(
        name.lower() in {"http_proxy", "https_proxy", "all_proxy"} and value for name, value in os.environ.items()
    )


class InvestSuiteClient:
    """Thread-safe InvestSuite API client; one per process, shared by the executor threads."""

    def __init__(
        self,
        settings: InvestSuiteSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        retry_writes: bool = False,
    ) -> None:
        """``sleep`` and ``monotonic`` drive the throttle, the token's life and the retry time bound (tests
        pass a fake clock); the waits between retries are stamina's."""
        self._settings = settings
        self._monotonic = monotonic
        self.retry_writes = retry_writes
        self.calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        self._throttle = Throttle(settings.rate_limit_per_second, monotonic, sleep)
        base_url = settings.base_url.rstrip("/") + "/"
        self._base_url = httpx.URL(base_url)
        self._base_prefix = str(self._base_url)
        #: how messages name the server: scheme, host, port and path (``netloc`` never has user or password)
        self.where = f"{self._base_url.scheme}://{self._base_url.netloc.decode()}{self._base_url.path.rstrip('/')}"
        self._tokens = TokenKeeper(settings, where=self.where, post=self._auth_post, monotonic=monotonic)
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.read_timeout_seconds,
            write=settings.read_timeout_seconds,
            pool=settings.read_timeout_seconds,
        )
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=30.0,
        )
        if transport is None and not _proxy_in_environment():
            transport = ThreadLocalTransport()  # httpx's pool costs more CPU than the request (see there)
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            limits=limits,
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )

    # ------------------------------------------------------------------ lifecycle

    def authenticate(self) -> None:
        """Log in now (when credentials are configured), so a refused login stops a run before any payout step."""
        self._current_token()

    def limit_rate(self, per_second: float | None) -> None:
        """Change the client-side rate limit (e.g. this process's share when several processes run)."""
        self._throttle.set_rate(per_second)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ public API

    def iter_pending_pages(self, *, page_size: int | None = None, embed_owner: bool = True) -> Iterator[PortfolioPage]:
        """Stream pages of portfolios with a pending divest amount, following ``next`` as returned."""
        return self.iter_portfolio_pages(PENDING_QUERY, page_size=page_size, embed_owner=embed_owner)

    def iter_portfolio_pages(
        self, query: str, *, page_size: int | None = None, embed_owner: bool = False
    ) -> Iterator[PortfolioPage]:
        """Stream pages of the portfolios matching ``query`` (the documented query syntax), following ``next``."""
        limit = page_size if page_size is not None else self._settings.page_size
        params: dict[str, str] = {"query": query, "limit": str(limit)}
        if embed_owner:
            params["embed"] = "owned_by_user_id"
        url: str | httpx.URL = self._url("portfolios/")
        seen: set[str] = set()
        page_number = 0
        request_params: dict[str, str] | None = params
        while True:
            page_number += 1
            document = self._call("GET", ROUTE_LIST_PORTFOLIOS, url, params=request_params, write=False)
            page = portfolio_page(document, page_number)
            yield page
            if page.next_url is None:
                return
            if page.next_url in seen:
                raise PayloadError(f"pagination loop: next URL repeated on page {page_number}")
            seen.add(page.next_url)
            url = resolve_next(self._base_url, page.next_url)
            request_params = None  # ``next`` carries its own query string

    def find_portfolios_by_external_ids(self, external_ids: Sequence[str]) -> dict[str, RemotePortfolio]:
        """The portfolios whose ``external_id`` is one of ``external_ids``, by external id.

        ``external_id in ['a', 'b']`` (the documented list query), 100 ids per request, following ``next``.
        Ids with a quote are refused (the query language has no escape). Only exact matches count (``*`` is a
        wildcard); an id several portfolios carry (uniqueness is disputed) is left out and logged, unless all
        but one of them are deleted.
        """
        matches: dict[str, list[RemotePortfolio]] = {}
        for item in self._listed("external_id", external_ids):
            matches.setdefault(item.external_id or "", []).append(item)
        return unambiguous(matches)

    def get_portfolios(self, portfolio_ids: Sequence[str]) -> dict[str, RemotePortfolio]:
        """The portfolios among ``portfolio_ids`` that exist, by id: ``id in [...]``, 100 per request."""
        return {item.id: item for item in self._listed("id", portfolio_ids)}

    def _listed(self, field: str, values: Sequence[str]) -> Iterator[RemotePortfolio]:
        """The well-formed portfolios whose ``field`` is one of ``values`` (exact), ``field in [...]`` 100 at a time."""
        for asked, query in list(in_queries(field, values, _MAX_PAGE)):  # every value checked before a request
            for page in self.iter_portfolio_pages(query, page_size=_MAX_PAGE):
                for item in page.items:
                    if isinstance(item, RemotePortfolio) and getattr(item, field) in asked:
                        yield item

    def get_portfolio(self, portfolio_id: str) -> RemotePortfolio:
        """``GET /portfolios/{id}``."""
        document = self._call("GET", ROUTE_GET_PORTFOLIO, self._url(f"portfolios/{segment(portfolio_id)}"), write=False)
        return validate(RemotePortfolio, document, f"portfolio {portfolio_id}")

    def get_user(self, user_id: str) -> RemoteUser:
        """``GET /users/{id}`` (the owner, for the counter account)."""
        document = self._call("GET", ROUTE_GET_USER, self._url(f"users/{segment(user_id)}"), write=False)
        return validate(RemoteUser, document, f"user {user_id}")

    def create_transaction(self, portfolio_id: str, body: dict[str, Any]) -> RemoteTransaction:
        """``POST /portfolios/{id}/transactions/``; never resent after an unknown outcome."""
        document = self._call(
            "POST",
            ROUTE_CREATE_TRANSACTION,
            self._url(f"portfolios/{segment(portfolio_id)}/transactions/"),
            json_body=body,
            write=True,
        )
        return validate(RemoteTransaction, document, f"transaction for portfolio {portfolio_id}")

    def find_transactions(self, portfolio_id: str, external_id: str) -> list[RemoteTransaction]:
        """Transactions of the portfolio whose ``external_id`` equals ``external_id`` exactly (``eq``, one payout)."""
        if "'" in external_id:
            raise ValueError("external_id must not contain a single quote (query language)")
        query = f"external_id eq '{external_id}'"
        return [t for t in self._transactions(portfolio_id, {"query": query}) if t.external_id == external_id]

    def transactions_by_external_id(self, portfolio_id: str, ids: Sequence[str]) -> dict[str, list[RemoteTransaction]]:
        """The portfolio's transactions by ``external_id`` (every id asked a key): ``external_id in [...]``, 100 per
        request, following ``next``; per portfolio (the docs list none across portfolios). Exact matches only
        (``*`` is a wildcard); a transaction once if two pages repeat it; several under one id all kept."""
        found: dict[str, dict[str, RemoteTransaction]] = {external_id: {} for external_id in set(ids)}
        for asked, query in list(in_queries("external_id", ids, _MAX_PAGE)):  # checked before a request
            for transaction in self._transactions(portfolio_id, {"query": query, "limit": str(_MAX_PAGE)}):
                if transaction.external_id in asked:
                    found[transaction.external_id].setdefault(transaction.id, transaction)
        return {external_id: list(by_id.values()) for external_id, by_id in found.items()}

    def _transactions(self, portfolio_id: str, params: dict[str, str] | None) -> Iterator[RemoteTransaction]:
        """Every transaction of a listing of ``GET /portfolios/{id}/transactions/``, following ``next``."""
        url: str | httpx.URL = self._url(f"portfolios/{segment(portfolio_id)}/transactions/")
        seen: set[str] = set()
        while True:
            document = self._call("GET", ROUTE_FIND_TRANSACTIONS, url, params=params, write=False)
            rows, next_url = transaction_rows(document)
            for row in rows:
                yield validate(RemoteTransaction, row, f"transaction of {portfolio_id}")
            if next_url is None:
                return
            if next_url in seen:
                raise PayloadError("transaction listing: next URL repeated")
            seen.add(next_url)
            url, params = resolve_next(self._base_url, next_url), None

    def patch_portfolio(self, portfolio_id: str, fields: dict[str, Any]) -> RemotePortfolio:
        """``PATCH /portfolios/{id}/`` with whole top-level fields (``config``, ``portfolio``)."""
        document = self._call(
            "PATCH",
            ROUTE_PATCH_PORTFOLIO,
            self._url(f"portfolios/{segment(portfolio_id)}/"),
            json_body=fields,
            write=True,
        )
        return validate(RemotePortfolio, document, f"portfolio {portfolio_id}")

    def post_withdraw_event(
        self, *, idempotency_key: str, amount: Decimal, currency: str, portfolio_id: str
    ) -> EventReceipt:
        """``POST /events/withdraw/`` for ``amount``, sent as a decimal string (the job builds its bodies with
        ``batch.domain.writes.event_body`` and ``post_event``)."""
        if not isinstance(amount, Decimal) or not amount.is_finite():
            raise TypeError("amount must be a finite Decimal")
        body = {
            "data": {"amount": format(amount, "f"), "currency": currency.removeprefix("$"), "portfolio": portfolio_id}
        }
        return self.post_event("withdraw", idempotency_key=idempotency_key, body=body)

    def post_event(self, kind: Literal["withdraw", "deposit"], *, idempotency_key: str, body: Any) -> EventReceipt:
        """``POST /events/{kind}/`` with an ``Idempotency-Key``; ``body`` as built by ``batch.domain.writes``."""
        route = ROUTE_WITHDRAW_EVENT if kind == "withdraw" else ROUTE_DEPOSIT_EVENT
        status, document = self._call_with_status(
            "POST",
            route,
            self._url(f"events/{kind}/"),
            json_body=body,
            headers={"Idempotency-Key": idempotency_key},
            write=True,
            allow_empty=True,
        )
        return EventReceipt(idempotency_key=idempotency_key, status_code=status, body=document)

    def _url(self, path: str) -> httpx.URL:
        # relative path (ids quoted by ``segment``), base ending in "/": what ``URL.join`` gives, ~80 us cheaper
        return httpx.URL(self._base_prefix + path)

    # ------------------------------------------------------------------ request machinery

    def _call(
        self,
        method: str,
        route: str,
        url: str | httpx.URL,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        write: bool,
    ) -> Any:
        return self._call_with_status(
            method, route, url, params=params, json_body=json_body, headers=headers, write=write
        )[1]

    def _call_with_status(
        self,
        method: str,
        route: str,
        url: str | httpx.URL,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        write: bool,
        allow_empty: bool = False,
    ) -> tuple[int, Any]:
        content = dumps_json(json_body).encode() if json_body is not None else None

        def attempt() -> tuple[int, Any]:
            response = self._send_authenticated(method, route, url, params, content, headers)
            return response.status_code, decode(response, route, allow_empty=allow_empty)

        return with_retries(attempt, self._retries(method, route, write=write))

    def _retries(self, method: str, route: str, *, write: bool) -> CallRetries:
        """The retry decisions for one call (a fresh attempt count and time bound)."""
        return CallRetries(
            method,
            route,
            write=write,
            retry_writes=self.retry_writes,
            max_attempts=self._settings.max_attempts,
            max_retry_seconds=self._settings.max_retry_seconds,
            monotonic=self._monotonic,
        )

    def _send_authenticated(
        self,
        method: str,
        route: str,
        url: str | httpx.URL,
        params: Mapping[str, str] | None,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        with not_sent_on_auth_failure(route):
            token = self._current_token()
        response = self._send(method, route, url, params, content, headers, token)
        if response.status_code != 401:
            return response
        log.info("investsuite.relogin", method=method, route=route)
        with not_sent_on_auth_failure(route):
            token = self._tokens.relogin(stale=token)
        response = self._send(method, route, url, params, content, headers, token)
        if response.status_code == 401:
            raise RemotePermanentError(
                f"{route}: HTTP 401 again after a fresh login", status=401, body=self._body_excerpt(response)
            )
        return response

    def _send(
        self,
        method: str,
        route: str,
        url: str | httpx.URL,
        params: Mapping[str, str] | None,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        token: str | None,
    ) -> httpx.Response:
        """One HTTP exchange: throttle, count, send, classify transport errors and statuses."""
        request_headers: dict[str, str] = dict(headers or {})
        if content is not None:
            request_headers["Content-Type"] = "application/json"
        if token is not None:
            request_headers["Authorization"] = f"Bearer {token}"
        self._throttle.acquire()
        with self._calls_lock:
            self.calls[route] += 1
        try:
            response = self._http.request(method, url, params=params, content=content, headers=request_headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            why = connect_cause(exc, self._settings.connect_timeout_seconds)
            raise NotProcessedError(f"InvestSuite at {self.where} unreachable: {why} ({route})", status=None) from exc
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise RemoteTransientError(f"{route}: no usable response ({type(exc).__name__})", status=None) from exc
        except httpx.TransportError as exc:
            raise RemotePermanentError(f"{route}: transport error ({type(exc).__name__})") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 429:
                if retry_after is not None:
                    self._throttle.pause_until(self._monotonic() + retry_after)
                log.debug("investsuite.rate_limited", route=route, retry_after=retry_after)
                raise NotProcessedError(f"{route}: HTTP 429", status=429, retry_after=retry_after)
            raise RemoteTransientError(
                f"{route}: HTTP {status}: {self._body_excerpt(response)}",
                status=status,
                retry_after=retry_after,
            )
        if status == 404:
            body = self._body_excerpt(response)
            raise NotFoundError(f"{route}: HTTP 404: {body}", status=404, body=body)
        if status >= 400 and status != 401:
            body = self._body_excerpt(response)
            raise RemotePermanentError(f"{route}: HTTP {status}: {body}", status=status, body=body)
        return response

    def _body_excerpt(self, response: httpx.Response) -> str:
        try:
            text = response.text
        except (UnicodeDecodeError, LookupError):
            text = "<undecodable body>"
        return self._redact(text[:_BODY_LIMIT])

    def _redact(self, text: str) -> str:
        for secret in self._tokens.secrets():
            text = text.replace(secret, "***")
        return text

    # ------------------------------------------------------------------ auth

    def _current_token(self) -> str | None:
        """A valid access token (``investsuite_auth``), or None when no credentials are configured."""
        return self._tokens.current()

    def _auth_post(self, route: str, path: str, body: dict[str, str]) -> Any:
        """POST to an auth endpoint, retried when transient; a 401 there is a refusal, never a re-login."""
        content = dumps_json(body).encode()
        url = self._url(path)

        def attempt() -> Any:
            response = self._send("POST", route, url, None, content, None, None)
            if response.status_code == 401:
                raise RemotePermanentError(f"{route}: credentials refused (HTTP 401)", status=401)
            return decode(response, route)

        return with_retries(attempt, self._retries("POST", route, write=False))
