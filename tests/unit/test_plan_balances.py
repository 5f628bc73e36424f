"""The planner's one ledger query per page is retried through stamina when the ledger is unreachable, and only then."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any, cast

import pytest
import stamina
from structlog.testing import capture_logs

from batch.domain.model import LedgerView
from batch.errors import LedgerUnavailableError, PayloadError
from batch.service.planning.withdrawals import Planner


class FlakyLedger:
    """``available_balances`` fails with ``error`` ``failures`` times, then answers 100.00 EUR per account."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or LedgerUnavailableError("ledger at ledger-db:5432/ledger unreachable: connection refused")
        self.queries: list[list[str]] = []

    def available_balances(self, references: list[str]) -> dict[str, LedgerView]:
        self.queries.append(list(references))
        if self.failures:
            self.failures -= 1
            raise self.error
        return {ref: LedgerView(ref, "EUR", Decimal("100.00")) for ref in references}


def _planner(ledger: FlakyLedger) -> Planner:
    unused = cast(Any, None)  # _balances reads the ledger only
    return Planner(
        journal=unused,
        ledger=cast(Any, ledger),
        client=unused,
        policy=unused,
        accounts=unused,
        run_id=uuid.uuid4(),
        business_date=date(2026, 11, 30),
        dry_run=False,
        actor="test",
    )


def test_an_unreachable_ledger_is_queried_again_and_its_answer_used() -> None:
    """Two transient failures, then the balances: three queries, two plan.ledger_retry events, the answer returned."""
    ledger = FlakyLedger(failures=2)
    planner = _planner(ledger)
    with capture_logs() as logs:
        balances = planner._balances(["CASH-1", "CASH-2"])
    assert balances["CASH-2"] == LedgerView("CASH-2", "EUR", Decimal("100.00"))
    assert ledger.queries == [["CASH-1", "CASH-2"]] * 3
    assert planner.stats.ledger_queries == 3
    assert [e for e in logs if e["event"] == "plan.ledger_retry"] == [
        {"event": "plan.ledger_retry", "log_level": "warning", "attempt": 1},
        {"event": "plan.ledger_retry", "log_level": "warning", "attempt": 2},
    ]


def test_the_ledger_query_is_tried_four_times_at_most() -> None:
    """A ledger that stays unreachable: four queries, then its error reaches the planner's caller."""
    ledger = FlakyLedger(failures=10)
    with pytest.raises(LedgerUnavailableError):
        _planner(ledger)._balances(["CASH-1"])
    assert len(ledger.queries) == 4


def test_a_permanent_ledger_error_is_not_retried() -> None:
    """An error that is not transient is raised after the first query."""
    ledger = FlakyLedger(failures=1, error=PayloadError("ledger answered a row without a currency"))
    with pytest.raises(PayloadError):
        _planner(ledger)._balances(["CASH-1"])
    assert len(ledger.queries) == 1


def test_stamina_governs_the_ledger_retries() -> None:
    """With stamina's testing mode at one attempt, the first transient failure is final: retries are stamina's."""
    ledger = FlakyLedger(failures=1)
    with stamina.set_testing(True, attempts=1), pytest.raises(LedgerUnavailableError):
        _planner(ledger)._balances(["CASH-1"])
    assert len(ledger.queries) == 1
