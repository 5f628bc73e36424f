"""A plain load generator for the sandbox: the payout call mix over raw HTTP/1.1 keep-alive sockets.

It measures the sandbox, not itself: asyncio streams, one persistent connection per virtual user,
hand-written request bytes, ``json`` only where a body must be read (the GET feeding the PATCH).
Each virtual user repeats the payout call mix of the job against seeded portfolios::

    GET   /portfolios/{id}
    POST  /portfolios/{id}/transactions/     (a fresh external_id)
    PATCH /portfolios/{id}/                  (config + holdings as read, i.e. an idempotent rewrite)
    POST  /events/withdraw/                  (a fresh Idempotency-Key)

plus, optionally, one listing page (``GET /portfolios/?query=...&limit=100``) per ``listing_every``
payouts, like the job's planner.

    python bench/loadgen.py --base-url http://127.0.0.1:8765 --portfolios P1,P2,... --seconds 20
    python bench/loadgen.py --base-url ... --sandbox-dsn postgresql://.../sandbox --seconds 20

Prints requests/s (all, and by route), payouts/s and latency percentiles as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_ACCESS_KEY_ID = "demo-access-key"
DEFAULT_SECRET_ACCESS_KEY = "demo-secret-key"
PENDING_QUERY = "config.manager_settings.divest_amount neq 0 and config.manager_settings.divest_amount neq null"


class HttpError(Exception):
    pass


class Connection:
    """One HTTP/1.1 keep-alive connection; responses must carry Content-Length (uvicorn/starlette do)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def request(
        self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}", "Accept: application/json"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.writer.write(head + body if body is not None else head)
        status_line = await self.reader.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        close = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            field_name, _, field_value = line.partition(b":")
            lname = field_name.strip().lower()
            if lname == b"content-length":
                length = int(field_value.strip())
            elif lname == b"connection" and field_value.strip().lower() == b"close":
                close = True
            elif lname == b"transfer-encoding":
                raise HttpError("chunked responses are not supported by this load generator")
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
            self.writer = None
        return status, payload


@dataclass
class Result:
    requests: int = 0
    payouts: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def login(host: str, port: int, key_id: str, secret: str) -> str:
    conn = Connection(host, port)
    body = json.dumps({"access_key_id": key_id, "secret_access_key": secret}).encode()
    status, payload = await conn.request("POST", "/auth/login/", body)
    await conn.close()
    if status != 200:
        raise HttpError(f"login failed: HTTP {status} {payload[:200]!r}")
    return str(json.loads(payload)["access_token"])


async def _user(
    index: int,
    stride: int,
    host: str,
    port: int,
    token: str,
    portfolios: list[str],
    deadline: float,
    result: Result,
    listing_every: int,
) -> None:
    conn = Connection(host, port)
    auth = {"Authorization": f"Bearer {token}"}
    n = index
    done_here = 0
    listing_target = "/portfolios/?" + "&".join(
        f"{k}={quote(v, safe='')}" for k, v in (("query", PENDING_QUERY), ("limit", "100"))
    )

    async def call(
        route: str, method: str, target: str, body: bytes | None = None, extra: dict[str, str] | None = None
    ) -> bytes:
        started = time.perf_counter()
        status, payload = await conn.request(method, target, body, {**auth, **(extra or {})})
        result.latencies.append(time.perf_counter() - started)
        result.requests += 1
        result.by_route[route] += 1
        result.by_status[status] += 1
        if status >= 400 and len(result.errors) < 5:
            result.errors.append(f"{route}: HTTP {status} {payload[:200]!r}")
        return payload

    try:
        while time.monotonic() < deadline:
            pid = portfolios[n % len(portfolios)]
            n += stride  # virtual users walk disjoint portfolios (no row-lock collisions)
            seg = quote(pid, safe="")
            raw = await call("GET /portfolios/{id}", "GET", f"/portfolios/{seg}")
            doc = json.loads(raw)
            ref = f"LOADGEN-{uuid.uuid4().hex}"
            currency = str(doc.get("base_currency") or "EUR")
            tx = {
                "external_id": ref,
                "movements": [
                    {
                        "type": "CASH_WITHDRAWAL",
                        "status": "SETTLED",
                        "datetime": "2026-11-20T00:00:00+00:00",
                        "instrument_id": f"${currency}",
                        "quantity": -1,
                    }
                ],
            }
            await call(
                "POST /portfolios/{id}/transactions/",
                "POST",
                f"/portfolios/{seg}/transactions/",
                json.dumps(tx).encode(),
            )
            patch = json.dumps({"config": doc["config"], "portfolio": doc["portfolio"]}).encode()
            await call("PATCH /portfolios/{id}/", "PATCH", f"/portfolios/{seg}/", patch)
            event = {"data": {"amount": "1.00", "currency": currency, "portfolio": pid}}
            await call(
                "POST /events/withdraw/",
                "POST",
                "/events/withdraw/",
                json.dumps(event).encode(),
                {"Idempotency-Key": str(uuid.uuid4())},
            )
            result.payouts += 1
            done_here += 1
            if listing_every and done_here % listing_every == 0:
                await call("GET /portfolios/", "GET", listing_target)
    except (HttpError, OSError, asyncio.IncompleteReadError) as exc:
        result.errors.append(f"user {index}: {type(exc).__name__}: {exc}")
    finally:
        await conn.close()


