"""Crash and chaos harness shared by ``tests/e2e/test_crash.py`` and ``scripts/chaos.py``.

It drives the real CLI (``python -m batch run``) as a subprocess against a seeded sandbox with
faults switched on, kills it with SIGKILL again and again (from outside after a random delay, and
from inside through ``BATCH_CRASH_POINTS``), restarts it until a run converges, then runs once more
without faults and checks the money invariants of DESIGN.md §2 straight in the three databases.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from batch.adapters.postgres import Dsns
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.scenario import NOT_PENDING_CASES
from batch.sandbox.seed import libpq_dsn, portfolios_by_case, seed_scenario
from batch.sandbox.server import SandboxAdmin
from batch.sandbox.store import loads
from tests.e2e.chaos_deposits import DepositBook

REPO_ROOT = Path(__file__).resolve().parents[2]
BUSINESS_DATE = date(2026, 11, 20)
STEPS = ("LEDGER_POST", "RECORD_TRANSACTION", "UPDATE_PORTFOLIO", "SEND_EVENT")
SETTLED_STATES = frozenset({"COMPLETED", "CANCELLED", "NEEDS_ATTENTION", "HELD"})
#: every point may fire; the moments right after an external call (outcome unknown) fire more often
#: (expected ~0.15 kills per payout: the kill quota is met while payouts are still open, however fast a run is)
DEFAULT_CRASH_POINTS = ",".join(
    ["*:0.008"] + [f"{step}.after:0.025" for step in STEPS] + ["LEDGER_POST.before:0.015", "SEND_EVENT.before:0.015"]
)
EXIT_DONE = frozenset({0, 3})
EXIT_LOCKED = 75


@dataclass(frozen=True)
class ChaosOptions:
    """What the harness does: how many kills, how much noise, how long it may take."""

    size: int = 230
    kills: int = 20
    seed: int = 20261120
    business_date: date = BUSINESS_DATE
    error_rate: float = 0.05
    lose_response_rate: float = 0.05
    crash_points: str = DEFAULT_CRASH_POINTS
    #: external SIGKILL after a uniform random delay in this range (seconds after the start)
    kill_delay: tuple[float, float] = (0.3, 4.0)
    #: share of the killing runs that also get an external kill timer (the rest rely on crash points)
    external_kill_share: float = 0.5
    concurrency: int = 8
    max_runs: int = 400
    run_timeout: float = 300.0
    deadline_seconds: float = 1800.0
    #: seed incoming credits too, so the kills land in both flows
    deposits: bool = True


@dataclass(frozen=True)
class RunOutcome:
    number: int
    exit_code: int
    seconds: float
    killed_by: str | None  # "timer", "crash point" or None
    crash_env: bool
    stderr_tail: str
    #: payouts still open after a run that was not killed (must be 0: nothing waits for a dead run's lease)
    open_after: int | None = None


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ChaosResult:
    runs: list[RunOutcome] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    attention: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(1 for r in self.runs if r.killed_by)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def table(self) -> str:
        """The checks as a fixed-width table, followed by the NEEDS_ATTENTION payouts and their evidence."""
        width = max(len(c.name) for c in self.checks) if self.checks else 10
        lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  {'-' * 50}"]
        lines += [f"{c.name:<{width}}  {'ok' if c.ok else 'FAIL':<6}  {c.detail}" for c in self.checks]
        for item in self.attention:
            lines.append(f"NEEDS_ATTENTION {item}")
        return "\n".join(lines)

    def summary(self) -> str:
        by_kind = Counter(r.killed_by or f"exit {r.exit_code}" for r in self.runs)
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items()))
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"{len(self.runs)} runs ({parts}); {self.kills} kills; {counts}; {self.seconds:.1f} s"


def write_config(path: Path, dsns: Dsns, base_url: str, report_dir: Path, *, concurrency: int = 8) -> Path:
    """A TOML config pointing the job at these databases and this sandbox."""
    path.write_text(
        "\n".join(
            [
                "[database]",
                f'journal_dsn = "{dsns.journal}"',
                f'ledger_dsn = "{dsns.ledger}"',
                f'sandbox_dsn = "{dsns.sandbox}"',
                "pool_size = 12",
                "",
                "[investsuite]",
                f'base_url = "{base_url}"',
                f'access_key_id = "{DEFAULT_ACCESS_KEY_ID}"',
                f'secret_access_key = "{DEFAULT_SECRET_ACCESS_KEY}"',
                "read_timeout_seconds = 20.0",
                "max_retry_seconds = 20.0",
                "",
                "[run]",
                'timezone = "Europe/Brussels"',
                f"concurrency = {concurrency}",
                "workers = 1",  # the harness kills the job's one process
                f'report_dir = "{report_dir}"',
                "lease_seconds = 300",
                "progress_interval_seconds = 3600",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


def batch_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "batch", "--config", str(config), *args]


def batch_env(crash_points: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["BATCH_LOG_LEVEL"] = "WARNING"
    env["BATCH_OPERATOR"] = "chaos"
    if crash_points:
        env["BATCH_CRASH_POINTS"] = crash_points
    return env


def _rows(dsn: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_dsn(dsn)) as conn:
        return conn.execute(sql, params or []).fetchall()


class ChaosHarness:
    """Seed, crash the job repeatedly until it converges, run it clean once more, then check everything."""

    def __init__(
        self,
        dsns: Dsns,
        base_url: str,
        workdir: Path,
        options: ChaosOptions | None = None,
        *,
        say: Callable[[str], None] = print,
    ) -> None:
        self.dsns = dsns
        self.admin = SandboxAdmin(base_url)
        self.options = options or ChaosOptions()
        self.say = say
        self.rng = random.Random(self.options.seed)
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = write_config(
            workdir / "chaos.toml", dsns, base_url, workdir / "reports", concurrency=self.options.concurrency
        )
        self.seeded_cash: dict[str, tuple[str, Decimal]] = {}
        self.pending: set[str] = set()
        self.deposits: DepositBook | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def seed(self) -> dict[str, Any]:
        manifest = seed_scenario(
            self.dsns.sandbox, self.dsns.ledger, size=self.options.size, rng_seed=self.options.seed
        )
        for portfolio_id, doc in self._portfolios().items():
            currency = str(doc["base_currency"])
            self.seeded_cash[portfolio_id] = (currency, Decimal(doc["portfolio"].get(f"${currency}", 0)))
        cases = portfolios_by_case(self.dsns.sandbox)
        self.pending = {p for case, ids in cases.items() if case not in NOT_PENDING_CASES for p in ids}
        if self.options.deposits:  # incoming credits beside the withdrawals: both flows under the same kills
            self.deposits = DepositBook.seed(self.dsns, rng_seed=self.options.seed)
        return manifest

    def _portfolios(self) -> dict[str, dict[str, Any]]:
        rows = _rows(self.dsns.sandbox, "SELECT id, doc::text FROM sandbox.portfolios")
        return {str(pid): loads(text) for pid, text in rows}

    def _report_announced(self) -> dict[str, Decimal]:
        """The date report's deposits moved and announced, per currency (``batch report --date``)."""
        date_text = self.options.business_date.isoformat()
        command = batch_command(self.config, "report", "--date", date_text, "--format", "json")
        done = subprocess.run(command, env=batch_env(), cwd=self.workdir, capture_output=True, text=True, check=True)
        totals = (json.loads(done.stdout).get("deposits") or {}).get("totals", {})
        return {ccy: Decimal(str(t["announced"]["amount"])) for ccy, t in totals.items()}

    # -- running ----------------------------------------------------------------------------------
    def run_once(self, number: int, *, crash: bool, timer: float | None) -> RunOutcome:
        """One ``batch run`` subprocess; SIGKILLed after ``timer`` seconds if it is still running."""
        command = batch_command(
            self.config, "run", "--date", self.options.business_date.isoformat(), "--trigger", "test"
        )
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            env=batch_env(self.options.crash_points if crash else None),
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        killed_by_timer = False
        try:
            _, stderr = process.communicate(timeout=timer if timer is not None else self.options.run_timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            killed_by_timer = True
            _, stderr = process.communicate(timeout=30)
        code = process.returncode
        killed_by = None
        if code == -signal.SIGKILL:
            killed_by = "timer" if killed_by_timer else "crash point"
        elif killed_by_timer:  # it finished between the timeout and the kill
            killed_by = None
        tail = stderr.decode("utf-8", "replace")[-2000:]
        open_after = None if killed_by else self.open_payouts()
        return RunOutcome(number, code, time.monotonic() - started, killed_by, crash, tail, open_after)

    def open_payouts(self) -> int:
        states = sorted(SETTLED_STATES)
        return int(
            _rows(self.dsns.journal, "SELECT count(*) FROM batch.payouts WHERE state <> ALL(%s)", [states])[0][0]
        )

    def crash_until_converged(self, result: ChaosResult) -> None:
        """Kill runs until ``kills`` kills happened, then restart until a run converges (exit 0/3, nothing open)."""
        opts = self.options
        self.admin.set_faults(
            error_rate=opts.error_rate,
            lose_response_rate=opts.lose_response_rate,
            methods=["POST", "PATCH"],
            seed=opts.seed,
        )
        deadline = time.monotonic() + opts.deadline_seconds
        while True:
            if len(result.runs) >= opts.max_runs or time.monotonic() > deadline:
                raise AssertionError(f"no convergence after {len(result.runs)} runs: {result.runs[-3:]}")
            killing = result.kills < opts.kills
            # once no payout is left open, a run only plans and reports (under a second): only an early
            # timer still lands in it, so the kill quota is reached however fast the job has become
            idle = bool(result.runs) and result.runs[-1].killed_by is None and result.runs[-1].open_after == 0
            timer = None
            if killing and (idle or self.rng.random() < opts.external_kill_share):
                timer = self.rng.uniform(0.1, 0.6) if idle else self.rng.uniform(*opts.kill_delay)
            outcome = self.run_once(len(result.runs) + 1, crash=killing, timer=timer)
            result.runs.append(outcome)
            if outcome.killed_by is None and outcome.exit_code not in EXIT_DONE:
                raise AssertionError(f"run {outcome.number} exited {outcome.exit_code}:\n{outcome.stderr_tail}")
            if outcome.killed_by is None and not killing and outcome.open_after == 0:
                return

    def clean_run(self, result: ChaosResult) -> RunOutcome:
        """Faults off, no kills: one more run for the same date."""
        self.admin.set_faults()
        outcome = self.run_once(len(result.runs) + 1, crash=False, timer=None)
        result.runs.append(outcome)
        return outcome

    def run(self) -> ChaosResult:
        started = time.monotonic()
        result = ChaosResult()
        manifest = self.seed()
        self.say(f"seeded {manifest['size']} portfolios ({len(self.pending)} pending) in {manifest['seconds']} s")
        self.crash_until_converged(result)
        self.say(f"converged after {len(result.runs)} runs ({result.kills} kills)")
        final = self.clean_run(result)
        result.seconds = time.monotonic() - started
        result.checks = self.verify(final, result)
        return result

    # -- checking -----------------------------------------------------------------------------------
    def verify(self, final: RunOutcome, result: ChaosResult) -> list[Check]:
        checks: list[Check] = []

        def check(name: str, ok: bool, detail: str) -> None:
            checks.append(Check(name, bool(ok), detail))

        check("final clean run exits 0 or 3", final.exit_code in EXIT_DONE, f"exit {final.exit_code}")
        check(f"at least {self.options.kills} SIGKILLs", result.kills >= self.options.kills, f"{result.kills} kills")
        open_now = self.open_payouts()
        check("no payout left open", open_now == 0, f"{open_now} open")
        finished = [r for r in result.runs if r.killed_by is None]
        left_open = [(r.number, r.open_after) for r in finished if r.open_after]
        check(
            "every run that finished left nothing open",
            not left_open,
            f"{len(finished)} finished runs; left open (run, payouts): {left_open[:5]}",
        )

        journal, ledger, sandbox = self.dsns.journal, self.dsns.ledger, self.dsns.sandbox
        payouts = {
            str(r[0]): {"portfolio": r[1], "state": r[2], "amount": r[3], "ref": r[4], "step": r[5], "error": r[6]}
            for r in _rows(
                journal,
                "SELECT id::text, portfolio_id, state, amount, ledger_reference, failing_step, last_error"
                " FROM batch.payouts WHERE flow = 'WITHDRAWAL'",
            )
        }
        # the withdrawals' side of the books (the deposits are checked by chaos_deposits)
        transfers = _rows(
            ledger,
            "SELECT t.idempotency_key, t.reference, t.amount, a.reference FROM ledger.transfers t"
            " JOIN ledger.accounts a ON a.id = t.debit_account_id JOIN ledger.accounts c ON c.id = t.credit_account_id"
            " WHERE t.idempotency_key NOT LIKE 'seed-%%' AND c.kind = 'PAYOUT_CLEARING'",
        )
        transactions = _rows(
            sandbox,
            "SELECT portfolio_id, external_id, doc::text FROM sandbox.transactions"
            " WHERE doc::jsonb -> 'movements' -> 0 ->> 'type' = 'CASH_WITHDRAWAL'",
        )
        events = {
            str(r[0])
            for r in _rows(
                sandbox, "SELECT idempotency_key FROM sandbox.events WHERE response::jsonb ->> 'type' = 'withdraw'"
            )
        }
        portfolios = self._portfolios()

        # (a) paid exactly once
        by_key = Counter(str(t[0]) for t in transfers)
        tx_by_ext = Counter(str(t[1]) for t in transactions)
        paid = {key: payouts.get(key) for key in by_key}
        orphans = [k for k, p in paid.items() if p is None]
        check("every ledger payout belongs to a payout", not orphans, f"{len(transfers)} transfers, orphans {orphans}")
        paid_per_portfolio = Counter(p["portfolio"] for p in paid.values() if p)
        twice = {k: v for k, v in paid_per_portfolio.items() if v > 1}
        check("no portfolio paid twice in the ledger", not twice, f"{len(paid_per_portfolio)} portfolios paid; {twice}")
        completed = {pid: p for pid, p in payouts.items() if p["state"] == "COMPLETED"}
        completed_per_portfolio = Counter(p["portfolio"] for p in completed.values())
        dup_completed = {k: v for k, v in completed_per_portfolio.items() if v > 1}
        check(
            "no portfolio has two COMPLETED payouts", not dup_completed, f"{len(completed)} completed; {dup_completed}"
        )
        bad_completed = [
            pid
            for pid, p in completed.items()
            if by_key.get(pid) != 1 or tx_by_ext.get(str(p["ref"])) != 1 or pid not in events
        ]
        check(
            "COMPLETED: 1 transfer, 1 transaction, 1 event each",
            not bad_completed,
            f"{len(completed)} completed, bad {bad_completed[:5]}",
        )
        refs = {str(t[1]) for t in transfers}
        dup_tx = {k: v for k, v in tx_by_ext.items() if v > 1}
        stray_tx = [k for k in tx_by_ext if k not in refs]
        check(
            "no duplicate or stray InvestSuite transaction",
            not dup_tx and not stray_tx,
            f"dup {dup_tx} stray {stray_tx}",
        )
        stray_events = [k for k in events if k not in by_key]
        check("every withdraw event belongs to a ledger payout", not stray_events, f"stray {stray_events[:5]}")
        attention = {pid: p for pid, p in payouts.items() if p["state"] == "NEEDS_ATTENTION"}
        if not attention:
            counts_equal = len(transfers) == len(transactions) == len(events) == len(completed)
        else:  # a stopped payout may lack its later steps, never have more than one of anything
            counts_equal = len(transfers) >= len(transactions) and len(transfers) >= len(events)
        check(
            "counts: transfers = transactions = events = completed",
            counts_equal,
            f"{len(transfers)} / {len(transactions)} / {len(events)} / {len(completed)}"
            f" (needs attention {len(attention)})",
        )

        # (b) divest cleared for every completed payout
        still_divest = []
        for p in completed.values():
            divest = portfolios[p["portfolio"]]["config"]["manager_settings"].get("divest_amount")
            if divest not in (0, None) and Decimal(str(divest)) != 0:
                still_divest.append((p["portfolio"], str(divest)))
        check("no paid portfolio still has a divest amount", not still_divest, f"{still_divest[:5]}")

        # (c) holdings cash = seeded cash - paid, exactly; ledger balance likewise
        paid_amount: dict[str, Decimal] = defaultdict(Decimal)
        for key, _ref, amount, _acct in transfers:
            if payouts.get(str(key)):
                paid_amount[payouts[str(key)]["portfolio"]] += Decimal(amount)
        attention_portfolios = {p["portfolio"] for p in attention.values()}
        wrong_cash = []
        for portfolio_id, (currency, seeded) in self.seeded_cash.items():
            now = Decimal(str(portfolios[portfolio_id]["portfolio"].get(f"${currency}", 0)))
            if now != seeded - paid_amount.get(portfolio_id, Decimal(0)) and portfolio_id not in attention_portfolios:
                wrong_cash.append((portfolio_id, str(seeded), str(paid_amount.get(portfolio_id)), str(now)))
        check(
            "holdings cash = seeded - paid (Decimal, exact)",
            not wrong_cash,
            f"{len(self.seeded_cash)} portfolios, {len(paid_amount)} paid; wrong {wrong_cash[:3]}",
        )
        balances = {
            str(r[0]): Decimal(r[1])
            for r in _rows(
                ledger, "SELECT reference, balance FROM ledger.accounts WHERE kind = 'CUSTOMER_INVESTMENT_CASH'"
            )
        }
        seeded_balance: dict[str, Decimal] = defaultdict(Decimal)
        for ref, amount in _rows(
            ledger,
            "SELECT a.reference, t.amount FROM ledger.transfers t JOIN ledger.accounts a ON a.id = t.credit_account_id"
            " WHERE t.idempotency_key LIKE 'seed-%%'",
        ):
            seeded_balance[str(ref)] += Decimal(amount)
        debited: dict[str, Decimal] = defaultdict(Decimal)
        for _key, _ref, amount, account in transfers:
            debited[str(account)] += Decimal(amount)
        for account, amount in _rows(  # deposits moved into customer accounts
            ledger,
            "SELECT a.reference, t.amount FROM ledger.transfers t JOIN ledger.accounts a ON a.id = t.credit_account_id"
            " WHERE t.idempotency_key LIKE 'deposit:%%'",
        ):
            debited[str(account)] -= Decimal(amount)
        wrong_ledger = [r for r, b in balances.items() if b != seeded_balance.get(r, Decimal(0)) - debited.get(r, 0)]
        check("ledger balance = seeded - paid", not wrong_ledger, f"{len(balances)} accounts; wrong {wrong_ledger[:3]}")

        # (d) audit chain
        audit = subprocess.run(
            batch_command(self.config, "audit", "verify"),
            env=batch_env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        check("batch audit verify exits 0", audit.returncode == 0, audit.stdout.strip()[:120])

        # (e) no decision lost
        decided = {str(r[0]) for r in _rows(journal, "SELECT DISTINCT portfolio_id FROM batch.decisions")}
        missing = sorted(self.pending - decided)
        check(
            "every pending portfolio has a decision", not missing, f"{len(self.pending)} pending; missing {missing[:5]}"
        )
        planned_runs = _rows(
            journal,
            "SELECT r.id, (SELECT count(*) FROM batch.decisions d WHERE d.run_id = r.id),"
            " (SELECT (a.details::jsonb->>'candidates')::int FROM batch.audit_log a"
            "   WHERE a.run_id = r.id AND a.action = 'run.planned')"
            " FROM batch.runs r WHERE r.planned_at IS NOT NULL",
        )
        short = [(str(r[0]), r[1], r[2]) for r in planned_runs if r[2] is not None and r[1] < r[2]]
        check(
            "each planned run: decisions = candidates listed",
            not short and bool(planned_runs),
            f"{len(planned_runs)} planned runs; short {short[:3]}",
        )
        pending_now = {
            pid
            for pid, doc in portfolios.items()
            if pid in self.pending and Decimal(str(doc["config"]["manager_settings"].get("divest_amount") or 0)) != 0
        }
        last_run = _rows(journal, "SELECT id FROM batch.runs ORDER BY started_at DESC LIMIT 1")[0][0]
        last_decided = {
            str(r[0]) for r in _rows(journal, "SELECT portfolio_id FROM batch.decisions WHERE run_id = %s", [last_run])
        }
        check(
            "final run decided every still-pending portfolio",
            pending_now <= last_decided,
            f"{len(pending_now)} still pending; undecided {sorted(pending_now - last_decided)[:5]}",
        )

        # (f) kills landed inside every step
        crashed = dict(
            _rows(journal, "SELECT step, count(*) FROM batch.step_attempts WHERE outcome IS NULL GROUP BY step")
        )
        check(
            "a kill left an intent without outcome in every step",
            all(crashed.get(step, 0) > 0 for step in STEPS),
            ", ".join(f"{step}={crashed.get(step, 0)}" for step in STEPS),
        )
        runs_by_status = dict(_rows(journal, "SELECT status, count(*) FROM batch.runs GROUP BY status"))
        check("killed runs were marked ABANDONED", runs_by_status.get("ABANDONED", 0) > 0, f"{runs_by_status}")
        read_backs = dict(
            _rows(journal, "SELECT step, count(*) FROM batch.step_attempts WHERE outcome = 'ADOPTED' GROUP BY step")
        )

        # (g) needs attention: listed with evidence, none paid twice (covered above)
        result.attention = [
            {
                "payout": pid,
                "portfolio": p["portfolio"],
                "step": p["step"],
                "error": p["error"],
                "ledger": by_key.get(pid, 0),
                "transactions": tx_by_ext.get(str(p["ref"]), 0),
                "event": int(pid in events),
            }
            for pid, p in sorted(attention.items())
        ]
        no_evidence = [a for a in result.attention if not a["step"] or not a["error"]]
        check(
            "NEEDS_ATTENTION payouts carry step and error",
            not no_evidence,
            f"{len(attention)} needs attention; without evidence {no_evidence[:3]}",
        )
        result.counts = {
            "payouts": len(payouts),
            "completed": len(completed),
            "needs_attention": len(attention),
            "cancelled": sum(1 for p in payouts.values() if p["state"] == "CANCELLED"),
            "held": sum(1 for p in payouts.values() if p["state"] == "HELD"),
            "transfers": len(transfers),
            "adopted": dict(read_backs),
            "crashed_intents": {s: crashed.get(s, 0) for s in STEPS},
        }
        if self.deposits is not None:
            for name, ok, detail in self.deposits.checks():
                check(name, ok, detail)
            check(*self.deposits.per_currency(self.options.business_date, self._report_announced()))
            result.counts["deposits"] = self.deposits.counts
        return checks
