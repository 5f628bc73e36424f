"""The typed, thread-safe InvestSuite REST client used by the payout job.

One ``InvestSuiteClient`` owns one ``httpx.Client`` (explicit timeouts; one keep-alive connection
per thread through ``http_transport``, or httpx's own pool behind a proxy) and is shared by all
executor threads. It returns validated models (``investsuite_models``), never
raw responses, and translates every failure into ``batch.errors``:

* connect errors, timeouts, dropped connections, 429 and 5xx -> ``RemoteTransientError``
  (``status``, ``retry_after``); the subclass ``NotProcessedError`` marks failures where the
  server provably did not process the request (connection never made, pool timeout, 429); a
  connection never made names the base URL and the cause ("... unreachable: connection refused");
* login refused (401/403), or a 401 while no credentials are configured -> ``CredentialsError``
  (a configuration error: retrying cannot help);
* 404 -> ``NotFoundError``; other 4xx -> ``RemotePermanentError`` (body truncated, secrets redacted);
* a body that is not JSON or not the documented shape -> ``PayloadError``.

Retries: reads (GET) and auth calls are retried on ``RemoteTransientError`` with jittered
exponential backoff, bounded by ``max_attempts`` and ``max_retry_seconds``, waiting at least
``Retry-After``. Writes (POST transaction, PATCH portfolio, POST event) are only retried on
``NotProcessedError`` unless ``retry_writes=True``: an unknown outcome is left to the executor,
which reads back first. A 401 triggers one re-login and one resend (the server refused the request
before doing anything); a second 401 is a ``RemotePermanentError``.

Rate limiting: an optional token bucket (``rate_limit_per_second``) shared by all threads, and a
shared "not before" instant that a 429 with ``Retry-After`` pushes forward so every thread pauses.

JSON is read with ``parse_float=Decimal`` and written with Decimals as plain JSON numbers; floats are
refused. Secrets, tokens and the Authorization header never reach logs or exception messages.
"""

from __future__ import annotations

import collections
import email.utils
import math
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
import structlog
from pydantic import ValidationError

from batch.adapters.http_transport import ThreadLocalTransport
from batch.adapters.investsuite_models import (
    CounterAccount,
    EventReceipt,
    MalformedPortfolio,
    PortfolioPage,
    RemotePortfolio,
    RemoteTransaction,
    RemoteUser,
)
from batch.codec import dumps as dumps_json
from batch.codec import loads as loads_json
from batch.errors import CredentialsError, NotFoundError, PayloadError, RemotePermanentError, RemoteTransientError
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
]

log = structlog.get_logger(__name__)

_M = TypeVar("_M", RemotePortfolio, RemoteUser, RemoteTransaction)

#: The documented pending-withdrawal filter (``lt``/``gt`` are not supported on amounts).
PENDING_QUERY = "config.manager_settings.divest_amount neq 0 and config.manager_settings.divest_amount neq null"

_BODY_LIMIT = 500
_MAX_PAGE = 100  # the documented maximum ``limit``
_BACKOFF_BASE_SECONDS = 0.5
_BACKOFF_CAP_SECONDS = 30.0
_REFRESH_AT_FRACTION = 0.8

ROUTE_LOGIN = "POST /auth/login/"
ROUTE_REFRESH = "POST /auth/refresh-token/"
ROUTE_LIST_PORTFOLIOS = "GET /portfolios/"
ROUTE_GET_PORTFOLIO = "GET /portfolios/{id}"
ROUTE_GET_USER = "GET /users/{id}"
ROUTE_CREATE_TRANSACTION = "POST /portfolios/{id}/transactions/"
ROUTE_FIND_TRANSACTIONS = "GET /portfolios/{id}/transactions/"
ROUTE_PATCH_PORTFOLIO = "PATCH /portfolios/{id}/"
ROUTE_WITHDRAW_EVENT = "POST /events/withdraw/"
ROUTE_DEPOSIT_EVENT = "POST /events/deposit/"


class NotProcessedError(RemoteTransientError):
    """Transient failure where the server provably did not process the request; safe to resend."""


# --------------------------------------------------------------------------- helpers


