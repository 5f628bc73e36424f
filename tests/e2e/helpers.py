"""End-to-end helpers: a TOML config for the ``batch`` command, a CLI runner, and readers that take the
journal, the ledger and the sandbox straight from PostgreSQL (never through the job's own code), so
the tests check the job against the databases rather than against itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from batch.adapters.postgres import Dsns
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.seed import libpq_dsn
from batch.sandbox.store import loads
from tests.fixtures.roles import operator_dsn

CLI_TIMEOUT_SECONDS = 300
#: ISO 4217 minor units of the currencies the seeded scenario pays in (kept here, not imported: an
#: independent oracle for the job's own table).
MINOR_UNITS = {"EUR": 2, "USD": 2, "JPY": 0, "KWD": 3}
REPORT_PATH_RE = re.compile(r"^\s*report \((?P<fmt>\w+)\): (?P<path>\S+)$", re.MULTILINE)


def toml_config(dsns: Dsns, base_url: str, report_dir: Path) -> str:
    """The TOML the e2e runs use: fresh databases, the sandbox, a 50,000 payout cap, 8 threads."""
    q = json.dumps  # a JSON string literal is a valid TOML basic string for these values
    return "\n".join(
        [
            "[database]",
            f"journal_dsn = {q(dsns.journal)}",
            f"ledger_dsn = {q(dsns.ledger)}",
            f"sandbox_dsn = {q(dsns.sandbox)}",
            "",
            "[investsuite]",
            f"base_url = {q(base_url)}",
            f"access_key_id = {q(DEFAULT_ACCESS_KEY_ID)}",
            f"secret_access_key = {q(DEFAULT_SECRET_ACCESS_KEY)}",
            "",
            "[policy]",
            'max_payout = { EUR = "50000", USD = "50000" }',
            "",
            "[run]",
            f"report_dir = {q(str(report_dir))}",
            "concurrency = 8",
            "workers = 1  # one process: these tests read its output (test_workers covers several)",
            "",
        ]
    )


@dataclass(frozen=True)
class Cli:
    """Runs ``python -m batch --config <cfg> ...`` as a subprocess against one set of databases."""

    config: Path
    report_dir: Path
    dsns: Dsns

    def __call__(self, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
        env |= {"BATCH_LOG_LEVEL": "WARNING", "BATCH_OPERATOR": "e2e-tests"} | (env_extra or {})
        return subprocess.run(
            [sys.executable, "-m", "batch", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            env=env,
            check=False,
        )

    def as_operator(self, role: str) -> Cli:
        """The same CLI logged in to the journal as operator ``role`` (its own login, in batch_operator)."""
        config = self.config.with_name(f"{role}.toml")
        text = self.config.read_text(encoding="utf-8")
        config.write_text(
            text.replace(json.dumps(self.dsns.journal), json.dumps(operator_dsn(self.dsns.journal, role))),
            encoding="utf-8",
        )
        return replace(self, config=config)


def make_cli(dsns: Dsns, base_url: str, folder: Path) -> Cli:
    """Write the config under ``folder`` and return a runner for it."""
    folder.mkdir(parents=True, exist_ok=True)
    report_dir = folder / "reports"
    config = folder / "batch.toml"
    config.write_text(toml_config(dsns, base_url, report_dir), encoding="utf-8")
    return Cli(config=config, report_dir=report_dir, dsns=dsns)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    """A failed CLI call, readable in an assertion message."""
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"


def cli_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``cli.error`` line of a failed command (JSON logs: every stderr line is JSON); its error text.

    No traceback anywhere, and the event's exit code is the process's.
    """
    assert "Traceback" not in result.stdout + result.stderr, explain(result)
    events = [json.loads(line) for line in result.stderr.splitlines()]  # raises on a line that is not JSON
    errors = [e for e in events if e["event"] == "cli.error"]
    assert len(errors) == 1, explain(result)
    assert (errors[0]["level"], errors[0]["exit_code"]) == ("error", result.returncode), explain(result)
    return str(errors[0]["error"])


def report_paths(stdout: str) -> dict[str, Path]:
    """``report (json): /path`` lines printed by ``batch run``."""
    return {m["fmt"]: Path(m["path"]) for m in REPORT_PATH_RE.finditer(stdout)}


def minor(amount: Decimal, currency: str) -> Decimal:
    """Round down to the currency's minor unit."""
    return amount.quantize(Decimal(1).scaleb(-MINOR_UNITS[currency]), rounding=ROUND_DOWN)


def amount_text(amount: Decimal, currency: str) -> str:
    """The decimal string with exactly the currency's minor unit ('250.00', '1234', '125.125')."""
    return f"{minor(amount, currency):.{MINOR_UNITS[currency]}f}"


# -- reading the databases ------------------------------------------------------------------------------


