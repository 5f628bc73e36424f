"""The sandbox's HTTP API (starlette): strictly the InvestSuite calls the payout job makes.

Routes (a trailing slash is optional on each)::

    POST  /auth/login/                         access key -> tokens (expires_in is a string)
    POST  /auth/refresh-token/                 refresh token -> new tokens (refresh tokens rotate)
    GET   /portfolios/?query=&limit=&offset=&embed=owned_by_user_id
    GET   /portfolios/{id}                     PATCH /portfolios/{id}/
    GET   /users/{id}
    POST  /portfolios/{id}/transactions/       GET /portfolios/{id}/transactions/?query=
    POST  /events/withdraw/                    POST /events/deposit/     (Idempotency-Key)
    GET|PUT /_sandbox/faults, GET /_sandbox/stats, POST /_sandbox/stats/reset,
    POST  /_sandbox/expire-tokens, GET /_sandbox/health              (admin: no auth, no faults)

Choices where the reference is silent (documented in the final report and tested):

- listing ``limit`` above 100 or below 1 -> 400; ``count`` is the number of results on this page (a
  string), ``offset`` the page's offset (a string); ``next`` is null on the last page.
- PATCH changing a write-once field (``money_type``, ``config.manager``; a ``config`` without
  ``manager`` counts as a change) -> 409; read-only fields -> 400; PATCH on a deleted portfolio -> 409.
- events: a missing Idempotency-Key -> 400; an unknown ``data.portfolio`` -> 422.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batch.adapters.migrations import migrate
from batch.adapters.postgres import make_engine
from batch.codec import JsonInputError
from batch.sandbox.faults import FaultInjector, FaultSettings, RequestStats
from batch.sandbox.query import Expression, QuerySyntaxError, parse_query
from batch.sandbox.store import Document, Page, SandboxStore, dumps, loads, new_id, now_iso

logger = logging.getLogger(__name__)

NextStyle = Literal["relative", "absolute", "alternate"]
Handler = Callable[[Request], Awaitable[Response]]

DEFAULT_ACCESS_KEY_ID = "demo-access-key"
DEFAULT_SECRET_ACCESS_KEY = "demo-secret-key"  # noqa: S105 - the sandbox's documented demo key
MAX_LIMIT = 100
DEFAULT_LIMIT = 20

PORTFOLIO_ID_RE = re.compile(r"^P[0-9A-HJKMNP-TV-Z]{26}$")
USER_ID_RE = re.compile(r"^U[0-9A-HJKMNP-TV-Z]{26}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
INSTRUMENT_RE = re.compile(r"^(\$[A-Z]{3}|[A-Z]{2}[A-Z0-9]{9}[0-9])$")
POSITIVE_DECIMAL_RE = re.compile(r"^\d+(\.\d+)?$")

MONEY_TYPES = frozenset({"REAL_MONEY", "PAPER_MONEY"})
MANAGERS = frozenset({"USER_MANAGED", "ROBO_ADVISOR_ADVISORY", "ROBO_ADVISOR_DISCRETIONARY"})
PORTFOLIO_STATUSES = frozenset({"WAITING_FOR_ACCOUNT", "WAITING_FOR_POLICY", "WAITING_FOR_FUNDS", "ACTIVE", "INACTIVE"})
MOVEMENT_TYPES = frozenset(
    {
        "CASH_DEPOSIT",
        "CASH_DIVIDEND",
        "CASH_WITHDRAWAL",
        "COUPON",
        "BUY",
        "SELL",
        "CORPORATE_ACTION_IN",
        "CORPORATE_ACTION_OUT",
        "REVERSE_STOCK_SPLIT",
        "STOCK_DIVIDEND",
        "STOCK_SPLIT",
        "TRANSFER_IN",
        "TRANSFER_OUT",
        "CUSTODY_FEE",
        "INSTRUMENT_ENTRY_EXIT_FEE",
        "MANAGEMENT_FEE",
        "OTHER_FEE",
        "OTHER_TAX",
        "SERVICE_ENTRY_EXIT_FEE",
        "TRANSACTION_FEE",
        "WITHHOLDING_TAX",
    }
)
MOVEMENT_STATUSES = frozenset(
    {"PLANNED", "PENDING", "PLACED", "EXECUTED", "SETTLED", "CANCELLED", "NOT_EXECUTED", "EXPIRED"}
)
TRADE_TYPES = frozenset({"CANCEL", "REBOOK", "INSTRUMENT_CHANGE", "CORRECTION"})
MOVEMENT_FIELDS = frozenset(
    {
        "type",
        "status",
        "datetime",
        "instrument_id",
        "quantity",
        "unit_price",
        "unit_price_currency",
        "external_id",
        "reference_external_id",
        "trade_type",
        "description",
        "reference_instrument_id",
    }
)
REQUIRED_MOVEMENT_FIELDS = ("type", "status", "datetime", "instrument_id", "quantity")
TRANSACTION_FIELDS = frozenset({"external_id", "movements", "optimization_id", "order_type", "description"})

PATCHABLE_PORTFOLIO_FIELDS = frozenset(
    {
        "name",
        "external_id",
        "owned_by_user_id",
        "owned_by_user_ids",
        "readable_by",
        "modifiable_by",
        "base_currency",
        "money_type",
        "config",
        "brokerage_account",
        "portfolio",
        "funded_since",
        "snapshot_datetime",
        "start_datetime",
        "archived",
        "status",
    }
)
READ_ONLY_PORTFOLIO_FIELDS = frozenset(
    {"id", "version", "version_datetime", "version_authored_by_user_id", "creation_datetime", "deleted", "_embedded"}
)
CONFIG_FIELDS = frozenset({"manager", "manager_version", "manager_settings"})

_CASH_MOVEMENTS = frozenset({"CASH_DEPOSIT", "CASH_WITHDRAWAL"})
_ORDER_MOVEMENTS = frozenset({"BUY", "SELL"})


class Problem(Exception):
    """An error answer: HTTP status and the InvestSuite-shaped body."""

    def __init__(self, status: int, body: Document, headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("title", ""))
        self.status = status
        self.body = body
        self.headers = headers


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=headers)


def text_json_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status_code=status, media_type="application/json", headers=headers)


def bad_request(loc: list[str], msg: str, kind: str = "value_error") -> Problem:
    return Problem(400, {"title": "Bad request", "detail": [{"loc": loc, "msg": msg, "type": kind}], "status": 400})


def not_found(detail: str) -> Problem:
    return Problem(404, {"title": "Resource not found", "detail": detail, "status": 404})


def conflict(detail: str) -> Problem:
    return Problem(409, {"title": "Business logic error", "detail": detail, "status": 409})


def unauthorized(description: str = "JWT invalid") -> Problem:
    return Problem(
        401,
        {"title": "Unauthorized", "description": description, "request_id": str(uuid.uuid4()), "timestamp": now_iso()},
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return loads(raw)
    except JsonInputError as exc:
        raise bad_request(["body"], str(exc), "value_error.jsondecode") from exc


def _extra_fields(body: Document, allowed: frozenset[str], loc: list[str]) -> None:
    for field in body:
        if field not in allowed:
            raise bad_request([*loc, field], "extra fields not permitted", "value_error.extra")


# -- PATCH /portfolios/{id}/ ------------------------------------------------------------------------


def _field_error(name: str, value: Any) -> str | None:
    """Why a PATCH value is not acceptable for a top-level portfolio field, or None."""
    if name == "name":
        return None if isinstance(value, str) and 0 < len(value) <= 128 else "must be a string of 1 to 128 characters"
    if name == "external_id":
        return None if value is None or isinstance(value, str) else "must be a string or null"
    if name == "owned_by_user_id":
        return None if isinstance(value, str) and USER_ID_RE.match(value) else "must be a user id"
    if name in ("owned_by_user_ids", "readable_by", "modifiable_by"):
        ok = isinstance(value, list) and all(isinstance(v, str) and USER_ID_RE.match(v) for v in value)
        return None if ok else "must be a list of user ids"
    if name == "base_currency":
        return None if isinstance(value, str) and CURRENCY_RE.match(value) else "must be an ISO 4217 code"
    if name == "money_type":
        return None if value in MONEY_TYPES else f"must be one of {sorted(MONEY_TYPES)}"
    if name == "config":
        if not isinstance(value, dict):
            return "must be an object"
        extra = sorted(set(value) - CONFIG_FIELDS)
        if extra:
            return f"extra fields not permitted in config: {extra}"
        if "manager" in value and value["manager"] not in MANAGERS:
            return f"config.manager must be one of {sorted(MANAGERS)}"
        version = value.get("manager_version", 1)
        if not (isinstance(version, int) and not isinstance(version, bool) and version >= 1):
            return "config.manager_version must be an integer >= 1"
        if "manager_settings" in value and not isinstance(value["manager_settings"], dict):
            return "config.manager_settings must be an object"
        return None
    if name == "brokerage_account":
        return None if value is None or isinstance(value, dict) else "must be an object or null"
    if name == "portfolio":
        if not isinstance(value, dict):
            return "must be an object mapping instrument ids to quantities"
        for key, quantity in value.items():
            if not INSTRUMENT_RE.match(key):
                return f"{key!r} is neither an ISIN nor $ + an ISO 4217 code"
            if not _is_number(quantity):
                return f"the quantity of {key} must be a JSON number"
        return None
    if name in ("funded_since", "snapshot_datetime", "start_datetime"):
        return None if value is None or _is_datetime(value) else "must be an ISO 8601 date-time with offset or null"
    if name == "archived":
        return None if isinstance(value, bool) else "must be a boolean"
    if name == "status":
        return None if value in PORTFOLIO_STATUSES else f"must be one of {sorted(PORTFOLIO_STATUSES)}"
    return "unknown field"  # pragma: no cover - callers check the field list first


def validate_portfolio_patch(patch: Any) -> Document:
    """The PATCH body if acceptable; raises Problem(400) otherwise."""
    if not isinstance(patch, dict):
        raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
    for field, value in patch.items():
        if field in READ_ONLY_PORTFOLIO_FIELDS:
            raise bad_request(["body", field], "field is read-only", "value_error.readonly")
        if field not in PATCHABLE_PORTFOLIO_FIELDS:
            raise bad_request(["body", field], "extra fields not permitted", "value_error.extra")
        error = _field_error(field, value)
        if error is not None:
            raise bad_request(["body", field], error)
    return patch


def apply_portfolio_patch(document: Document, patch: Document) -> tuple[int, Document]:
    """Apply a validated PATCH: top-level fields replace the stored ones whole; version + 1."""
    if document.get("deleted"):
        return 409, conflict(f"portfolio {document.get('id')} is deleted").body
    if "money_type" in patch and patch["money_type"] != document.get("money_type"):
        return 409, conflict("money_type is write-once and cannot be changed").body
    if "config" in patch:
        old_manager = (document.get("config") or {}).get("manager")
        if patch["config"].get("manager") != old_manager:
            return 409, conflict("config.manager is write-once and cannot be changed (or removed)").body
    updated = dict(document)
    updated.update(patch)
    updated["version"] = int(document.get("version", 1)) + 1
    updated["version_datetime"] = now_iso()
    return 200, updated


# -- POST /portfolios/{id}/transactions/ ------------------------------------------------------------


def validate_transaction(body: Any) -> Document:
    """The transaction request if acceptable; raises Problem(400) otherwise."""
    if not isinstance(body, dict):
        raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
    _extra_fields(body, TRANSACTION_FIELDS, ["body"])
    external_id = body.get("external_id")
    if external_id is not None and not (isinstance(external_id, str) and len(external_id) <= 64):
        raise bad_request(["body", "external_id"], "must be a string of at most 64 characters")
    if body.get("order_type") not in (None, "MARKET", "LIMIT"):
        raise bad_request(["body", "order_type"], "must be MARKET or LIMIT")
    movements = body.get("movements")
    if not isinstance(movements, list) or not movements:
        raise bad_request(["body", "movements"], "at least one movement is required")
    for index, movement in enumerate(movements):
        loc = ["body", "movements", str(index)]
        if not isinstance(movement, dict):
            raise bad_request(loc, "a movement must be an object", "type_error.dict")
        _extra_fields(movement, MOVEMENT_FIELDS, loc)
        for field in REQUIRED_MOVEMENT_FIELDS:
            if field not in movement:
                raise bad_request([*loc, field], "field required", "value_error.missing")
        if movement["type"] not in MOVEMENT_TYPES:
            raise bad_request([*loc, "type"], "not a known movement type", "type_error.enum")
        if movement["status"] not in MOVEMENT_STATUSES:
            raise bad_request([*loc, "status"], "not a known movement status", "type_error.enum")
        if not _is_datetime(movement["datetime"]):
            raise bad_request([*loc, "datetime"], "must be an ISO 8601 date-time with offset")
        if not (isinstance(movement["instrument_id"], str) and INSTRUMENT_RE.match(movement["instrument_id"])):
            raise bad_request([*loc, "instrument_id"], "must be $ + an ISO 4217 code or an ISIN")
        if not _is_number(movement["quantity"]):
            raise bad_request([*loc, "quantity"], "must be a number", "type_error.number")
        if "unit_price" in movement and not _is_number(movement["unit_price"]):
            raise bad_request([*loc, "unit_price"], "must be a number", "type_error.number")
        if movement.get("trade_type") not in (None, *TRADE_TYPES):
            raise bad_request([*loc, "trade_type"], "not a known trade type", "type_error.enum")
    return body


def transaction_document(portfolio_id: str, currency: str | None, body: Document) -> Document:
    """The stored transaction: type from its movements, status = the latest movement's status."""
    movements: list[Document] = body["movements"]
    latest = max(enumerate(movements), key=lambda item: (datetime.fromisoformat(item[1]["datetime"]), item[0]))
    kinds = {m["type"] for m in movements}
    if kinds <= _CASH_MOVEMENTS:
        kind = "CASH_TRANSFER"
    elif kinds & _ORDER_MOVEMENTS:
        kind = "ORDER"
    elif kinds & {"TRANSFER_IN", "TRANSFER_OUT"}:
        kind = "SECURITY_TRANSFER"
    elif kinds & {"CORPORATE_ACTION_IN", "CORPORATE_ACTION_OUT", "STOCK_SPLIT", "REVERSE_STOCK_SPLIT"}:
        kind = "CORPORATE_ACTION"
    else:
        kind = "ADMINISTRATIVE"
    stamp = now_iso()
    return {
        "id": new_id("T"),
        "portfolio_id": portfolio_id,
        "portfolio_currency": currency,
        "external_id": body.get("external_id"),
        "optimization_id": body.get("optimization_id"),
        "order_type": body.get("order_type"),
        "description": body.get("description"),
        "type": kind,
        "status": latest[1]["status"],
        "movements": movements,
        "creation_datetime": stamp,
        "version": 1,
        "version_datetime": stamp,
        "deleted": False,
    }


