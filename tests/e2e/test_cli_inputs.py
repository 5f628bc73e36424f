"""Bad input through the real command: exit 2 with one line naming the problem, no traceback, nothing recorded.

The argument checks need no database (the cheapest command that reaches each check); the run window and
unknown portfolios need the journal and the sandbox (one world for the module).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from batch.domain.business_date import business_today
from batch.service.nightly.run import ExitCode
from tests.e2e.conftest import World
from tests.e2e.helpers import CLI_TIMEOUT_SECONDS, cli_error, explain, fetch

FIRST_DATE = date(2026, 11, 20)


def _batch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``batch ARGS`` with no config and no BATCH_* variables (JSON logs: stderr is a pipe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "batch", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        env=env,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("payouts", "--limit", "-5"), "batch payouts: argument --limit: must be a whole number from 1 to 10,000"),
        (("payouts", "--limit", "100000"), "argument --limit: must be a whole number from 1 to 10,000, not '100000'"),
        (("runs", "--offset", "-1"), "batch runs: argument --offset: must be a whole number from 0 to"),
        (("run", "--date", "2026-13-01"), "batch run: argument --date: not a date (YYYY-MM-DD): '2026-13-01'"),
        (("report", "--date", "30/11/2026"), "batch report: argument --date: not a date (YYYY-MM-DD): '30/11/2026'"),
        (("runs", "--date", "yesterday"), "batch runs: argument --date: not a date (YYYY-MM-DD): 'yesterday'"),
        (
            ("report", "--date", "2026-11-20", "-o", "/nonexistent/x.html"),
            "cannot write /nonexistent/x.html: the folder /nonexistent does not exist",
        ),
        (("run", "--workers", "0"), "batch run: argument --workers: must be a whole number from 1 to 64"),
        (("--log-level", "LOUD", "runs"), "batch: argument --log-level: invalid choice: 'LOUD'"),
        (("payout", "approve", "not-an-id", "--reason", "x"), "argument payout_id: not an id: 'not-an-id'"),
    ],
    ids=[
        "negative-limit",
        "huge-limit",
        "negative-offset",
        "run-date",
        "report-date",
        "runs-date",
        "missing-output-folder",
        "zero-workers",
        "log-level",
        "payout-id",
    ],
)
def test_bad_arguments_exit_2_with_one_json_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    """Each bad argument: exit 2, stderr exactly one cli.error JSON line naming it, nothing on stdout."""
    done = _batch(*args, cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE, explain(done)
    assert len(done.stderr.splitlines()) == 1 and done.stdout == "", explain(done)
    error = cli_error(done)
    assert error.startswith("usage error: ") and expected in error, error
    assert list(tmp_path.iterdir()) == []


def test_console_mode_error_is_one_plain_line(tmp_path: Path) -> None:
    """With --log-format console the same error is one plain text line, not JSON."""
    done = _batch("--log-format", "console", "payouts", "--limit", "-5", cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE, explain(done)
    assert done.stderr.splitlines() == [
        "usage error: batch payouts: argument --limit: must be a whole number from 1 to 10,000, not '-5'"
        " (see batch payouts --help)"
    ]


def test_unreachable_database_is_a_technical_failure_in_one_line_and_a_traceback_only_with_debug(
    tmp_path: Path,
) -> None:
    """An unreachable journal: exit 1, one line naming host:port without the password; --debug adds the traceback."""
    config = tmp_path / "dead.toml"
    config.write_text(
        "[database]\n"
        'journal_dsn = "postgresql://job:Pw-dead-7@127.0.0.1:1/journal?connect_timeout=2"\n'
        'ledger_dsn = "postgresql://job:Pw-dead-7@127.0.0.1:1/ledger?connect_timeout=2"\n',
        encoding="utf-8",
    )
    done = _batch("--config", str(config), "runs", cwd=tmp_path)
    assert done.returncode == ExitCode.TECHNICAL_FAILURE, explain(done)
    assert len(done.stderr.splitlines()) == 1, explain(done)
    assert cli_error(done) == "error: journal database at 127.0.0.1:1/journal unavailable: connection refused"
    debug = _batch("--config", str(config), "--log-format", "console", "--debug", "runs", cwd=tmp_path)
    assert debug.returncode == ExitCode.TECHNICAL_FAILURE, explain(debug)
    assert debug.stderr.startswith("Traceback (most recent call last):"), explain(debug)
    assert debug.stderr.splitlines()[-1] == cli_error(done)
    assert "Pw-dead-7" not in done.stderr + debug.stderr


# -- the run's own checks: the journal and the sandbox ---------------------------------------------------


@pytest.fixture(scope="module")
def world(new_world: Callable[[], World]) -> World:
    """Fresh databases and an empty sandbox (runs decide nothing and finish at once)."""
    return new_world()


def _runs(world: World) -> list[dict[str, Any]]:
    return fetch(world.dsns.journal, "SELECT id, business_date, parameters FROM batch.runs ORDER BY started_at")


def test_unknown_portfolio_exits_2_naming_it_before_any_run_is_recorded(world: World) -> None:
    """`run --portfolio` with ids InvestSuite answers 404 for: exit 2 naming each, no run row, no audit row."""
    before = len(_runs(world))
    audit_before = fetch(world.dsns.journal, "SELECT count(*) AS n FROM batch.audit_log")[0]["n"]
    done = world.cli("run", "--portfolio", "NO-SUCH-1", "--portfolio", "NO-SUCH-2", "--trigger", "test")
    assert done.returncode == ExitCode.USAGE, explain(done)
    assert cli_error(done) == (
        f"usage error: unknown portfolio id(s): InvestSuite at {world.sandbox.base_url} answered 404 for"
        " NO-SUCH-1, NO-SUCH-2"
    )
    assert done.stdout == ""
    assert len(_runs(world)) == before
    assert fetch(world.dsns.journal, "SELECT count(*) AS n FROM batch.audit_log")[0]["n"] == audit_before


def test_a_date_after_tomorrow_exits_2_naming_the_window(world: World) -> None:
    """`run --date` five days ahead: exit 2 naming tomorrow in the run time zone; nothing recorded."""
    before = len(_runs(world))
    ahead = business_today("Europe/Brussels") + timedelta(days=5)
    done = world.cli("run", "--date", ahead.isoformat(), "--trigger", "test")
    assert done.returncode == ExitCode.USAGE, explain(done)
    assert re.fullmatch(
        rf"usage error: --date {ahead} is after tomorrow \(\d{{4}}-\d\d-\d\d in Europe/Brussels\); "
        r"the run window is (\d{4}-\d\d-\d\d)?\.\.\d{4}-\d\d-\d\d",
        cli_error(done),
    ), done.stderr
    assert len(_runs(world)) == before


def test_a_date_before_the_first_business_date_needs_a_backfill_reason_which_is_recorded(world: World) -> None:
    """Before the journal's first date: exit 2 (blank reason too); with a reason it runs and records the reason."""
    first = world.cli("run", "--date", FIRST_DATE.isoformat(), "--trigger", "test")
    assert first.returncode == ExitCode.OK, explain(first)
    earlier = (FIRST_DATE - timedelta(days=10)).isoformat()

    refused = world.cli("run", "--date", earlier, "--trigger", "test")
    assert refused.returncode == ExitCode.USAGE, explain(refused)
    assert cli_error(refused).startswith(
        f"usage error: --date {earlier} is before the journal's first business date {FIRST_DATE}; the run window is"
        f" {FIRST_DATE}.."
    )
    blank = world.cli("run", "--date", earlier, "--backfill-reason", "   ", "--trigger", "test")
    assert blank.returncode == ExitCode.USAGE, explain(blank)
    assert cli_error(blank) == "usage error: --backfill-reason is blank: say why this date is run"
    assert [r["business_date"] for r in _runs(world)].count(date.fromisoformat(earlier)) == 0

    reason = "INC-7: the ledger was down on that date"
    backfill = world.cli("run", "--date", earlier, "--backfill-reason", reason, "--trigger", "test")
    assert backfill.returncode == ExitCode.OK, explain(backfill)
    (run,) = [r for r in _runs(world) if r["business_date"] == date.fromisoformat(earlier)]
    assert run["parameters"]["backfill_reason"] == reason
    (started,) = fetch(
        world.dsns.journal,
        "SELECT details::text AS details FROM batch.audit_log WHERE action = 'run.started' AND run_id = %s",
        [run["id"]],
    )
    assert json.loads(started["details"])["parameters"]["backfill_reason"] == reason
