"""What the command shows people: tables, amounts at the minor unit, paging notes, one-line errors, argument types."""

from __future__ import annotations

import argparse
import io
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from batch.adapters.journal.listings import Page
from batch.entrypoints.console import (
    Column,
    amount_text,
    paging_line,
    print_table,
    report_error,
    whole_number,
    writable_file,
)
from batch.errors import UsageError
from batch.logs import configure_logging, reset_logging

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PAYOUT_ID = "9bb5f6d9-8323-44b0-a676-ef9f5731dc15"
COLUMNS = (
    Column("payout id"),
    Column("portfolio"),
    Column("state"),
    Column("amount", "right"),
    Column("ccy"),
    Column("date"),
    Column("step / reason", fold=True),
)
ROW = (PAYOUT_ID, "P01KDVDNA0D5DHA43P243B0S34N", "HELD", "60000.00", "EUR", "2026-11-30", "[bold]OVER_PAYOUT_CAP[/]")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    reset_logging()


@pytest.mark.parametrize(
    ("amount", "currency", "raw", "shown"),
    [
        (Decimal("60000.00000000"), "EUR", None, "60000.00"),
        (Decimal("1234.00000000"), "JPY", None, "1234"),
        (Decimal("125.12500000"), "KWD", None, "125.125"),
        (Decimal("0E-8"), "EUR", None, "0.00"),
        (Decimal("100.00000000"), "XYZ", None, "100"),
        (None, "EUR", "-100", "-100"),
        (None, None, None, "-"),
    ],
)
def test_amounts_are_shown_at_the_currency_minor_unit(
    amount: Decimal | None, currency: str | None, raw: str | None, shown: str
) -> None:
    """Journal amounts (8 decimals) print at the minor unit; unknown currencies as recorded; no amount: raw or '-'."""
    assert amount_text(amount, currency, raw) == shown