async def run_load(
    base_url: str,
    portfolios: list[str],
    *,
    concurrency: int = 32,
    seconds: float = 20.0,
    warmup: float = 2.0,
    listing_every: int = 0,
    access_key_id: str = DEFAULT_ACCESS_KEY_ID,
    secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY,
) -> dict[str, Any]:
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    token = await login(host, port, access_key_id, secret_access_key)
    if warmup > 0:
        warm = Result()
        end = time.monotonic() + warmup
        await asyncio.gather(
            *(_user(i, concurrency, host, port, token, portfolios, end, warm, 0) for i in range(concurrency))
        )
    result = Result()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _user(i, concurrency, host, port, token, portfolios, deadline, result, listing_every)
            for i in range(concurrency)
        )
    )
    elapsed = time.monotonic() - started
    lat = sorted(result.latencies) or [0.0]
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests": result.requests,
        "requests_per_second": round(result.requests / elapsed, 1),
        "payouts_per_second": round(result.payouts / elapsed, 1),
        "by_route_per_second": {k: round(v / elapsed, 1) for k, v in sorted(result.by_route.items())},
        "by_status": {str(k): v for k, v in sorted(result.by_status.items())},
        "latency_ms": {
            "p50": round(lat[len(lat) // 2] * 1000, 2),
            "p95": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))] * 1000, 2),
            "mean": round(statistics.fmean(lat) * 1000, 2),
        },
        "errors": result.errors[:5],
    }


def portfolios_from_db(sandbox_dsn: str, limit: int = 5000) -> list[str]:
    import psycopg  # noqa: PLC0415

    dsn = sandbox_dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT portfolio_id FROM sandbox.scenario WHERE case_name = 'partial_enough_cash' "
            "ORDER BY portfolio_id LIMIT %s",
            (limit,),
        ).fetchall()
    return [str(r[0]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--portfolios", help="comma-separated portfolio ids")
    parser.add_argument("--sandbox-dsn", help="read portfolio ids from the sandbox database instead")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--listing-every", type=int, default=0, help="one listing page per this many payouts")
    args = parser.parse_args(argv)
    if args.portfolios:
        ids = [p for p in args.portfolios.split(",") if p]
    elif args.sandbox_dsn:
        ids = portfolios_from_db(args.sandbox_dsn)
    else:
        parser.error("give --portfolios or --sandbox-dsn")
    out = asyncio.run(
        run_load(
            args.base_url,
            ids,
            concurrency=args.concurrency,
            seconds=args.seconds,
            warmup=args.warmup,
            listing_every=args.listing_every,
        )
    )
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
