"""Operator errors through the real command: exit code 2, one line naming the problem, no traceback, nothing started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.service.nightly.run import ExitCode
from tests.e2e.helpers import CLI_TIMEOUT_SECONDS, Cli, cli_error, explain, toml_config
from tests.fixtures.sandbox import RunningSandbox

WRONG_SECRET = "Wr0ng-Secret-e2e-7q"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}


def _postgres_under(folder: Path) -> list[psutil.Process]:
    """PostgreSQL processes whose command line points into ``folder``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if "postgres" in (process.info.get("name") or "") and str(folder) in cmdline:
            found.append(process)
    return found


def _lines(completed: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()]


def test_runs_without_config_or_dsn_exits_2_and_starts_no_postgres(tmp_path: Path) -> None:
    """`batch runs` with no config and no DSN: exit 2, one line naming the settings, no .data/, no PostgreSQL."""
    completed = subprocess.run(
        [sys.executable, "-m", "batch", "runs"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        env=_clean_env(),
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == ExitCode.USAGE, explain(completed)
    assert len(_lines(completed)) == 1, explain(completed)
    assert cli_error(completed) == (
        "configuration error: database.journal_dsn and database.ledger_dsn are not set "
        "(BATCH_DATABASE__JOURNAL_DSN, BATCH_DATABASE__LEDGER_DSN); or set [database] embedded = true "
        f"to use the embedded server under {tmp_path / '.data' / 'pg'}"
    )
    assert list(tmp_path.iterdir()) == []  # no .data/, nothing at all
    assert _postgres_under(tmp_path) == []


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        (f'access_key_id = "{DEFAULT_ACCESS_KEY_ID}"\nsecret_access_key = "{WRONG_SECRET}"\n', "refused the login"),
        ("", "answered HTTP 401 and no credentials are configured"),
    ],
    ids=["wrong-secret", "no-credentials"],
)
def test_refused_or_missing_credentials_exit_2_with_one_line(
    dsns: Dsns, sandbox: RunningSandbox, tmp_path: Path, credentials: str, expected: str
) -> None:
    """`batch run` with a wrong secret or none: exit 2, the reason on one line, no traceback, no secret printed."""
    text = toml_config(dsns, sandbox.base_url, tmp_path / "reports")
    good = f'access_key_id = "{DEFAULT_ACCESS_KEY_ID}"\nsecret_access_key = "{DEFAULT_SECRET_ACCESS_KEY}"\n'
    assert good in text
    config = tmp_path / "batch.toml"
    config.write_text(text.replace(good, credentials), encoding="utf-8")
    completed = Cli(config=config, report_dir=tmp_path / "reports", dsns=dsns)("run", "--trigger", "test")
    assert completed.returncode == ExitCode.USAGE, explain(completed)
    reason = cli_error(completed)  # the one line on stderr; the run's summary on stdout says it too
    assert reason.startswith("configuration error: ") and expected in reason, reason
    assert f"InvestSuite at {sandbox.base_url}" in reason
    assert f"error: {reason.removeprefix('configuration error: ')}" in completed.stdout.splitlines()
    assert WRONG_SECRET not in completed.stdout + completed.stderr
