"""The run window of ``batch run --date``: not after tomorrow, not before the journal's first date without a reason."""

from __future__ import annotations

from datetime import date

import pytest

from batch.service.nightly.checks import window_problem

TODAY = date(2026, 11, 30)
FIRST = date(2026, 6, 1)


@pytest.mark.parametrize(
    ("business_date", "first", "reason"),
    [
        (TODAY, FIRST, None),
        (date(2026, 12, 1), FIRST, None),  # tomorrow: a run started before midnight for the next day
        (FIRST, FIRST, None),
        (date(1990, 1, 1), None, None),  # an empty journal has no lower bound yet
        (date(2026, 5, 1), FIRST, "re-run after the incident INC-42"),
    ],
    ids=["today", "tomorrow", "first-date", "empty-journal", "backfill-with-reason"],
)
def test_dates_inside_the_window_or_backfills_with_a_reason_pass(
    business_date: date, first: date | None, reason: str | None
) -> None:
    """Today, tomorrow, the first date, any date on an empty journal, or an earlier one with a reason."""
    problem = window_problem(
        business_date, today=TODAY, timezone="Europe/Brussels", first_business_date=first, backfill_reason=reason
    )
    assert problem is None


def test_a_date_after_tomorrow_is_refused_even_with_a_backfill_reason() -> None:
    """The day after tomorrow is outside the window, whatever the reason; the message names the window."""
    for reason in (None, "because"):
        problem = window_problem(
            date(2026, 12, 2),
            today=TODAY,
            timezone="Europe/Brussels",
            first_business_date=FIRST,
            backfill_reason=reason,
        )
        assert problem == (
            "--date 2026-12-02 is after tomorrow (2026-12-01 in Europe/Brussels);"
            " the run window is 2026-06-01..2026-12-01"
        )


def test_a_date_before_the_first_business_date_needs_a_backfill_reason() -> None:
    """Before the journal's first business date: refused, naming the window and the override."""
    problem = window_problem(
        date(1900, 1, 1), today=TODAY, timezone="Europe/Brussels", first_business_date=FIRST, backfill_reason=None
    )
    assert problem == (
        "--date 1900-01-01 is before the journal's first business date 2026-06-01; the run window is"
        ' 2026-06-01..2026-12-01 (to run an earlier date give --backfill-reason "why")'
    )