def parse_retry_after(value: str | None, *, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date); None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now() if now is not None else datetime.now(UTC)
        return max(0.0, (when - current).total_seconds())
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _seconds(raw: Any) -> float:
    """``expires_in`` arrives as a string (documented) or a number."""
    if isinstance(raw, bool):
        raise ValueError("boolean expires_in")
    value = float(raw)
    if not value > 0:
        raise ValueError(f"expires_in must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class _Token:
    access: str
    refresh: str | None
    refresh_at: float  # monotonic instant after which we refresh proactively


class _Throttle:
    """Token bucket plus a shared "not before" instant; all threads go through ``acquire``."""

    def __init__(self, rate: float | None, monotonic: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._rate, self._capacity = rate, self._bucket_size(rate)
        self._tokens = self._capacity
        self._monotonic = monotonic
        self._sleep = sleep
        self._updated = monotonic()
        self._not_before = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def _bucket_size(rate: float | None) -> float:
        return max(1.0, rate) if rate else 1.0

    def set_rate(self, rate: float | None) -> None:
        with self._lock:
            self._rate, self._capacity = rate, self._bucket_size(rate)
            self._tokens = min(self._tokens, self._capacity)

    def pause_until(self, instant: float) -> None:
        """Hold every thread back until ``instant`` (monotonic), e.g. after a 429 Retry-After."""
        with self._lock:
            self._not_before = max(self._not_before, instant)

    def acquire(self) -> float:
        """Reserve one request slot and sleep until it is due; returns the seconds waited."""
        with self._lock:
            now = self._monotonic()
            start = max(now, self._not_before)
            if self._rate:
                self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                self._tokens -= 1.0
                if self._tokens < 0:
                    start = max(start, now + (-self._tokens) / self._rate)
            wait = start - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


# --------------------------------------------------------------------------- the client


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
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._monotonic = monotonic
        self._jitter = jitter
        self.retry_writes = retry_writes
        self.calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._token: _Token | None = None
        self._throttle = _Throttle(settings.rate_limit_per_second, monotonic, sleep)
        base_url = settings.base_url.rstrip("/") + "/"
        self._base_url = httpx.URL(base_url)
        #: how messages name the server: scheme, host, port and path (``netloc`` never has user or password)
        self.where = f"{self._base_url.scheme}://{self._base_url.netloc.decode()}{self._base_url.path.rstrip('/')}"
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
            page = self._parse_page(document, page_number)
            yield page
            if page.next_url is None:
                return
            if page.next_url in seen:
                raise PayloadError(f"pagination loop: next URL repeated on page {page_number}")
            seen.add(page.next_url)
            url = self._resolve_next(page.next_url)
            request_params = None  # ``next`` carries its own query string

    def find_portfolios_by_external_ids(self, external_ids: Sequence[str]) -> dict[str, RemotePortfolio]:
        """The portfolios whose ``external_id`` is one of ``external_ids``, by external id.

        ``external_id in ['a', 'b']`` (the documented list query), 100 ids per request, following ``next``.
        Ids with a quote are refused (the query language has no escape). Only exact matches count (``*`` is a
        wildcard); an id several portfolios carry (uniqueness is disputed) is left out and logged, unless all
        but one of them are deleted.
        """
        wanted = sorted(set(external_ids))
        if any("'" in external_id or not external_id for external_id in wanted):
            raise ValueError("an external_id must be non-empty and must not contain a single quote (query language)")
        matches: dict[str, list[RemotePortfolio]] = {}
        for start in range(0, len(wanted), _MAX_PAGE):
            chunk = wanted[start : start + _MAX_PAGE]
            asked = set(chunk)
            query = "external_id in [" + ", ".join(f"'{external_id}'" for external_id in chunk) + "]"
            for page in self.iter_portfolio_pages(query, page_size=_MAX_PAGE):
                for item in page.items:
                    if isinstance(item, RemotePortfolio) and item.external_id in asked:
                        matches.setdefault(item.external_id, []).append(item)
        found: dict[str, RemotePortfolio] = {}
        for external_id, portfolios in matches.items():
            live = [p for p in portfolios if not p.deleted] if len(portfolios) > 1 else portfolios
            if len(live) == 1:
                found[external_id] = live[0]
            else:
                ids = [p.id for p in portfolios]
                log.warning("investsuite.external_id_ambiguous", external_id=external_id, portfolio_ids=ids)
        return found

    def get_portfolio(self, portfolio_id: str) -> RemotePortfolio:
        """``GET /portfolios/{id}``."""
        document = self._call(
            "GET", ROUTE_GET_PORTFOLIO, self._url(f"portfolios/{_segment(portfolio_id)}"), write=False
        )
        return _validate(RemotePortfolio, document, f"portfolio {portfolio_id}")

    def get_user(self, user_id: str) -> RemoteUser:
        """``GET /users/{id}`` (the owner, for the counter account)."""
        document = self._call("GET", ROUTE_GET_USER, self._url(f"users/{_segment(user_id)}"), write=False)
        return _validate(RemoteUser, document, f"user {user_id}")

    def create_transaction(self, portfolio_id: str, body: dict[str, Any]) -> RemoteTransaction:
        """``POST /portfolios/{id}/transactions/``; never resent after an unknown outcome."""
        document = self._call(
            "POST",
            ROUTE_CREATE_TRANSACTION,
            self._url(f"portfolios/{_segment(portfolio_id)}/transactions/"),
            json_body=body,
            write=True,
        )
        return _validate(RemoteTransaction, document, f"transaction for portfolio {portfolio_id}")

    def find_transactions(self, portfolio_id: str, external_id: str) -> list[RemoteTransaction]:
        """Transactions of the portfolio whose ``external_id`` equals ``external_id`` exactly."""
        if "'" in external_id:
            raise ValueError("external_id must not contain a single quote (query language)")
        params: dict[str, str] | None = {"query": f"external_id eq '{external_id}'"}
        url: str | httpx.URL = self._url(f"portfolios/{_segment(portfolio_id)}/transactions/")
        found: list[RemoteTransaction] = []
        seen: set[str] = set()
        while True:
            document = self._call("GET", ROUTE_FIND_TRANSACTIONS, url, params=params, write=False)
            next_url: Any = None
            if isinstance(document, dict) and "results" in document:
                rows = document["results"]
                next_url = document.get("next")
                if not isinstance(rows, list) or not (next_url is None or isinstance(next_url, str)):
                    raise PayloadError("transaction listing: malformed envelope")
            elif isinstance(document, list):
                rows = document
            elif isinstance(document, dict) and "id" in document:
                rows = [document]  # the docs show a bare object for a by-external-id query
            else:
                raise PayloadError("transaction listing: missing 'results'")
            for row in rows:
                transaction = _validate(RemoteTransaction, row, f"transaction of {portfolio_id}")
                # ``*`` is a wildcard in the query language: keep exact matches only.
                if transaction.external_id == external_id:
                    found.append(transaction)
            if not next_url:
                return found
            if next_url in seen:
                raise PayloadError("transaction listing: next URL repeated")
            seen.add(next_url)
            url, params = self._resolve_next(next_url), None

    def patch_portfolio(self, portfolio_id: str, fields: dict[str, Any]) -> RemotePortfolio:
        """``PATCH /portfolios/{id}/`` with whole top-level fields (``config``, ``portfolio``)."""
        document = self._call(
            "PATCH",
            ROUTE_PATCH_PORTFOLIO,
            self._url(f"portfolios/{_segment(portfolio_id)}/"),
            json_body=fields,
            write=True,
        )
        return _validate(RemotePortfolio, document, f"portfolio {portfolio_id}")

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

    # ------------------------------------------------------------------ pages

    def _parse_page(self, document: Any, page_number: int) -> PortfolioPage:
        if not isinstance(document, dict):
            raise PayloadError(f"portfolio page {page_number}: expected a JSON object")
        results = document.get("results")
        if not isinstance(results, list):
            raise PayloadError(f"portfolio page {page_number}: missing or invalid 'results'")
        next_url = document.get("next")
        if next_url is not None and not isinstance(next_url, str):
            raise PayloadError(f"portfolio page {page_number}: 'next' is not a string")
        embedded = document.get("_embedded") or {}
        if not isinstance(embedded, dict):
            raise PayloadError(f"portfolio page {page_number}: '_embedded' is not an object")
        items: list[RemotePortfolio | MalformedPortfolio] = []
        for raw in results:
            portfolio_id = raw.get("id") if isinstance(raw, dict) else None
            if not isinstance(portfolio_id, str):
                portfolio_id = None
            try:
                items.append(RemotePortfolio.model_validate(raw))
            except ValidationError as exc:
                error = _validation_summary(exc)
                log.warning(
                    "investsuite.malformed_portfolio",
                    portfolio_id=portfolio_id,
                    page_number=page_number,
                    error=error,
                )
                items.append(MalformedPortfolio(raw=raw, portfolio_id=portfolio_id, error=error))
        users: dict[str, RemoteUser] = {}
        for user_id, raw_user in embedded.items():
            try:
                users[str(user_id)] = RemoteUser.model_validate(raw_user)
            except ValidationError as exc:
                # The owner can still be fetched with get_user; the portfolio is not dropped.
                log.warning("investsuite.malformed_user", user_id=str(user_id), error=_validation_summary(exc))
        return PortfolioPage(
            items=items,
            users=users,
            next_url=next_url or None,
            page_number=page_number,
            count=_opt_str(document.get("count")),
            offset=_opt_str(document.get("offset")),
        )

    def _url(self, path: str) -> httpx.URL:
        return self._base_url.join(path)

    def _resolve_next(self, next_url: str) -> httpx.URL:
        """Resolve ``next`` (relative or absolute); refuse another origin (it would get our token)."""
        try:
            resolved = self._base_url.join(next_url)
        except httpx.InvalidURL as exc:
            raise PayloadError("'next' is not a valid URL") from exc
        if (resolved.scheme, resolved.host, resolved.port) != (
            self._base_url.scheme,
            self._base_url.host,
            self._base_url.port,
        ):
            raise PayloadError(f"'next' points to another origin: {resolved.scheme}://{resolved.host}")
        return resolved

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
            return response.status_code, _decode(response, route, allow_empty=allow_empty)

        return self._with_retries(method, route, attempt, write=write)

    def _with_retries(
        self, method: str, route: str, attempt: Callable[[], tuple[int, Any]], *, write: bool
    ) -> tuple[int, Any]:
        started = self._monotonic()
        number = 0
        while True:
            number += 1
            try:
                return attempt()
            except RemoteTransientError as exc:
                retryable = not write or self.retry_writes or isinstance(exc, NotProcessedError)
                if not retryable:
                    log.warning(
                        "investsuite.write_failed",
                        method=method,
                        route=route,
                        status=exc.status,
                        error=str(exc),
                    )
                    raise
                delay = self._backoff(number)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                elapsed = self._monotonic() - started
                if number >= self._settings.max_attempts or elapsed + delay > self._settings.max_retry_seconds:
                    log.warning(
                        "investsuite.gave_up",
                        method=method,
                        route=route,
                        attempts=number,
                        elapsed_seconds=round(elapsed, 3),
                        status=exc.status,
                        error=str(exc),
                    )
                    raise
                log.debug(
                    "investsuite.retry",
                    method=method,
                    route=route,
                    attempt=number,
                    delay_seconds=round(delay, 3),
                    status=exc.status,
                    retry_after=exc.retry_after,
                    error=str(exc),
                )
                self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Equal-jitter exponential backoff: half fixed, half random, capped."""
        ceiling = min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))
        return ceiling / 2 + ceiling / 2 * self._jitter()

    def _send_authenticated(
        self,
        method: str,
        route: str,
        url: str | httpx.URL,
        params: Mapping[str, str] | None,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        with _not_sent_on_auth_failure(route):
            token = self._current_token()
        response = self._send(method, route, url, params, content, headers, token)
        if response.status_code != 401:
            return response
        log.info("investsuite.relogin", method=method, route=route)
        with _not_sent_on_auth_failure(route):
            token = self._relogin(stale=token)
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
            why = _connect_cause(exc, self._settings.connect_timeout_seconds)
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
        secrets: list[str] = []
        if self._settings.secret_access_key is not None:
            secrets.append(self._settings.secret_access_key.get_secret_value())
        token = self._token
        if token is not None:
            secrets.append(token.access)
            if token.refresh:
                secrets.append(token.refresh)
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    # ------------------------------------------------------------------ auth

    def _current_token(self) -> str | None:
        """A valid access token: log in the first time, refresh once 80% of its life has passed."""
        if self._settings.access_key_id is None or self._settings.secret_access_key is None:
            return None  # no credentials configured: unauthenticated (e.g. an open sandbox)
        with self._auth_lock:
            token = self._token
            if token is None:
                token = self._login()
            elif self._monotonic() >= token.refresh_at:
                token = self._refresh(token)
            return token.access

    def _relogin(self, *, stale: str | None) -> str | None:
        """After a 401: log in again, unless another thread already replaced the stale token."""
        if self._settings.access_key_id is None or self._settings.secret_access_key is None:
            missing = [n for n in ("access_key_id", "secret_access_key") if getattr(self._settings, n) is None]
            raise CredentialsError(
                f"InvestSuite at {self.where} answered HTTP 401 and no credentials are configured: "
                + ", ".join(f"investsuite.{n} (BATCH_INVESTSUITE__{n.upper()})" for n in missing)
                + (" is" if len(missing) == 1 else " are")
                + " not set"
            )
        with self._auth_lock:
            if self._token is not None and self._token.access != stale:
                return self._token.access
            self._token = None
            return self._login().access

    def _login(self) -> _Token:
        key_id = self._settings.access_key_id
        secret = self._settings.secret_access_key
        assert key_id is not None and secret is not None  # checked by the callers
        body = {"access_key_id": key_id, "secret_access_key": secret.get_secret_value()}
        try:
            token = self._auth_call(ROUTE_LOGIN, "auth/login/", body)
        except RemotePermanentError as exc:
            if exc.status not in (401, 403):
                raise
            raise CredentialsError(
                f"InvestSuite at {self.where} refused the login (HTTP {exc.status} on {ROUTE_LOGIN}): check "
                "investsuite.access_key_id and investsuite.secret_access_key"
            ) from exc
        log.info("investsuite.login")
        return token

    def _refresh(self, token: _Token) -> _Token:
        if token.refresh:
            try:
                fresh = self._auth_call(ROUTE_REFRESH, "auth/refresh-token/", {"refresh_token": token.refresh})
            except (RemotePermanentError, PayloadError) as exc:
                log.info("investsuite.refresh_refused", error_type=type(exc).__name__)
            else:
                log.info("investsuite.token_refreshed")
                return fresh
        return self._login()

    def _auth_call(self, route: str, path: str, body: dict[str, str]) -> _Token:
        """POST to an auth endpoint (retried when transient); caller holds the auth lock."""
        content = dumps_json(body).encode()
        url = self._url(path)

        def attempt() -> tuple[int, Any]:
            response = self._send("POST", route, url, None, content, None, None)
            if response.status_code == 401:
                raise RemotePermanentError(f"{route}: credentials refused (HTTP 401)", status=401)
            return response.status_code, _decode(response, route)

        _, document = self._with_retries("POST", route, attempt, write=False)
        if not isinstance(document, dict):
            raise PayloadError(f"{route}: expected a JSON object")
        access, refresh = document.get("access_token"), document.get("refresh_token")
        if not isinstance(access, str) or not access:
            raise PayloadError(f"{route}: no access_token in the response")
        if refresh is not None and not isinstance(refresh, str):
            raise PayloadError(f"{route}: refresh_token is not a string")
        try:
            lifetime = _seconds(document.get("expires_in"))
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise PayloadError(f"{route}: invalid expires_in") from exc
        self._token = _Token(
            access=access,
            refresh=refresh or None,
            refresh_at=self._monotonic() + lifetime * _REFRESH_AT_FRACTION,
        )
        return self._token


# --------------------------------------------------------------------------- module helpers


@contextmanager
def _not_sent_on_auth_failure(route: str) -> Iterator[None]:
    """A transient auth failure means the request itself was never sent: safe to resend, even a write."""
    try:
        yield
    except NotProcessedError:
        raise
    except RemoteTransientError as exc:
        raise NotProcessedError(
            f"{route}: not sent, authentication failed: {exc}", status=exc.status, retry_after=exc.retry_after
        ) from exc


def _connect_cause(exc: httpx.TransportError, connect_timeout: float) -> str:
    """Why no connection was made, in a few words (``connection refused``, ``host name not resolved``)."""
    if isinstance(exc, httpx.PoolTimeout):
        return "no free connection in the client's pool"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no answer within the {connect_timeout:g} s connect timeout"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return f"host name not resolved ({cause.strerror})"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed ({getattr(cause, 'verify_message', None) or cause.reason or cause})"
    if isinstance(cause, TimeoutError):
        return f"no answer within the {connect_timeout:g} s connect timeout"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[:1].lower() + cause.strerror[1:]
    return str(exc) or type(exc).__name__


def _segment(identifier: str) -> str:
    """An id as one URL path segment (never lets an id change the route)."""
    if not identifier:
        raise ValueError("empty identifier")
    return quote(identifier, safe="")


def _decode(response: httpx.Response, route: str, *, allow_empty: bool = False) -> Any:
    """The response body as JSON (Decimal numbers); PayloadError for HTML or other non-JSON."""
    if allow_empty and not response.content.strip():
        return None
    try:
        return loads_json(response.text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        content_type = response.headers.get("Content-Type", "?")
        raise PayloadError(
            f"{route}: HTTP {response.status_code} body is not JSON (Content-Type {content_type})"
        ) from exc


def _validate(model: type[_M], document: Any, what: str) -> _M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise PayloadError(f"{what}: {_validation_summary(exc)}") from exc


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