# -- POST /events/{kind}/ ---------------------------------------------------------------------------


def validate_event(body: Any) -> dict[str, str]:
    """The event's ``data`` if acceptable; raises Problem(400) otherwise."""
    if not isinstance(body, dict):
        raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
    _extra_fields(body, frozenset({"data"}), ["body"])
    data = body.get("data")
    if not isinstance(data, dict):
        raise bad_request(["body", "data"], "field required", "value_error.missing")
    _extra_fields(data, frozenset({"amount", "currency", "portfolio"}), ["body", "data"])
    for field in ("amount", "currency", "portfolio"):
        if field not in data:
            raise bad_request(["body", "data", field], "field required", "value_error.missing")
    amount = data["amount"]
    if not isinstance(amount, str) or not POSITIVE_DECIMAL_RE.match(amount):
        raise bad_request(["body", "data", "amount"], "must be a string holding a positive decimal number")
    try:
        positive = Decimal(amount) > 0
    except InvalidOperation:  # pragma: no cover - the regex already checked
        positive = False
    if not positive:
        raise bad_request(["body", "data", "amount"], "must be greater than zero")
    currency = data["currency"]
    if not isinstance(currency, str) or not CURRENCY_RE.match(currency):
        raise bad_request(["body", "data", "currency"], "must be an ISO 4217 code without '$'")
    portfolio = data["portfolio"]
    if not isinstance(portfolio, str) or not PORTFOLIO_ID_RE.match(portfolio):
        raise bad_request(["body", "data", "portfolio"], "must be a portfolio id")
    return {"amount": amount, "currency": currency, "portfolio": portfolio}


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
        self.migrate_on_start = migrate_on_start
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
            title = "Internal server error" if error == 500 else "Service unavailable"
            raise Problem(error, {"title": title, "detail": "injected fault", "status": error})
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
        _extra_fields(body, frozenset({"access_key_id", "secret_access_key"}), ["body"])
        if body.get("access_key_id") != self.access_key_id or body.get("secret_access_key") != self.secret_access_key:
            raise unauthorized("invalid access key")
        return await self._tokens_response()

    async def refresh(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise bad_request(["body"], "the body must be a JSON object", "type_error.dict")
        _extra_fields(body, frozenset({"refresh_token"}), ["body"])
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
        text = "".join(
            (
                '{"next":',
                dumps(next_url),
                ',"count":',
                dumps(str(len(page.documents))),
                ',"offset":',
                dumps(str(offset)),
                ',"results":[',
                ",".join(page.documents),
                "]",
                ',"_embedded":{',
                ",".join(f"{dumps(k)}:{v}" for k, v in embedded.items()),
                "}}",
            )
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
        status, outcome = await self.store.patch_portfolio(
            portfolio_id, lambda document: apply_portfolio_patch(document, patch)
        )
        if status == 404:
            raise not_found(f"portfolio {portfolio_id} not found")
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
            raise Problem(
                422,
                {
                    "title": "Validation error",
                    "detail": [{"loc": ["body", "data", "portfolio"], "msg": "portfolio not found"}],
                    "status": 422,
                },
            )
        body_hash = hashlib.sha256(dumps({"kind": kind, **data}).encode()).hexdigest()
        response = {
            "id": new_id("E"),
            "type": kind,
            "idempotency_key": key,
            "data": data,
            "creation_datetime": now_iso(),
        }
        outcome, status, text = await self.store.record_event(key, body_hash, response)
        if outcome == "conflict":
            raise conflict("Idempotency-Key was already used with a different request body")
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

    async def reset_stats(self, request: Request) -> Response:
        self.stats.reset()
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
            Route("/_sandbox/expire-tokens", self.expire_tokens, methods=["POST"]),
            Route("/_sandbox/health", self.health, methods=["GET"]),
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
) -> Starlette:
    """The sandbox ASGI application over the PostgreSQL database ``dsn`` (migrated on start)."""
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
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sandbox.migrate_on_start:
            await asyncio.to_thread(_migrate, dsn)
        await sandbox.store.open()
        try:
            yield
        finally:
            await sandbox.store.close()

    app = Starlette(routes=sandbox.routes(), lifespan=lifespan)
    app.state.sandbox = sandbox
    return app
