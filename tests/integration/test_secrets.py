"""Secrets and account numbers never leak: not in logs, reports, CLI output or exception messages.

A whole job runs against the real sandbox configured with a distinctive secret access key, with
database DSNs that carry a password (accepted by the test server's trust authentication). Every
output is collected and searched for the secret, every access/refresh token the sandbox issued,
the DSN password, and the customers' full counter-account IBANs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import structlog
from pydantic import SecretStr

from batch.adapters.investsuite import InvestSuiteClient
from batch.adapters.ledger import Ledger
from batch.adapters.postgres import Dsns, make_engine
from batch.errors import BatchError, CredentialsError
from batch.logs import configure_logging, reset_logging
from batch.sandbox.seed import libpq_dsn, seed_scenario
from batch.sandbox.server import SandboxProcess
from batch.service.nightly.run import ExitCode, RunRequest, run_job
from batch.settings import InvestSuiteSettings, LedgerSettings
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.payout_support import ACTOR, BUSINESS_DATE, add_customer, app_for, make_settings

ACCESS_KEY_ID = "itest-bank-key"
SECRET = "Sx9-very-SECRET-key-7Qz4-never-log-me"
DB_PASSWORD = "S3cretPW-4Xk9-db"


def _with_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    return parts._replace(netloc=f"postgres:{DB_PASSWORD}@").geturl()


@dataclass
class Leaks:
    """Everything that must never be written anywhere."""

    secrets: dict[str, str]
    ibans: list[str]

    def assert_clean(self, where: str, text: str) -> None:
        assert text, f"nothing captured from {where}"
        for name, value in self.secrets.items():
            assert value not in text, f"{name} leaked into {where}"
        for iban in self.ibans:
            assert iban not in text, f"a full counter-account IBAN leaked into {where}"


def _issued_tokens(sandbox_dsn: str) -> dict[str, str]:
    with psycopg.connect(libpq_dsn(sandbox_dsn)) as conn:
        rows = conn.execute("SELECT token, kind FROM sandbox.tokens").fetchall()
    return {f"{kind} token {i}": str(token) for i, (token, kind) in enumerate(rows)}


def _ibans(sandbox_dsn: str) -> list[str]:
    with psycopg.connect(libpq_dsn(sandbox_dsn)) as conn:
        rows = conn.execute(
            "SELECT doc::jsonb #>> '{counter_account,bank_account_number}' FROM sandbox.users"
        ).fetchall()
    return [str(r[0]) for r in rows if r[0]]


@pytest.fixture
def keyed_sandbox(dsns: Dsns) -> Iterator[RunningSandbox]:
    """The sandbox accepting only our distinctive access key."""
    with SandboxProcess(dsns.sandbox, access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET) as process:
        yield RunningSandbox(process, dsns.sandbox)


@pytest.fixture
def secret_dsns(dsns: Dsns) -> Dsns:
    return Dsns(
        journal=_with_password(dsns.journal), ledger=_with_password(dsns.ledger), sandbox=_with_password(dsns.sandbox)
    )


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logs of this process captured in a stream (structlog's configuration restored afterwards)."""
    saved = structlog.get_config()
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    try:
        yield stream
    finally:
        reset_logging()
        structlog.configure(**saved)


