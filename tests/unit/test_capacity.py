"""How many processes a run starts: never more than the database servers can connect (issue 27, 16 x 32)."""

from __future__ import annotations

from batch.service.nightly.capacity import processes_that_fit


def test_sixteen_processes_of_36_connections_each_fit_five_workers_on_a_400_connection_server() -> None:
    """395 free, 73 a worker (journal and ledger on one server, plus the lease): the planner and 5 workers."""
    assert processes_that_fit(16, [(395, 73)]) == 6


def test_what_fits_is_what_the_tightest_server_allows() -> None:
    """The journal's server has room for all, the ledger's for two workers: three processes."""
    assert processes_that_fit(8, [(1000, 37), (80, 36)]) == 3


def test_a_run_never_asks_for_more_than_it_was_told_and_never_for_fewer_than_its_planner() -> None:
    """Plenty of room keeps the asked count; no room at all still runs the planner alone (it is connected)."""
    assert processes_that_fit(4, [(10_000, 52)]) == 4
    assert processes_that_fit(4, [(3, 52)]) == 1
