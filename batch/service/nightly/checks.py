"""What ``batch run`` refuses before it records anything (exit code 2, one line naming the problem).

- The business date must lie in the run window: not after tomorrow in ``[run] timezone``, and not before
  the journal's first business date (once the journal has runs). An earlier date is a backfill: it needs
  a reason (``--backfill-reason``), which the run records in its parameters and its ``run.started`` row.
- Every ``--portfolio`` id must be known to InvestSuite (a 404 would otherwise be recorded as a HOLD of
  a portfolio that does not exist).
"""

from __future__ import annotations

from datetime import date, timedelta

from batch.errors import NotFoundError, PayloadError, UsageError
from batch.service.context import Services
from batch.service.nightly.run import RunRequest


def window_problem(
    business_date: date,
    *,
    today: date,
    timezone: str,
    first_business_date: date | None,
    backfill_reason: str | None,
) -> str | None:
    """Why ``business_date`` is outside the run window (None: it is inside, or a backfill with a reason)."""
    latest = today + timedelta(days=1)
    window = f"{first_business_date or ''}..{latest}"
    if business_date > latest:
        return f"--date {business_date} is after tomorrow ({latest} in {timezone}); the run window is {window}"
    if first_business_date is not None and business_date < first_business_date and backfill_reason is None:
        return (
            f"--date {business_date} is before the journal's first business date {first_business_date}; "
            f'the run window is {window} (to run an earlier date give --backfill-reason "why")'
        )
    return None


def check_run_request(app: Services, request: RunRequest, *, today: date) -> None:
    """Raise UsageError for a request a run must refuse before it writes its run row (call it under the lock)."""
    if request.backfill_reason is not None and not request.backfill_reason.strip():
        raise UsageError("--backfill-reason is blank: say why this date is run")
    if request.business_date is not None:
        problem = window_problem(
            request.business_date,
            today=today,
            timezone=app.settings.run.timezone,
            first_business_date=app.journal.first_business_date(),
            backfill_reason=request.backfill_reason,
        )
        if problem:
            raise UsageError(problem)
    unknown = []
    for portfolio_id in dict.fromkeys(request.portfolio_ids):
        try:
            app.client.get_portfolio(portfolio_id)
        except NotFoundError:
            unknown.append(portfolio_id)
        except PayloadError:
            continue  # it exists; the planner holds what it cannot read (MALFORMED_PAYLOAD)
    if unknown:
        raise UsageError(
            f"unknown portfolio id(s): InvestSuite at {app.client.where} answered 404 for {', '.join(unknown)}"
        )