def test_a_whole_job_leaks_no_secret_token_password_or_iban(
    keyed_sandbox: RunningSandbox,
    dsns: Dsns,
    secret_dsns: Dsns,
    sandbox_store: SandboxState,
    log_stream: io.StringIO,
    tmp_path: Path,
) -> None:
    """In-process run and CLI run: logs, reports, stdout/stderr carry no secret, token, DB password or full IBAN."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=30, rng_seed=11)
    report_dir = tmp_path / "reports"
    settings = make_settings(keyed_sandbox.base_url, report_dir, access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET)
    with app_for(settings, secret_dsns) as app:
        result = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test", operator=ACTOR))
    assert result.exit_code is ExitCode.ATTENTION, result.error  # the scenario holds some portfolios
    assert result.report is not None and result.report.totals["EUR"].count["paid"] > 0

    # a second night through the command line, with the secrets in the environment
    add_customer(sandbox_store, dsns, divest=Decimal("42.00"))
    config = tmp_path / "batch.toml"
    config.write_text(
        f'[investsuite]\nbase_url = "{keyed_sandbox.base_url}"\naccess_key_id = "{ACCESS_KEY_ID}"\n'
        f'[run]\nreport_dir = "{report_dir}"\nconcurrency = 2\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env |= {
        "BATCH_INVESTSUITE__SECRET_ACCESS_KEY": SECRET,
        "BATCH_DATABASE__JOURNAL_DSN": secret_dsns.journal,
        "BATCH_DATABASE__LEDGER_DSN": secret_dsns.ledger,
        "BATCH_DATABASE__SANDBOX_DSN": secret_dsns.sandbox,
    }
    cli = subprocess.run(
        [sys.executable, "-m", "batch", "--config", str(config), "run", "--date", "2026-03-03", "--trigger", "test"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert cli.returncode == ExitCode.OK, cli.stderr  # the holds are those of the first night: still held
    assert '"event": "run.finished"' in cli.stderr or '"event":"run.finished"' in cli.stderr

    tokens = _issued_tokens(dsns.sandbox)
    assert len(tokens) >= 4  # both runs logged in: access and refresh tokens of each
    leaks = Leaks({"secret access key": SECRET, "DSN password": DB_PASSWORD, **tokens}, _ibans(dsns.sandbox))
    assert len(leaks.ibans) >= 30
    leaks.assert_clean("in-process logs", log_stream.getvalue())
    assert '"event": "ledger.payout_posted"' in log_stream.getvalue()
    leaks.assert_clean("CLI stdout", cli.stdout)
    leaks.assert_clean("CLI stderr", cli.stderr)
    reports = sorted(report_dir.iterdir())
    assert {p.suffix for p in reports} >= {".json", ".csv", ".html", ".txt"}
    for path in reports:
        leaks.assert_clean(f"report {path.name}", path.read_text(encoding="utf-8"))


def test_a_refused_key_leaks_nothing_in_the_exception_or_the_run(
    keyed_sandbox: RunningSandbox, dsns: Dsns, secret_dsns: Dsns, log_stream: io.StringIO, tmp_path: Path
) -> None:
    """A 401 for a wrong key: a CredentialsError (run exit 2) whose text, reports and logs name neither key."""
    wrong = "Wr0ng-but-still-SECRET-4u7x"
    client = InvestSuiteClient(
        InvestSuiteSettings(
            base_url=keyed_sandbox.base_url, access_key_id=ACCESS_KEY_ID, secret_access_key=SecretStr(wrong)
        )
    )
    with client, pytest.raises(CredentialsError) as refused:
        client.get_portfolio("P01JZZZZZZZZZZZZZZZZZZZZZZZ")
    assert "refused the login (HTTP 401" in str(refused.value)
    messages = f"{refused.value}\n{refused.value!r}\n{refused.value.__cause__!r}"

    settings = make_settings(keyed_sandbox.base_url, tmp_path / "reports", secret_access_key=wrong)
    with app_for(settings, secret_dsns) as app:
        result = run_job(app, RunRequest(business_date=BUSINESS_DATE, trigger="test", operator=ACTOR))
        run_row = app.journal.get_run(result.run_id) if result.run_id else None
    assert result.exit_code is ExitCode.USAGE  # a configuration error: retrying cannot help
    assert result.error is not None and "401" in result.error
    assert run_row is not None and run_row["status"] == "FAILED"

    leaks = Leaks({"wrong key": wrong, "secret access key": SECRET, "DSN password": DB_PASSWORD}, [])
    leaks.assert_clean("the 401 exception", messages)
    leaks.assert_clean("the run error", f"{result.error}\n{run_row['error']}")
    leaks.assert_clean("in-process logs", log_stream.getvalue())
    for path in result.report_paths.values():
        leaks.assert_clean(f"report {path.name}", path.read_text(encoding="utf-8"))


def test_database_errors_leak_no_dsn_password(dsns: Dsns, log_stream: io.StringIO, tmp_path: Path) -> None:
    """An unreachable ledger and a missing journal database: errors, CLI output and logs carry no DSN password."""
    dead = f"postgresql://postgres:{DB_PASSWORD}@/nowhere?host=/nonexistent/batch-secrets&connect_timeout=1"
    engine = make_engine(dead, pool_size=1)
    try:
        with pytest.raises(BatchError) as unavailable:
            Ledger(engine, LedgerSettings()).available_balances(["CASH-000001"])
        cause = unavailable.value.__cause__
        messages = f"{unavailable.value}\n{unavailable.value!r}\n{cause}\n{cause!r}\n{engine!r}"
    finally:
        engine.dispose()
    assert "unavailable" in str(unavailable.value)

    missing_db = _with_password(dsns.journal).replace("/t_journal_", "/no_such_db_", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env |= {
        "BATCH_DATABASE__JOURNAL_DSN": missing_db,
        "BATCH_DATABASE__LEDGER_DSN": _with_password(dsns.ledger),
        "BATCH_DATABASE__SANDBOX_DSN": _with_password(dsns.sandbox),
        "BATCH_INVESTSUITE__SECRET_ACCESS_KEY": SECRET,
        "BATCH_INVESTSUITE__ACCESS_KEY_ID": ACCESS_KEY_ID,
        "BATCH_RUN__REPORT_DIR": str(tmp_path / "reports"),
    }
    cli = subprocess.run(
        [sys.executable, "-m", "batch", "run", "--date", "2026-03-03"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert cli.returncode == ExitCode.TECHNICAL_FAILURE
    assert "journal database at" in cli.stderr and "unavailable" in cli.stderr
    leaks = Leaks({"DSN password": DB_PASSWORD, "secret access key": SECRET}, [])
    leaks.assert_clean("ledger error", messages)
    leaks.assert_clean("CLI output", cli.stdout + cli.stderr)
    log_text = log_stream.getvalue()
    for value in (DB_PASSWORD, SECRET):
        assert value not in log_text
