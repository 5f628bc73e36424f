"""What a real ``batch run`` writes on stderr (JSON or console logs), and listings that page and say when cut."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from batch.sandbox.seed import seed_scenario
from tests.e2e.conftest import World
from tests.e2e.helpers import explain, fetch

BUSINESS_DATE = "2026-11-20"
ANSI = re.compile(r"\x1b\[")


@dataclass(frozen=True)
class Night:
    world: World
    run: subprocess.CompletedProcess[str]
    run_id: str


@pytest.fixture(scope="module")
def night(new_world: Callable[[], World]) -> Night:
    """A seeded book (every scenario case) run once with JSON logs at INFO, by the planner and one worker."""
    world = new_world()
    seed_scenario(world.dsns.sandbox, world.dsns.ledger, size=30)
    logs = ("--log-format", "json", "--log-level", "INFO")
    run = world.cli(*logs, "run", "--date", BUSINESS_DATE, "--workers", "2", "--trigger", "test")
    assert run.returncode == 3, explain(run)
    (row,) = fetch(world.dsns.journal, "SELECT id FROM batch.runs")
    return Night(world, run, str(row["id"]))


def test_json_mode_writes_only_json_lines_each_with_run_id_and_business_date(night: Night) -> None:
    """--log-format json: every stderr line of a real run is one JSON event carrying run_id and business_date."""
    lines = night.run.stderr.splitlines()
    assert lines, explain(night.run)
    events = [json.loads(line) for line in lines]  # raises on a line that is not JSON
    for event in events:
        assert (event.get("run_id"), event.get("business_date")) == (night.run_id, BUSINESS_DATE), event
        assert event["level"] in ("info", "warning", "error")
    names = [e["event"] for e in events]
    assert names[0] == "run.started" and names.count("run.finished") == 1
    assert names.count("worker.finished") == 1  # the worker process's lines carry the run's context too
    assert "ledger.payout_posted" not in names  # per-payout lines are DEBUG


def test_console_mode_is_readable_text(night: Night) -> None:
    """--log-format console: no JSON, no colour codes off a terminal, event names with key=value fields."""
    again = night.world.cli("--log-format", "console", "--log-level", "INFO", "run", "--date", BUSINESS_DATE)
    assert again.returncode in (0, 3), explain(again)
    lines = again.stderr.splitlines()
    assert lines and not ANSI.search(again.stderr)
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    (started,) = [line for line in lines if "run.started" in line]
    assert re.search(r"\[info\s*\] run\.started", started), started
    assert "business_date=2026-11-20" in started and re.search(r"run_id=[0-9a-f-]{36}", started), started


def test_payouts_all_pages_with_limit_and_offset_and_says_when_cut(night: Night) -> None:
    """`payouts --state all` lists every payout at its minor unit; a page says it was cut and where the rest starts."""
    journal = {str(r["id"]) for r in fetch(night.world.dsns.journal, "SELECT id FROM batch.payouts")}
    assert len(journal) > 10
    whole = night.world.cli("payouts", "--state", "all", "--limit", "10000")
    assert whole.returncode == 0, explain(whole)
    lines = whole.stdout.splitlines()
    rows, footer = lines[1:-1], lines[-1]
    assert footer == f"{len(journal)} payouts"
    assert {row.split()[0] for row in rows} == journal
    assert len(rows) == len(journal)
    for row in rows:
        flow, amount, ccy = row.split()[1], *row.split()[4:6]
        assert flow in ("withdrawal", "deposit"), row  # the flow column says which flow each operation is
        decimals = len(amount.partition(".")[2])
        assert decimals == {"EUR": 2, "USD": 2, "JPY": 0, "KWD": 3}[ccy], row  # never the journal's 8 decimals

    page = night.world.cli("payouts", "--state", "all", "--limit", "5", "--offset", "5")
    assert page.returncode == 0, explain(page)
    lines = page.stdout.splitlines()
    assert [line.split() for line in lines[1:-1]] == [row.split() for row in rows[5:10]]  # widths follow the page
    assert lines[-1] == f"showing 5 of {len(journal)} payouts from offset 5; --offset 10 for more"
