"""Benchmark scenario "deposits": ``batch run --flow deposits`` over N incoming credits at injected API latency.

Seeds the usual book of N portfolios, then books one incoming credit per eligible portfolio (ACTIVE,
REAL_MONEY, a ledger account) into the INCOMING account of its currency with the portfolio's account as
beneficiary. The job then plans them set-wise (one ledger page and one InvestSuite ``external_id in``
query per 100 credits) and drives each through LEDGER_MOVE and SEND_DEPOSIT_EVENT (client set-up).
Figures go into the same table as the withdrawals (label ``deposits-c48``).

    .venv/bin/python bench/bench.py --scenario deposits --sizes 10000 --latency-ms 100
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg

from batch.adapters.ledger_deposits import IncomingFundsAdmin
from batch.adapters.postgres import make_engine
from batch.domain.money import MINOR_UNITS
from batch.sandbox.store import loads
from batch.settings import LedgerSettings
from bench.harness import Dataset, Env, Measurement, libpq, log, run_job, seeded, with_sandbox

VALUE_DATE = date(2026, 11, 20)


def book_credits(data: Dataset) -> int:
    """One incoming credit (100 in the base currency) per portfolio that may be funded; returns how many."""
    with psycopg.connect(libpq(data.dsns["sandbox"])) as conn:
        docs = [loads(text) for (text,) in conn.execute("SELECT doc::text FROM sandbox.portfolios")]
    with psycopg.connect(libpq(data.dsns["ledger"])) as conn:
        accounts = {str(r) for (r,) in conn.execute("SELECT reference FROM ledger.accounts")}
    eligible = [
        d
        for d in docs
        if d.get("money_type") == "REAL_MONEY"
        and d.get("status") == "ACTIVE"
        and not d.get("archived")
        and not d.get("deleted")
        and d.get("external_id") in accounts
        and d.get("base_currency") in MINOR_UNITS
    ]
    engine = make_engine(data.dsns["ledger"], pool_size=1, application_name="bench-deposits")
    started = time.monotonic()
    try:
        admin = IncomingFundsAdmin(engine, LedgerSettings())
        for currency in sorted({d["base_currency"] for d in eligible}):
            admin.ensure_incoming_account(currency)
        for index, doc in enumerate(eligible):
            admin.receive_credit(
                doc["external_id"], Decimal(100), doc["base_currency"], VALUE_DATE, f"bench-credit-{index}"
            )
    finally:
        engine.dispose()
    log(f"booked {len(eligible)} incoming credits in {time.monotonic() - started:.1f} s")
    return len(eligible)


def scenario_deposits(env: Env, args: argparse.Namespace, results: list[Measurement]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in [s for s in args.sizes if s <= args.throughput_max]:
        data = seeded(env, f"dep{size}", size)
        credits = book_credits(data)
        with with_sandbox(data, args.pool_size) as sandbox:
            m = run_job(
                env,
                data,
                sandbox,
                label=f"deposits-c{args.concurrency}",
                concurrency=args.concurrency,
                latency_ms=args.latency_ms,
                run_args=("--flow", "deposits"),
            )
        m.plan = {**(m.plan or {}), "credits_booked": credits}
        results.append(m)
        out[f"n{size}"] = m
    return out
