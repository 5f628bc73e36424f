"""Reading InvestSuite's answers: JSON bodies, listing envelopes, ``next`` links and validated models.

Pure helpers of ``InvestSuiteClient``: each turns a decoded document into the models of
``investsuite_models`` or raises ``PayloadError`` naming what was wrong. A malformed portfolio in a page
is kept as a ``MalformedPortfolio`` (and logged), never dropped, so the planner can hold it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import structlog
from pydantic import ValidationError

from batch.adapters.investsuite_models import (
    MalformedPortfolio,
    PortfolioPage,
    RemotePortfolio,
    RemoteTransaction,
    RemoteUser,
)
from batch.codec import loads as loads_json
from batch.errors import PayloadError

log = structlog.get_logger("batch.adapters.investsuite")

_M = TypeVar("_M", RemotePortfolio, RemoteUser, RemoteTransaction)


def decode(response: httpx.Response, route: str, *, allow_empty: bool = False) -> Any:
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


def validate(model: type[_M], document: Any, what: str) -> _M:
    """``document`` as ``model``; PayloadError naming each invalid field."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise PayloadError(f"{what}: {validation_summary(exc)}") from exc


def validation_summary(exc: ValidationError) -> str:
    """``field.path: message; …`` without the input (it may hold personal data)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)
    )


def segment(identifier: str) -> str:
    """An id as one URL path segment (never lets an id change the route)."""
    if not identifier:
        raise ValueError("empty identifier")
    return quote(identifier, safe="")


def in_queries(field: str, values: Sequence[str], per_query: int) -> Iterator[tuple[frozenset[str], str]]:
    """``field in ['a', 'b', ...]`` for the distinct ``values``, ``per_query`` at a time, with the values each asks.

    The query language has no escape: a value with a single quote (or an empty one) is refused (ValueError).
    """
    wanted = sorted(set(values))
    if any("'" in value or not value for value in wanted):
        raise ValueError(f"a {field} must be non-empty and must not contain a single quote (query language)")
    for start in range(0, len(wanted), per_query):
        chunk = wanted[start : start + per_query]
        yield frozenset(chunk), f"{field} in [" + ", ".join(f"'{value}'" for value in chunk) + "]"


def resolve_next(base_url: httpx.URL, next_url: str) -> httpx.URL:
    """Resolve ``next`` (relative or absolute); refuse another origin (it would get our token)."""
    try:
        resolved = base_url.join(next_url)
    except httpx.InvalidURL as exc:
        raise PayloadError("'next' is not a valid URL") from exc
    if (resolved.scheme, resolved.host, resolved.port) != (base_url.scheme, base_url.host, base_url.port):
        raise PayloadError(f"'next' points to another origin: {resolved.scheme}://{resolved.host}")
    return resolved


def portfolio_page(document: Any, page_number: int) -> PortfolioPage:
    """One page of ``GET /portfolios/``: its portfolios (malformed ones kept), embedded owners and ``next``."""
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
            error = validation_summary(exc)
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
            log.warning("investsuite.malformed_user", user_id=str(user_id), error=validation_summary(exc))
    return PortfolioPage(
        items=items,
        users=users,
        next_url=next_url or None,
        page_number=page_number,
        count=_opt_str(document.get("count")),
        offset=_opt_str(document.get("offset")),
    )


def transaction_rows(document: Any) -> tuple[list[Any], str | None]:
    """The rows and ``next`` of a transaction listing: an envelope, a bare list, or one bare object."""
    if isinstance(document, dict) and "results" in document:
        rows, next_url = document["results"], document.get("next")
        if not isinstance(rows, list) or not (next_url is None or isinstance(next_url, str)):
            raise PayloadError("transaction listing: malformed envelope")
        return rows, next_url or None
    if isinstance(document, list):
        return document, None
    if isinstance(document, dict) and "id" in document:
        return [document], None  # the docs show a bare object for a by-external-id query
    raise PayloadError("transaction listing: missing 'results'")


def unambiguous(matches: dict[str, list[RemotePortfolio]]) -> dict[str, RemotePortfolio]:
    """One portfolio per external id; an id several live portfolios carry is left out and logged."""
    found: dict[str, RemotePortfolio] = {}
    for external_id, portfolios in matches.items():
        live = [p for p in portfolios if not p.deleted] if len(portfolios) > 1 else portfolios
        if len(live) == 1:
            found[external_id] = live[0]
        else:
            ids = [p.id for p in portfolios]
            log.warning("investsuite.external_id_ambiguous", external_id=external_id, portfolio_ids=ids)
    return found


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