def test_plain_table_is_one_unfolded_line_per_row_without_colour_or_markup() -> None:
    """Off a terminal: a header, one line per row (even a multi-line error), ids whole, no colour, '[...]' as is."""
    out = io.StringIO()
    print_table(COLUMNS, [ROW, (*ROW[:6], "x" * 300), (*ROW[:6], "HTTP 409:\nversion conflict")], out=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[3].endswith("HTTP 409: version conflict")
    assert lines[0].split("  ")[0] == "payout id"
    assert lines[1].split() == [*ROW[:6], "[bold]OVER_PAYOUT_CAP[/]"]
    assert lines[2].endswith("x" * 300)
    assert not ANSI.search(out.getvalue())
    assert all(line == line.rstrip() for line in lines)


def test_terminal_table_keeps_ids_whole_and_folds_only_the_text_columns() -> None:
    """On a terminal (80 columns) the table is drawn by rich; ids and amounts stay on one line."""
    out = _Terminal()
    print_table(COLUMNS, [(*ROW[:6], "NO_LEDGER_ACCOUNT: " + "a long error text " * 8)], out=out)
    screen = ANSI.sub("", out.getvalue())
    assert "─" in screen  # rich's header rule
    assert PAYOUT_ID in screen and "P01KDVDNA0D5DHA43P243B0S34N" in screen and "60000.00" in screen
    assert len(screen.splitlines()) > 3  # the error text folded over several lines


@pytest.mark.parametrize(
    ("items", "offset", "total", "line"),
    [
        (3, 0, 3, "3 payouts"),
        (1, 0, 1, "1 payout"),
        (0, 0, 0, "0 payouts"),
        (200, 0, 1234, "showing 200 of 1,234 payouts; --offset 200 for more"),
        (200, 200, 1234, "showing 200 of 1,234 payouts from offset 200; --offset 400 for more"),
        (34, 1200, 1234, "showing 34 of 1,234 payouts from offset 1,200"),
        (0, 5000, 1234, "showing 0 of 1,234 payouts from offset 5,000"),
    ],
)
def test_paging_line_says_when_the_listing_was_cut(items: int, offset: int, total: int, line: str) -> None:
    """A whole listing is counted; a cut one says how many of how many and the offset of the rest."""
    assert paging_line(Page(list(range(items)), offset, total), "payout") == line


def test_whole_number_refuses_values_out_of_range_or_not_numbers() -> None:
    """The --limit/--offset type accepts its bounds and refuses anything else with the range in the message."""
    limit = whole_number(1, 10_000)
    assert (limit("1"), limit("10000")) == (1, 10_000)
    for bad in ("0", "-5", "10001", "abc", "1.5", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a whole number from 1 to 10,000"):
            limit(bad)


def test_writable_file_names_the_missing_folder(tmp_path: Path) -> None:
    """An output file in a folder that does not exist, or a folder given as the file, is a usage error."""
    assert writable_file(tmp_path / "x.html") == tmp_path / "x.html"
    with pytest.raises(UsageError, match=r"cannot write /nonexistent/x.html: the folder /nonexistent does not exist"):
        writable_file(Path("/nonexistent/x.html"))
    with pytest.raises(UsageError, match="it is a folder"):
        writable_file(tmp_path)


def test_an_error_is_one_plain_line_in_console_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """Console logs: the error is one plain line on stderr, newlines folded and DSN passwords masked."""
    configure_logging("INFO", "console", stream=io.StringIO())
    code = report_error("error: cannot connect to postgresql://job:Pw-9x@db:5432/journal\nsecond line", 1)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err == "error: cannot connect to postgresql://job:***@db:5432/journal second line\n"


@pytest.mark.parametrize("level", ["INFO", "CRITICAL"])
def test_an_error_is_one_cli_error_json_event_in_json_mode(capsys: pytest.CaptureFixture[str], level: str) -> None:
    """JSON logs: the error is one cli.error event with error and exit_code, whatever the log level."""
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    assert report_error("usage error: batch payouts: argument --limit: bad", 2) == 2
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["exit_code"]) == ("cli.error", "error", 2)
    assert event["error"] == "usage error: batch payouts: argument --limit: bad"
    assert capsys.readouterr().err == ""


def test_a_traceback_only_when_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    """With the exception passed (--debug) console mode prints its traceback above the line; JSON carries it."""
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        caught = exc
    configure_logging("INFO", "console", stream=io.StringIO(), tracebacks=True)
    report_error("error: RuntimeError: boom", 1, exc_info=caught)
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and err.endswith("\nerror: RuntimeError: boom\n")
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream, tracebacks=True)
    report_error("error: RuntimeError: boom", 1, exc_info=caught)
    (event,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "Traceback" in event["exception"] and "RuntimeError: boom" in event["exception"]


def test_listing_amounts_are_exact_and_runs_say_when_interrupted() -> None:
    """Listings pad to the minor unit but never round (10.005 EUR); `batch runs` says what an interrupted run left."""
    from datetime import UTC, date, datetime  # noqa: PLC0415
    from decimal import Decimal  # noqa: PLC0415

    from batch.service.nightly.history import history_row  # noqa: PLC0415

    assert amount_text(Decimal("10.005"), "EUR") == "10.005"
    assert amount_text(Decimal("10.00000000"), "EUR") == "10.00"
    run = {
        "id": "r1",
        "business_date": date(2026, 7, 1),
        "status": "INTERRUPTED",
        "dry_run": False,
        "exit_code": 3,
        "trigger": "cron",
        "operator": "ops",
        "started_at": datetime(2026, 7, 1, 22, tzinfo=UTC),
        "finished_at": datetime(2026, 7, 1, 22, 1, tzinfo=UTC),
        "summary": {
            "totals": {"EUR": {"paid": "5260.005", "paid_count": 2}},
            "interrupted": {"signal": "SIGTERM", "in_flight": 4},
        },
    }
    row = history_row(run)
    assert row[2] == "INTERRUPTED"
    assert "EUR paid 5260.005 (2)" in row[-1] and "interrupted by SIGTERM: 4 in flight" in row[-1], row[-1]
