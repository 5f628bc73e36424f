"""The planner's read-ahead yields pages in order, raises a fetch failure at its page, and stops early cleanly."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator

import pytest

from batch.errors import TransientError
from batch.service.read_ahead import read_ahead as _read_ahead


def _pages(n: int, fail_at: int | None = None, fetched: list[int] | None = None) -> Iterator[int]:
    for i in range(n):
        if i == fail_at:
            raise TransientError(f"page {i} failed")
        if fetched is not None:
            fetched.append(i)
        yield i


def test_pages_come_in_order_and_all_of_them() -> None:
    """Every page is yielded once, in the listing's order."""
    assert list(_read_ahead(_pages(50))) == list(range(50))


def test_a_fetch_failure_is_raised_after_the_pages_before_it() -> None:
    """Pages before the failing one are planned; then the fetch's own error is raised in the planner's thread."""
    seen: list[int] = []
    with pytest.raises(TransientError, match="page 3 failed"):
        for page in _read_ahead(_pages(10, fail_at=3)):
            seen.append(page)
    assert seen == [0, 1, 2]


def test_stopping_early_reads_at_most_two_pages_ahead_and_ends_the_reader() -> None:
    """A planner that stops (error) leaves no reader thread behind and did not fetch the whole listing."""
    fetched: list[int] = []
    before = threading.active_count()
    reader = _read_ahead(_pages(1000, fetched=fetched))
    assert isinstance(reader, Generator)  # read_ahead is a generator function: it can be closed
    assert next(reader) == 0
    reader.close()  # what a for-loop does when its body raises
    assert threading.active_count() == before
    assert len(fetched) <= 3
