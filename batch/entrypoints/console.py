"""What the ``batch`` command shows people: tables, amounts, paging notes, one-line errors, checked arguments.

- Tables are rich tables: boxed and coloured on a terminal; off a terminal (a pipe, a file, cron mail)
  plain text without colour or box, one row per line, columns apart by two spaces, never folded.
- Amounts are shown at their currency's minor unit ("250.00", "1234", "125.125").
- A listing that stops before its end says so, and how to see the rest.
- An error is ONE line on stderr: plain text, or a ``cli.error`` JSON event when the logs are JSON.
- Argument types refuse bad values with one line (through argparse, as a usage error: exit code 2).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple, TextIO

import structlog
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from batch.adapters.journal.listings import Page
from batch.domain.money import exact, minor_unit
from batch.errors import UnknownCurrencyError, UsageError
from batch.logs import json_logging, scrub

Justify = Literal["left", "right"]


class Column(NamedTuple):
    """A table column: its heading, its alignment, and whether a terminal may fold it (ids never fold)."""

    name: str
    justify: Justify = "left"
    fold: bool = False


#: the widest a plain-text table may be (a terminal's own width applies on a terminal)
_PLAIN_WIDTH = 10_000
#: a column that may fold is given at least this width on a terminal
FOLDED_WIDTH = 24


def amount_text(amount: Decimal | None, currency: str | None, raw: str | None = None) -> str:
    """An amount at the currency's minor unit, never rounded (10.005 EUR stays 10.005); as recorded when the
    currency is unknown; ``raw`` when no amount."""
    if amount is None:
        return raw if raw is not None else "-"
    if currency:
        try:
            minor_unit(currency)
            return format(exact(amount, currency), "f")
        except UnknownCurrencyError:
            pass
    return f"{amount.normalize():f}"


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[str]], *, out: TextIO | None = None) -> None:
    """Print a table: rich on a terminal, plain aligned text (one line per row, no trailing blanks) otherwise."""
    target = out if out is not None else sys.stdout
    terminal = bool(getattr(target, "isatty", lambda: False)())
    table = Table(
        box=box.SIMPLE_HEAD if terminal else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if terminal else "",
    )
    cells = [[" ".join(cell.splitlines()) for cell in row] for row in rows]  # one line per row
    for column in columns:
        table.add_column(column.name, justify=column.justify, no_wrap=not (terminal and column.fold), overflow="fold")
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))  # Text: a cell's "[...]" is never read as markup
    if terminal:
        console = Console(file=target, highlight=False)
        needed = _narrowest(columns, cells)
        if needed > console.width:  # too narrow for whole ids: let the terminal wrap the lines instead
            console = Console(file=target, highlight=False, width=needed)
        console.print(table)
        return
    buffer = io.StringIO()
    Console(file=buffer, width=_PLAIN_WIDTH, no_color=True, highlight=False, color_system=None).print(table)
    target.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def _narrowest(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> int:
    """The narrowest a terminal table can be with every column that may not fold shown whole."""
    widths = [
        min(FOLDED_WIDTH, max(len(column.name), *(len(row[i]) for row in rows)))
        if column.fold
        else max(len(column.name), *(len(row[i]) for row in rows))
        for i, column in enumerate(columns)
    ]
    return sum(widths) + 3 * (len(columns) - 1)  # a blank, the box's divider, a blank


def paging_line(page: Page[Any], noun: str, plural: str | None = None) -> str:
    """``12 payouts``, or ``showing 200 of 1,234 payouts; --offset 200 for more`` when the page was cut."""
    many = plural or f"{noun}s"
    shown = len(page.items)
    if page.offset == 0 and not page.cut:
        return f"{shown:,} {noun if shown == 1 else many}"
    start = f" from offset {page.offset:,}" if page.offset else ""
    more = f"; --offset {page.offset + shown} for more" if page.cut else ""
    return f"showing {shown:,} of {page.total:,} {many}{start}{more}"


def report_error(message: str, exit_code: int, *, exc_info: BaseException | None = None) -> int:
    """Write one error line to stderr (a ``cli.error`` JSON event in JSON mode); return ``exit_code``.

    ``exc_info`` (only with ``--debug``) adds the traceback: in the JSON event, or printed above the line.
    """
    line = " ".join(scrub(message).split())
    if json_logging():
        # whatever --log-level says (even CRITICAL), the error line is written
        unfiltered = structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
        unfiltered.error("cli.error", error=line, exit_code=exit_code, exc_info=exc_info)
    else:
        if exc_info is not None:
            import traceback  # noqa: PLC0415

            traceback.print_exception(exc_info, file=sys.stderr)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    return exit_code


def writable_file(path: Path) -> Path:
    """An output file whose folder exists (else UsageError naming the folder)."""
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"cannot write {path}: the folder {folder} {what}")
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder; give a file name")
    return path


# -- argument types (argparse turns their ArgumentTypeError into a one-line usage error) ----------------


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low:,} to {high:,}, not {text!r}")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e7:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (0 or more), not {text!r}")
    return value


def iso_date(text: str) -> date:
    """An argparse type: a calendar date written YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def an_id(text: str) -> uuid.UUID:
    """An argparse type: a run or payout id (a UUID)."""
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an id: {text!r}") from exc
