"""The sandbox's HTTP API (starlette): strictly the InvestSuite calls the payout job makes.

Routes (a trailing slash is optional on each)::

    POST  /auth/login/                         access key -> tokens (expires_in is a string)
    POST  /auth/refresh-token/                 refresh token -> new tokens (refresh tokens rotate)
    GET   /portfolios/?query=&limit=&offset=&embed=owned_by_user_id
    GET   /portfolios/{id}                     PATCH /portfolios/{id}/
    GET   /users/{id}
    POST  /portfolios/{id}/transactions/       GET /portfolios/{id}/transactions/?query=
    POST  /events/withdraw/                    POST /events/deposit/     (Idempotency-Key)
    GET|PUT /_sandbox/faults, GET /_sandbox/stats, POST /_sandbox/stats/reset (also clears the writes),
    GET /_sandbox/writes?route=   the write requests received (route, path, status, raw body),
    POST  /_sandbox/expire-tokens, GET /_sandbox/health              (admin: no auth, no faults)
    POST|PUT|DELETE /_sandbox/portfolios..., GET /_sandbox/bus: act as the app, publish events (bus_events.py)

Choices where the reference is silent (documented in the final report and tested):

- listing ``limit`` above 100 or below 1 -> 400; ``count`` is the number of results on this page (a
  string), ``offset`` the page's offset (a string); ``next`` is null on the last page.
- PATCH changing a write-once field (``money_type``, ``config.manager``; a ``config`` without
  ``manager`` counts as a change) -> 409; read-only fields -> 400; PATCH on a deleted portfolio -> 409.
- events: a missing Idempotency-Key -> 400; an unknown ``data.portfolio`` -> 422. A deposit event is also
  booked (transaction, cash, ``funded_since``) in the same transaction, or refused: ``deposits.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batch import codec
from batch.adapters.migrations import migrate
from batch.adapters.postgres import make_engine
from batch.codec import JsonInputError
from batch.sandbox.bus_events import EventPublisher, admin_routes
from batch.sandbox.deposits import book_deposit, unknown_portfolio
from batch.sandbox.faults import FaultInjector, FaultSettings, RequestStats
from batch.sandbox.query import Expression, QuerySyntaxError, parse_query
from batch.sandbox.rules import (
    Problem,
    apply_portfolio_patch,
    bad_request,
    conflict_at,
    extra_fields,
    not_found,
    parse_request_float,
    transaction_document,
    unauthorized,
    validate_event,
    validate_portfolio_patch,
    validate_transaction,
)
from batch.sandbox.store import Page, SandboxStore, dumps, new_id, now_iso

logger = logging.getLogger(__name__)

NextStyle = Literal["relative", "absolute", "alternate"]
Handler = Callable[[Request], Awaitable[Response]]

DEFAULT_ACCESS_KEY_ID = "demo-access-key"
DEFAULT_SECRET_ACCESS_KEY = "demo-secret-key"  # noqa: S105 - the sandbox's documented demo key
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
#: write requests remembered for ``GET /_sandbox/writes``
WRITES_KEPT = 100_000


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=headers)


def text_json_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status_code=status, media_type="application/json", headers=headers)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return codec.loads(raw, parse_float=parse_request_float)
    except JsonInputError as exc:
        raise bad_request(["body"], str(exc), "value_error.jsondecode") from exc


# -- the application --------------------------------------------------------------------------------


class Sandbox:
    """The application's state: store, tokens cache, faults, statistics and options."""

    def __init__(
        self,
        dsn: str,
        *,
        access_key_id: str,
        secret_access_key: str,
        token_ttl_seconds: float,
        refresh_ttl_seconds: float,
        next_style: NextStyle,
        pool_size: int,
        faults: FaultSettings | None,
        migrate_on_start: bool,
        events: EventPublisher,
    ) -> None:
        if next_style not in ("relative", "absolute", "alternate"):
            raise ValueError(f"next_style must be relative, absolute or alternate, not {next_style!r}")
        self.dsn = dsn
        self.store = SandboxStore(dsn, pool_size=pool_size)
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.token_ttl_seconds = token_ttl_seconds
        self.refresh_ttl_seconds = refresh_ttl_seconds
        self.next_style = next_style
        self.faults = FaultInjector(faults)
        self.stats = RequestStats()
        #: the last write requests (method, route, path, status, raw body), newest last
        self.writes: deque[dict[str, Any]] = deque(maxlen=WRITES_KEPT)
        self.migrate_on_start = migrate_on_start
        self.events = events  # InvestSuite's outbound bus events (off unless a bus is configured)
        #: access token -> expiry (epoch seconds); a cache of sandbox.tokens
        self._access_tokens: dict[str, float] = {}

    # -- request pipeline --------------------------------------------------------------------------

    def endpoint(self, route: str, handler: Handler, *, authenticated: bool = True) -> Handler:
        """Wrap a handler with statistics, rate limit, latency, injected errors, auth and lost responses."""

        async def run(request: Request) -> Response:
            try:
                response = await self._guarded(request, handler, authenticated)
            except Problem as problem:
                response = json_response(problem.body, problem.status, problem.headers)
            except Exception:
                logger.exception("sandbox.request_failed", extra={"route": route})
                response = json_response({"title": "Internal server error", "status": 500}, 500)
            self.stats.record(route, response.status_code)
            if request.method in ("POST", "PATCH") and authenticated:
                # what the client wrote, byte for byte, so tests can check the bodies it sends
                body = (await request.body()).decode("utf-8", errors="replace")
                self.writes.append(
                    {"route": route, "path": request.url.path, "status": response.status_code, "body": body}
                )
            return response

        return run

    async def _guarded(self, request: Request, handler: Handler, authenticated: bool) -> Response:
        method, path = request.method, request.url.path
        wait = self.faults.retry_after()
        if wait is not None:
            raise Problem(
                429,
                {"title": "Too many requests", "detail": "rate limit exceeded", "status": 429},
                {"Retry-After": str(wait)},
            )
        if self.faults.latency_seconds > 0:
            await asyncio.sleep(self.faults.latency_seconds)
        error = self.faults.injected_error(method, path)
        if error is not None:
            titles = {500: "Internal server error", 503: "Service unavailable", 422: "Validation error"}
            raise Problem(
                error, {"title": titles.get(error, "Injected error"), "detail": "injected fault", "status": error}
            )
        if authenticated:
            await self._authenticate(request)
        response = await handler(request)
        if response.status_code < 500 and self.faults.lose_response(method, path):
            raise Problem(504, {"title": "Gateway timeout", "detail": "injected lost response", "status": 504})
        return response

    async def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized()
        token = token.strip()
        expires_at = self._access_tokens.get(token)
        if expires_at is None:
            stored = await self.store.find_token(token)
            if stored is None or stored.kind != "access":
                raise unauthorized()
            expires_at = self._access_tokens[token] = stored.expires_at
        if expires_at <= time.time():
            raise unauthorized()

    # -- auth --------------------------------------------------------------------------------------

    async def _tokens_response(self) -> Response:
        access, refresh = await self.store.issue_tokens(self.token_ttl_seconds, self.refresh_ttl_seconds)
        self._access_tokens[access.token] = access.expires_at
        return json_response(
            {
                "access_token": access.token,
                "token_type": "Bearer",
                "expires_in": str(int(self.token_ttl_seconds)),
                "refresh_token": refresh.token,
            }
        )

    async def login(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
        extra_fields(body, frozenset({"access_key_id", "secret_access_key"}), ["body"])
        if body.get("access_key_id") != self.access_key_id or body.get("secret_access_key") != self.secret_access_key:
            raise unauthorized("invalid access key")
        return await self._tokens_response()

    async def refresh(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
        extra_fields(body, frozenset({"refresh_token"}), ["body"])
        token = body.get("refresh_token")
        if not isinstance(token, str) or not await self.store.consume_refresh_token(token):
            raise unauthorized("refresh token invalid")
        return await self._tokens_response()

    # -- listings ----------------------------------------------------------------------------------

    def _paging(self, request: Request) -> tuple[int, int, Expression | None, str | None]:
        params = request.query_params
        values: dict[str, int] = {}
        for name, default in (("limit", DEFAULT_LIMIT), ("offset", 0)):
            raw = params.get(name)
            try:
                values[name] = default if raw is None or raw == "" else int(raw)
            except ValueError as exc:
                raise bad_request(["query", name], "value is not a valid integer", "type_error.integer") from exc
        if not 1 <= values["limit"] <= MAX_LIMIT:
            raise bad_request(["query", "limit"], f"limit must be between 1 and {MAX_LIMIT}")
        if values["offset"] < 0:
            raise bad_request(["query", "offset"], "offset must be >= 0")
        raw_query = params.get("query")
        query = None
        if raw_query is not None and raw_query.strip():
            try:
                query = parse_query(raw_query)
            except QuerySyntaxError as exc:
                raise bad_request(["query", "query"], str(exc), "value_error.query") from exc
        return values["limit"], values["offset"], query, params.get("embed")

    def _next_url(self, request: Request, path: str, limit: int, offset: int) -> str:
        params: dict[str, str] = {"limit": str(limit), "offset": str(offset + limit)}
        for name in ("query", "embed"):
            value = request.query_params.get(name)
            if value is not None:
                params[name] = value
        relative = f"{path}?{urlencode(params)}"
        style = self.next_style
        if style == "alternate":
            style = "absolute" if (offset // limit) % 2 == 1 else "relative"
        if style == "relative":
            return relative
        return str(request.base_url).rstrip("/") + relative

    def _envelope(
        self, request: Request, path: str, page: Page, limit: int, offset: int, embedded: dict[str, str]
    ) -> Response:
        next_url = self._next_url(request, path, limit, offset) if page.has_more else None
        embedded_text = ",".join(f"{dumps(k)}:{v}" for k, v in embedded.items())
        text = (
            f'{{"next":{dumps(next_url)},"count":{dumps(str(len(page.documents)))},"offset":{dumps(str(offset))},'
            f'"results":[{",".join(page.documents)}],"_embedded":{{{embedded_text}}}}}'
        )
        return text_json_response(text)

    async def list_portfolios(self, request: Request) -> Response:
        limit, offset, query, embed = self._paging(request)
        fields = [f.strip() for f in embed.split(",") if f.strip()] if embed else []
        for field in fields:
            if field != "owned_by_user_id":
                raise bad_request(["query", "embed"], f"field '{field}' cannot be embedded")
        page, owners = await self.store.list_portfolios(query, limit, offset)
        embedded = await self.store.users_text(owners) if fields else {}
        return self._envelope(request, "/portfolios/", page, limit, offset, embedded)

    # -- entities ----------------------------------------------------------------------------------

    async def get_portfolio(self, request: Request) -> Response:
        portfolio_id = request.path_params["portfolio_id"]
        text = await self.store.portfolio_text(portfolio_id)
        if text is None:
            raise not_found(f"portfolio {portfolio_id} not found")
        return text_json_response(text)

    async def patch_portfolio(self, request: Request) -> Response:
        portfolio_id = request.path_params["portfolio_id"]
        patch = validate_portfolio_patch(await _json_body(request))
        watch = self.events.watch(lambda document: apply_portfolio_patch(document, patch))
        status, outcome = await self.store.patch_portfolio(portfolio_id, watch)
        if status == 404:
            raise not_found(f"portfolio {portfolio_id} not found")
        watch.committed(status, outcome)  # divest, status or deletion changed: the events go to the bus
        return json_response(outcome, status)

    async def get_user(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        text = await self.store.user_text(user_id)
        if text is None:
            raise not_found(f"user {user_id} not found")
        return text_json_response(text)

    async def create_transaction(self, request: Request) -> Response:
        portfolio_id = request.path_params["portfolio_id"]
        body = validate_transaction(await _json_body(request))
        exists, currency = await self.store.portfolio_exists(portfolio_id)
        if not exists:
            raise not_found(f"portfolio {portfolio_id} not found")
        transaction = transaction_document(portfolio_id, currency, body)
        await self.store.insert_transaction(transaction)
        return json_response(transaction, 201)

    async def list_transactions(self, request: Request) -> Response:
        portfolio_id = request.path_params["portfolio_id"]
        limit, offset, query, _ = self._paging(request)
        exists, _currency = await self.store.portfolio_exists(portfolio_id)
        if not exists:
            raise not_found(f"portfolio {portfolio_id} not found")
        page = await self.store.list_transactions(portfolio_id, query, limit, offset)
        return self._envelope(request, f"/portfolios/{portfolio_id}/transactions/", page, limit, offset, {})

    async def post_event(self, request: Request, kind: str) -> Response:
        key = request.headers.get("idempotency-key", "").strip().strip('"')
        if not key:
            raise bad_request(["header", "Idempotency-Key"], "field required", "value_error.missing")
        data = validate_event(await _json_body(request))
        exists, _currency = await self.store.portfolio_exists(data["portfolio"])
        if not exists:
            raise unknown_portfolio()
        body_hash = hashlib.sha256(dumps({"kind": kind, **data}).encode()).hexdigest()
        response = {
            "id": new_id("E"),
            "type": kind,
            "idempotency_key": key,
            "data": data,
            "creation_datetime": now_iso(),
        }
        # a deposit is booked by InvestSuite with its event, in one transaction (batch/sandbox/deposits.py)
        booking = (lambda document: book_deposit(document, data, key)) if kind == "deposit" else None
        outcome, status, text = await self.store.record_event(key, body_hash, response, booking)
        if outcome == "conflict":
            raise conflict_at(
                ["header", "Idempotency-Key"],
                "Idempotency-Key was already used with a different request body",
                "conflict.idempotency_key_reused",
            )
        headers = {"Idempotent-Replayed": "true"} if outcome == "replayed" else None
        return text_json_response(text, status, headers)

    # -- admin -------------------------------------------------------------------------------------

    async def get_faults(self, request: Request) -> Response:
        return json_response(self.faults.settings.model_dump())

    async def put_faults(self, request: Request) -> Response:
        body = await _json_body(request)
        try:
            settings = FaultSettings.model_validate(body)
        except ValidationError as exc:
            detail = [{"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            return json_response({"title": "Bad request", "detail": detail, "status": 400}, 400)
        self.faults.configure(settings)
        return json_response(settings.model_dump())

    async def get_stats(self, request: Request) -> Response:
        return json_response(self.stats.snapshot())

    async def get_writes(self, request: Request) -> Response:
        """The recorded write requests, optionally only those whose route contains ``?route=``."""
        wanted = request.query_params.get("route")
        return json_response([w for w in self.writes if wanted is None or wanted in w["route"]])

    async def reset_stats(self, request: Request) -> Response:
        self.stats.reset()
        self.writes.clear()
        return json_response(self.stats.snapshot())

    async def expire_tokens(self, request: Request) -> Response:
        expired = await self.store.expire_all_tokens()
        self._access_tokens.clear()
        return json_response({"expired": expired})

    async def health(self, request: Request) -> Response:
        await self.store.ping()
        return json_response({"status": "ok"})

    async def unmatched(self, request: Request) -> Response:
        raise not_found(f"no route for {request.method} {request.url.path}")

    # -- wiring ------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        routes: list[Route] = [
            Route("/_sandbox/faults", self.get_faults, methods=["GET"]),
            Route("/_sandbox/faults", self.put_faults, methods=["PUT"]),
            Route("/_sandbox/stats", self.get_stats, methods=["GET"]),
            Route("/_sandbox/stats/reset", self.reset_stats, methods=["POST"]),
            Route("/_sandbox/writes", self.get_writes, methods=["GET"]),
            Route("/_sandbox/expire-tokens", self.expire_tokens, methods=["POST"]),
            Route("/_sandbox/health", self.health, methods=["GET"]),
            *admin_routes(self),
        ]

        def api(path: str, method: str, handler: Handler, *, authenticated: bool = True) -> None:
            """Register ``path`` with and without its trailing slash under one statistics name."""
            name = f"{method} {path}".replace("{portfolio_id}", "{id}").replace("{user_id}", "{id}")
            wrapped = self.endpoint(name, handler, authenticated=authenticated)
            bare = path.rstrip("/")
            for variant in (bare + "/", bare):
                routes.append(Route(variant, wrapped, methods=[method]))

        async def withdraw(request: Request) -> Response:
            return await self.post_event(request, "withdraw")

        async def deposit(request: Request) -> Response:
            return await self.post_event(request, "deposit")

        api("/auth/login/", "POST", self.login, authenticated=False)
        api("/auth/refresh-token/", "POST", self.refresh, authenticated=False)
        api("/portfolios/", "GET", self.list_portfolios)
        api("/portfolios/{portfolio_id}", "GET", self.get_portfolio)
        api("/portfolios/{portfolio_id}/", "PATCH", self.patch_portfolio)
        api("/portfolios/{portfolio_id}/transactions/", "POST", self.create_transaction)
        api("/portfolios/{portfolio_id}/transactions/", "GET", self.list_transactions)
        api("/users/{user_id}", "GET", self.get_user)
        api("/events/withdraw/", "POST", withdraw)
        api("/events/deposit/", "POST", deposit)
        all_methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        for method in all_methods:
            catch_all = self.endpoint(f"{method} (unmatched)", self.unmatched, authenticated=False)
            routes.append(Route("/{path:path}", catch_all, methods=[method]))
        return routes


def _migrate(dsn: str) -> None:
    engine = make_engine(dsn, pool_size=1, application_name="investsuite-sandbox-migrate")
    try:
        migrate(engine, "sandbox")
    finally:
        engine.dispose()


def create_app(
    dsn: str,
    *,
    access_key_id: str = DEFAULT_ACCESS_KEY_ID,
    secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY,
    token_ttl_seconds: float = 300.0,
    refresh_ttl_seconds: float = 3600.0,
    next_style: NextStyle = "alternate",
    pool_size: int = 10,
    faults: FaultSettings | None = None,
    migrate_on_start: bool = True,
    bus: str | None = None,
    bus_url: str | None = None,
) -> Starlette:
    """The sandbox ASGI application over the PostgreSQL database ``dsn`` (migrated on start); ``bus``
    (rabbitmq|mqtt|nats, default ``$INVESTSUITE_SANDBOX_BUS``) turns the event publishing on."""
    sandbox = Sandbox(
        dsn,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        token_ttl_seconds=token_ttl_seconds,
        refresh_ttl_seconds=refresh_ttl_seconds,
        next_style=next_style,
        pool_size=pool_size,
        faults=faults,
        migrate_on_start=migrate_on_start,
        events=EventPublisher.from_options(bus, bus_url),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sandbox.migrate_on_start:
            await asyncio.to_thread(_migrate, dsn)
        await sandbox.store.open()
        await sandbox.events.start()
        try:
            yield
        finally:
            await sandbox.events.stop()
            await sandbox.store.close()

    app = Starlette(routes=sandbox.routes(), lifespan=lifespan)
    app.state.sandbox = sandbox
    return app
