"""Several processes split the client-side rate limit so that together they stay under it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from batch.bootstrap import App
from batch.service.nightly.run import _share_rate_limit


class _Client:
    def __init__(self) -> None:
        self.limits: list[float | None] = []

    def limit_rate(self, per_second: float | None) -> None:
        self.limits.append(per_second)


def _app(rate: float | None) -> tuple[App, _Client]:
    client = _Client()
    settings: Any = SimpleNamespace(investsuite=SimpleNamespace(rate_limit_per_second=rate))
    return cast(App, SimpleNamespace(settings=settings, client=client)), client


def test_each_of_four_processes_gets_a_quarter_of_the_rate() -> None:
    """The planner limits itself to R/4 and hands the workers R/4 through their BATCH_* environment."""
    app, client = _app(100.0)
    overrides = _share_rate_limit(app, 4)
    assert client.limits == [25.0]
    assert overrides == {"BATCH_INVESTSUITE__RATE_LIMIT_PER_SECOND": "25.0"}


def test_no_rate_limit_means_nothing_to_share() -> None:
    """Without a configured limit neither the planner nor the workers get one."""
    app, client = _app(None)
    assert _share_rate_limit(app, 3) == {}
    assert client.limits == []