def fetch(dsn: str, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(libpq_dsn(dsn), row_factory=dict_row) as conn:
        return list(conn.execute(sql, params or []).fetchall())


@dataclass(frozen=True)
class Portfolio:
    """A sandbox portfolio as stored: its version counter and its document (Decimal numbers)."""

    version: int
    doc: dict[str, Any]

    @property
    def currency(self) -> str:
        return str(self.doc["base_currency"])

    @property
    def cash(self) -> Decimal:
        return Decimal(self.doc["portfolio"].get(f"${self.currency}", 0))

    @property
    def divest(self) -> Any:
        return self.doc["config"]["manager_settings"]["divest_amount"]


@dataclass(frozen=True)
class State:
    """Everything external the job can change, plus the journal, at one moment."""

    portfolios: dict[str, Portfolio]
    transactions: list[dict[str, Any]]
    events: list[dict[str, Any]]
    transfers: list[dict[str, Any]]
    balances: dict[str, Decimal]
    runs: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    payouts: list[dict[str, Any]]

    def payout_transfers(self) -> list[dict[str, Any]]:
        """Ledger transfers into a payout clearing account (not the seeded opening balances)."""
        return [t for t in self.transfers if t["credit_kind"] == "PAYOUT_CLEARING"]

    def transactions_of(self, portfolio_id: str) -> list[dict[str, Any]]:
        return [t for t in self.transactions if t["portfolio_id"] == portfolio_id]

    def events_of(self, portfolio_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["data"]["portfolio"] == portfolio_id]

    def transfers_from(self, ledger_account: str) -> list[dict[str, Any]]:
        return [t for t in self.transfers if t["debit_reference"] == ledger_account]

    def decisions_of(self, run_id: str) -> dict[str, dict[str, Any]]:
        return {d["portfolio_id"]: d for d in self.decisions if str(d["run_id"]) == run_id}

    def payouts_of(self, portfolio_id: str) -> list[dict[str, Any]]:
        return [p for p in self.payouts if p["portfolio_id"] == portfolio_id]


def read_state(dsns: Dsns) -> State:
    """Read the sandbox, the ledger and the journal directly from PostgreSQL."""
    portfolios = {
        r["id"]: Portfolio(int(r["version"]), loads(r["doc"]))
        for r in fetch(dsns.sandbox, "SELECT id, version, doc::text AS doc FROM sandbox.portfolios ORDER BY id")
    }
    transactions = [
        loads(r["doc"]) | {"_external_id_column": r["external_id"]}
        for r in fetch(dsns.sandbox, "SELECT external_id, doc::text AS doc FROM sandbox.transactions ORDER BY id")
    ]
    events = [
        loads(r["response"]) | {"_key": r["idempotency_key"], "_status": r["status"]}
        for r in fetch(
            dsns.sandbox, "SELECT idempotency_key, status, response::text AS response FROM sandbox.events ORDER BY 1"
        )
    ]
    transfers = fetch(
        dsns.ledger,
        """SELECT t.id, t.reference, t.idempotency_key, t.amount, t.currency, t.value_date, t.counterparty,
                  d.reference AS debit_reference, c.reference AS credit_reference, c.kind AS credit_kind
             FROM ledger.transfers t
             JOIN ledger.accounts d ON d.id = t.debit_account_id
             JOIN ledger.accounts c ON c.id = t.credit_account_id
            ORDER BY t.id""",
    )
    balances = {
        r["reference"]: r["balance"] for r in fetch(dsns.ledger, "SELECT reference, balance FROM ledger.accounts")
    }
    runs = fetch(dsns.journal, "SELECT * FROM batch.runs ORDER BY started_at")
    decisions = fetch(dsns.journal, "SELECT * FROM batch.decisions ORDER BY id")
    payouts = fetch(dsns.journal, "SELECT * FROM batch.payouts ORDER BY created_at, id")
    return State(portfolios, transactions, events, transfers, balances, runs, decisions, payouts)


def users(dsns: Dsns) -> dict[str, dict[str, Any]]:
    """Sandbox users by id."""
    return {r["id"]: loads(r["doc"]) for r in fetch(dsns.sandbox, "SELECT id, doc::text AS doc FROM sandbox.users")}


def external_fingerprint(state: State) -> dict[str, Any]:
    """What must not move on a re-run or a dry run: ledger, sandbox portfolios, transactions, events."""
    by_ccy: dict[str, Decimal] = defaultdict(Decimal)
    for t in state.payout_transfers():
        by_ccy[t["currency"].strip()] += t["amount"]
    return {
        "ledger_transfers": [(t["idempotency_key"], t["amount"], t["reference"]) for t in state.transfers],
        "ledger_payout_count": len(state.payout_transfers()),
        "ledger_payout_sums": dict(by_ccy),
        "ledger_balances": state.balances,
        "portfolio_versions": {pid: p.version for pid, p in state.portfolios.items()},
        "portfolio_docs": {pid: p.doc for pid, p in state.portfolios.items()},
        "transactions": [t["id"] for t in state.transactions],
        "events": [e["_key"] for e in state.events],
    }
