"""Seeding a scenario loads every case into the sandbox and the matching accounts into the ledger."""

from __future__ import annotations

from decimal import Decimal

import httpx
import psycopg

from batch.adapters.postgres import Dsns
from batch.sandbox.query import compile_sql, parse_query
from batch.sandbox.scenario import CASES, NOT_PENDING_CASES
from batch.sandbox.seed import plan_scenario, portfolios_by_case, seed_scenario
from batch.sandbox.server import SandboxProcess

PENDING = "config.manager_settings.divest_amount neq 0 and config.manager_settings.divest_amount neq null"


def test_plan_is_deterministic_and_covers_every_case() -> None:
    """The same rng_seed gives the same scenario; every case appears once at the minimum size."""
    first = plan_scenario(len(CASES), rng_seed=7)
    again = plan_scenario(len(CASES), rng_seed=7)
    assert [s.portfolio for s in first] == [s.portfolio for s in again]
    assert {s.case for s in first} == set(CASES)


def test_seed_covers_every_case_in_sandbox_and_ledger(dsns: Dsns) -> None:
    """seed_scenario loads each case, funds ledger accounts from HOUSE-{CCY} and lists only pending ones."""
    size = len(CASES) + 30
    manifest = seed_scenario(dsns.sandbox, dsns.ledger, size=size)
    assert manifest["size"] == size and set(manifest["cases"]) == set(CASES)
    assert sum(manifest["cases"].values()) == size
    again = seed_scenario(dsns.sandbox, dsns.ledger, size=size)
    assert again["already_seeded"] is True and again["cases"] == manifest["cases"]

    by_case = portfolios_by_case(dsns.sandbox)
    with psycopg.connect(dsns.ledger) as conn:
        balances = {
            str(ref): (str(ccy), Decimal(available))
            for ref, ccy, available in conn.execute(
                "SELECT reference, currency, available FROM ledger.available_balances"
            )
        }
        keys = conn.execute("SELECT count(*) FROM ledger.transfers WHERE idempotency_key LIKE 'seed-%'").fetchone()
    assert balances["CLEARING-EUR"] == ("EUR", Decimal(0)) and "HOUSE-JPY" in balances
    assert keys is not None and keys[0] > size // 2

    with SandboxProcess(dsns.sandbox) as process:
        token = httpx.post(
            process.base_url + "/auth/login/",
            json={"access_key_id": "demo-access-key", "secret_access_key": "demo-secret-key"},
        ).json()["access_token"]
        with httpx.Client(base_url=process.base_url, headers={"Authorization": f"Bearer {token}"}) as http:
            docs = {}
            url: str | None = f"/portfolios/?limit=100&query={PENDING}"
            while url:
                body = http.get(url).json()
                docs.update({d["id"]: d for d in body["results"]})
                url = body["next"]
            hold = http.get(f"/portfolios/{by_case['ledger_hold'][0]}").json()
            mismatch = http.get(f"/portfolios/{by_case['currency_mismatch'][0]}").json()
            missing = http.get(f"/portfolios/{by_case['no_ledger_account'][0]}").json()
    pending_cases = {case for case, ids in by_case.items() if any(i in docs for i in ids)}
    assert pending_cases == set(CASES) - NOT_PENDING_CASES
    assert balances[hold["external_id"]] == ("EUR", Decimal("200.00"))
    assert balances[mismatch["external_id"]][0] == "USD"
    assert missing["external_id"] not in balances


def test_pending_query_pages_on_the_partial_index(dsns: Dsns) -> None:
    """The compiled pending query matches the partial index, so deep offsets stay cheap at 100k portfolios."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=len(CASES))
    where, params = compile_sql(parse_query(PENDING))
    with psycopg.connect(dsns.sandbox) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            f"EXPLAIN SELECT id FROM sandbox.portfolios WHERE {where} ORDER BY id LIMIT 10 OFFSET 5", params
        ).fetchall()
    assert "portfolios_pending_divest" in " ".join(str(row[0]) for row in plan)
