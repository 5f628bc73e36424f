"""The sandbox's state in PostgreSQL, the JSON codec that keeps amounts exact, and InvestSuite ids.

Documents are parsed with ``Decimal`` for every JSON number with a fraction or exponent and written
back as JSON numbers with the same digits (never through float). PostgreSQL keeps the documents as
``json`` (the exact text), so ``10.005`` stays ``10.005`` and ``1E+100`` stays ``1E+100``; queries run
on a generated ``jsonb`` copy whose numbers are ``numeric``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from batch import codec
from batch.sandbox.query import Expression, compile_sql

JsonValue = Any
Document = dict[str, Any]

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_PATTERN = r"^[A-Z][0-9A-HJKMNP-TV-Z]{26}$"


def loads(text: str | bytes) -> JsonValue:
    """Parse JSON keeping every fractional number as an exact Decimal (``batch.codec.loads``)."""
    return codec.loads(text)


def dumps(value: JsonValue) -> str:
    """Compact JSON; Decimals keep their exact digits (``batch.codec.dumps`` with ``exact``)."""
    return codec.dumps(value, exact=True)


def new_id(type_letter: str, *, timestamp_ms: int | None = None, randomness: bytes | None = None) -> str:
    """An InvestSuite id: the type letter and a 26-character Crockford base32 ULID (time + random)."""
    millis = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    random_part = os.urandom(10) if randomness is None else randomness
    number = (millis << 80) | int.from_bytes(random_part[:10], "big")
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD[number & 31])
        number >>= 5
    return type_letter + "".join(reversed(chars))


def now_iso() -> str:
    """The current time as InvestSuite writes it: ISO 8601 with microseconds and +00:00."""
    return datetime.now(UTC).isoformat()


#: a deposit's booking: the locked portfolio (None when unknown) -> (portfolio after, transaction); may raise
Booking = Callable[[Document | None], tuple[Document, Document]]


def _replay(existing: Any, body_hash: str) -> tuple[str, int, str]:
    """A known key: the stored response for the same body, a conflict for another."""
    if str(existing[0]).strip() != body_hash:
        return "conflict", 409, ""
    return "replayed", int(existing[1]), str(existing[2])


@dataclass(frozen=True)
class Page:
    """One page of a listing: the documents as JSON text (as PostgreSQL wrote them) and whether more follow."""

    documents: list[str]
    has_more: bool


@dataclass(frozen=True)
class Token:
    token: str
    kind: str
    expires_at: float  # epoch seconds


class SandboxStore:
    """Async access to the ``sandbox`` schema through a psycopg connection pool."""

    def __init__(self, dsn: str, *, pool_size: int = 10) -> None:
        if dsn.startswith("postgresql+psycopg://"):
            dsn = "postgresql://" + dsn[len("postgresql+psycopg://") :]
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=min(2, pool_size),
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True, "application_name": "investsuite-sandbox"},
        )

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        async with self._pool.connection() as conn:
            yield conn

    # -- tokens ---------------------------------------------------------------------------------

    async def issue_tokens(self, access_ttl: float, refresh_ttl: float) -> tuple[Token, Token]:
        now = time.time()
        access = Token("at-" + secrets.token_urlsafe(24), "access", now + access_ttl)
        refresh = Token("rt-" + secrets.token_urlsafe(24), "refresh", now + refresh_ttl)
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO sandbox.tokens (token, kind, expires_at) VALUES "
                "(%s, %s, to_timestamp(%s)), (%s, %s, to_timestamp(%s))",
                [access.token, access.kind, access.expires_at, refresh.token, refresh.kind, refresh.expires_at],
            )
        return access, refresh

    async def find_token(self, token: str) -> Token | None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT kind, extract(epoch FROM expires_at)::float8 FROM sandbox.tokens WHERE token = %s",
                [token],
            )
            row = await cursor.fetchone()
        return None if row is None else Token(token, row[0], row[1])

    async def consume_refresh_token(self, token: str) -> bool:
        """Delete a valid refresh token (refresh tokens rotate); False when unknown or expired."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM sandbox.tokens WHERE token = %s AND kind = 'refresh' AND expires_at > now() "
                "RETURNING token",
                [token],
            )
            return await cursor.fetchone() is not None

    async def expire_all_tokens(self) -> int:
        async with self._connection() as conn:
            cursor = await conn.execute("UPDATE sandbox.tokens SET expires_at = now() WHERE expires_at > now()")
            return cursor.rowcount

    # -- portfolios and users -------------------------------------------------------------------

    async def portfolio_text(self, portfolio_id: str) -> str | None:
        async with self._connection() as conn:
            cursor = await conn.execute("SELECT doc::text FROM sandbox.portfolios WHERE id = %s", [portfolio_id])
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def portfolio_exists(self, portfolio_id: str) -> tuple[bool, str | None]:
        """Whether the portfolio exists, and its base currency."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT doc ->> 'base_currency' FROM sandbox.portfolios WHERE id = %s", [portfolio_id]
            )
            row = await cursor.fetchone()
        return (False, None) if row is None else (True, row[0])

    async def user_text(self, user_id: str) -> str | None:
        async with self._connection() as conn:
            cursor = await conn.execute("SELECT doc::text FROM sandbox.users WHERE id = %s", [user_id])
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def users_text(self, user_ids: list[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        async with self._connection() as conn:
            cursor = await conn.execute("SELECT id, doc::text FROM sandbox.users WHERE id = ANY(%s)", [user_ids])
            rows = await cursor.fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    async def list_portfolios(self, query: Expression | None, limit: int, offset: int) -> tuple[Page, list[str]]:
        """A page of portfolios ordered by id, and the owners' user ids on that page."""
        where, params = compile_sql(query) if query is not None else ("true", [])
        # Page the ids first (an index-only scan for the pending query), then read only those documents.
        sql = (
            f"WITH page AS (SELECT id FROM sandbox.portfolios WHERE {where} ORDER BY id LIMIT %s OFFSET %s) "
            "SELECT p.doc::text, p.search_doc ->> 'owned_by_user_id' "
            "FROM page JOIN sandbox.portfolios p USING (id) ORDER BY p.id"
        )
        async with self._connection() as conn:
            cursor = await conn.execute(sql, [*params, limit + 1, offset])
            rows = await cursor.fetchall()
        owners = sorted({str(r[1]) for r in rows[:limit] if r[1]})
        return Page([str(r[0]) for r in rows[:limit]], len(rows) > limit), owners

    async def patch_portfolio(self, portfolio_id: str, apply: Any) -> tuple[int, Document | str]:
        """Lock the portfolio, let ``apply(doc) -> (status, new_doc_or_problem)`` change it, store it.

        Returns the status and either the stored document or the problem ``apply`` reported.
        """
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT doc::text FROM sandbox.portfolios WHERE id = %s FOR UPDATE", [portfolio_id]
            )
            row = await cursor.fetchone()
            if row is None:
                return 404, "portfolio not found"
            status, outcome = apply(loads(row[0]))
            if status != 200 or not isinstance(outcome, dict):
                return status, outcome
            await conn.execute(
                "UPDATE sandbox.portfolios SET doc = %s::json, version = %s WHERE id = %s",
                [dumps(outcome), outcome["version"], portfolio_id],
            )
            return 200, outcome

    async def insert_portfolio(self, portfolio: Document, user: Document) -> None:
        """A new portfolio and its owner (the admin's "create", as InvestSuite's app would)."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("INSERT INTO sandbox.users (id, doc) VALUES (%s, %s::json)", [user["id"], dumps(user)])
            await conn.execute(
                "INSERT INTO sandbox.portfolios (id, doc) VALUES (%s, %s::json)", [portfolio["id"], dumps(portfolio)]
            )

    # -- transactions ---------------------------------------------------------------------------

    async def insert_transaction(self, transaction: Document) -> None:
        async with self._connection() as conn:
            await self._insert_transaction(conn, transaction)

    @staticmethod
    async def _insert_transaction(conn: AsyncConnection[Any], transaction: Document) -> None:
        await conn.execute(
            "INSERT INTO sandbox.transactions (id, portfolio_id, external_id, doc) VALUES (%s, %s, %s, %s::json)",
            [transaction["id"], transaction["portfolio_id"], transaction.get("external_id"), dumps(transaction)],
        )

    async def list_transactions(self, portfolio_id: str, query: Expression | None, limit: int, offset: int) -> Page:
        where, params = compile_sql(query) if query is not None else ("true", [])
        sql = (
            f"SELECT doc::text FROM sandbox.transactions WHERE portfolio_id = %s AND {where} "
            "ORDER BY id LIMIT %s OFFSET %s"
        )
        async with self._connection() as conn:
            cursor = await conn.execute(sql, [portfolio_id, *params, limit + 1, offset])
            rows = await cursor.fetchall()
        return Page([str(r[0]) for r in rows[:limit]], len(rows) > limit)

    # -- events ---------------------------------------------------------------------------------

    async def record_event(
        self, idempotency_key: str, body_hash: str, response: Document, book: Booking | None = None
    ) -> tuple[str, int, str]:
        """Store the event's response under its key unless the key is known.

        With ``book`` (a deposit, ``batch.sandbox.deposits``) the event and its effects are one transaction:
        lock the portfolio, answer a known key, else ``book(document)`` -> (portfolio, transaction), store all.
        Returns ("created" | "replayed" | "conflict", status, response JSON text).
        """
        if book is not None:
            return await self._record_booked_event(idempotency_key, body_hash, response, book)
        async with self._connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO sandbox.events (idempotency_key, body_hash, status, response) "
                "VALUES (%s, %s, 201, %s::json) ON CONFLICT (idempotency_key) DO NOTHING "
                "RETURNING response::text",
                [idempotency_key, body_hash, dumps(response)],
            )
            row = await cursor.fetchone()
            if row is not None:
                return "created", 201, str(row[0])
            cursor = await conn.execute(
                "SELECT body_hash, status, response::text FROM sandbox.events WHERE idempotency_key = %s",
                [idempotency_key],
            )
            existing = await cursor.fetchone()
        if existing is None:  # pragma: no cover - a key is never deleted
            raise RuntimeError("idempotency key vanished")
        return _replay(existing, body_hash)

    async def _record_booked_event(
        self, idempotency_key: str, body_hash: str, response: Document, book: Booking
    ) -> tuple[str, int, str]:
        portfolio_id = response["data"]["portfolio"]
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT doc::text FROM sandbox.portfolios WHERE id = %s FOR UPDATE", [portfolio_id]
            )
            row = await cursor.fetchone()
            find = "SELECT body_hash, status, response::text FROM sandbox.events WHERE idempotency_key = %s"
            existing = await (await conn.execute(find, [idempotency_key])).fetchone()
            if existing is not None:
                return _replay(existing, body_hash)
            portfolio, transaction = book(None if row is None else loads(row[0]))  # a Problem rolls back
            cursor = await conn.execute(
                "INSERT INTO sandbox.events (idempotency_key, body_hash, status, response) "
                "VALUES (%s, %s, 201, %s::json) ON CONFLICT (idempotency_key) DO NOTHING "
                "RETURNING response::text",
                [idempotency_key, body_hash, dumps(response)],
            )
            created = await cursor.fetchone()
            if created is None:  # the same key, committed meanwhile for another portfolio
                existing = await (await conn.execute(find, [idempotency_key])).fetchone()
                assert existing is not None  # a key is never deleted
                return _replay(existing, body_hash)
            await self._insert_transaction(conn, transaction)
            await conn.execute(
                "UPDATE sandbox.portfolios SET doc = %s::json, version = %s WHERE id = %s",
                [dumps(portfolio), portfolio["version"], portfolio_id],
            )
            return "created", 201, str(created[0])

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.execute("SELECT 1")
