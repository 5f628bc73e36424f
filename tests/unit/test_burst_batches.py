"""The listener's burst batching without I/O: triggers arriving together form one batch, each gets its own
portfolio's outcome, and a batch that fails as a whole is retried portfolio by portfolio (issue 24)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from batch.adapters.journal.bus import DecisionSummary
from batch.domain.records import PayoutRecord
from batch.service.bus.withdrawal import PlanAndExecute

Round = dict[str, tuple[DecisionSummary | None, PayoutRecord | None, uuid.UUID]]


class Planned(PlanAndExecute):
    """``PlanAndExecute`` whose planning round is recorded instead of run; a portfolio named BAD fails its round."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(app=cast(Any, None), store=cast(Any, None), runs=cast(Any, None), **kw)
        self.rounds: list[list[str]] = []

    def _round(self, portfolio_ids: list[str]) -> Round:
        self.rounds.append(sorted(portfolio_ids))
        if "BAD" in portfolio_ids:
            raise RuntimeError("this portfolio breaks the planner")
        run = uuid.uuid4()
        return {pid: (DecisionSummary("PAY", pid, None, None, None, None), None, run) for pid in portfolio_ids}


def _burst(batcher: Planned, ids: list[str]) -> list[str | Exception]:
    def one(pid: str) -> str | Exception:
        try:
            return batcher.trigger(pid, f"event-{pid}")
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        return list(pool.map(one, ids))


def test_triggers_arriving_together_are_one_batch_with_their_own_outcomes() -> None:
    """Eight triggers within the window: one planning round of all eight; each outcome names its portfolio."""
    batcher = Planned(window=30.0, max_batch=8)
    ids = [f"P{i}" for i in range(8)]
    outcomes = _burst(batcher, ids)
    assert batcher.batch_sizes == [8] and batcher.rounds == [sorted(ids)]
    assert outcomes == [f"PAY {pid}" for pid in ids]


def test_a_lone_trigger_waits_only_the_window() -> None:
    """One trigger: a batch of one after the (short) window."""
    batcher = Planned(window=0.01)
    assert batcher.trigger("P1", "e1") == "PAY P1"
    assert batcher.batch_sizes == [1]


def test_one_failing_portfolio_does_not_fail_the_others() -> None:
    """The batch round fails: each portfolio is planned alone; only the bad one's trigger raises."""
    batcher = Planned(window=30.0, max_batch=4)
    outcomes = _burst(batcher, ["P1", "BAD", "P2", "P3"])
    assert batcher.rounds[0] == ["BAD", "P1", "P2", "P3"]
    assert sorted(batcher.rounds[1:]) == [["BAD"], ["P1"], ["P2"], ["P3"]]
    assert [o for o in outcomes if isinstance(o, str)] == ["PAY P1", "PAY P2", "PAY P3"]
    [error] = [o for o in outcomes if isinstance(o, Exception)]
    with pytest.raises(RuntimeError, match="breaks the planner"):
        raise error
