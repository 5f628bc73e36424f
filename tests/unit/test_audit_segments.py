"""The pure parts of the parallel full verification and of the anchors' trust: cuts, joins, trusted prefix."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from batch.adapters.journal.audit_segments import Segment, cuts, joined
from batch.domain.audit import GENESIS_HASH, Anchor, trusted_until

H = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]


@given(st.integers(0, 10_000_000), st.integers(1, 64), st.integers(1, 100_000))
def test_cuts_cover_every_row_once_in_order(head: int, processes: int, min_rows: int) -> None:
    """The ranges are contiguous from 1 to head, at most `processes` of them, none shorter than min_rows unless one."""
    ranges = cuts(head, processes, min_rows)
    assert len(ranges) <= max(processes, 1)
    if head == 0:
        assert ranges == []
        return
    assert ranges[0][0] == 1 and ranges[-1][1] == head
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    if len(ranges) > 1:
        assert min(last - first + 1 for first, last in ranges) >= min_rows


def _segment(first: int, last: int, prev: str, end: str, *, ok: bool = True, v: tuple[int, int] = (2, 2)) -> Segment:
    return Segment(first, last, ok, last - first + 1, prev, v[0], end, v[1])


def test_segments_join_only_when_each_chains_to_the_next() -> None:
    """Intact segments join from genesis to the head; a wrong link, a broken segment or a downgrade does not."""
    good = [_segment(1, 5, GENESIS_HASH, H[0]), _segment(6, 9, H[0], H[1])]
    assert joined(good, (9, H[1]))
    assert not joined([good[0], _segment(6, 9, H[2], H[1])], (9, H[1]))
    assert not joined([good[0], _segment(6, 9, H[0], H[1], ok=False)], (9, H[1]))
    assert not joined([_segment(1, 5, GENESIS_HASH, H[0], v=(2, 2)), _segment(6, 9, H[0], H[1], v=(1, 1))], (9, H[1]))
    assert not joined(good, (9, H[3])), "the head moved or was rewritten"
    assert not joined([_segment(1, 5, H[3], H[0]), good[1]], (9, H[1])), "the first row must follow genesis"


def test_checkpoints_are_trusted_only_up_to_the_last_anchor_that_agrees() -> None:
    """All anchors agree: no limit; the first that disagrees limits trust to the agreeing anchor below it."""
    anchors = [Anchor(3, H[0], "f line 1"), Anchor(7, H[1], "f line 2"), Anchor(9, H[2], "f line 3")]
    assert trusted_until(anchors, {3: H[0], 7: H[1], 9: H[2]}) >= 2**62
    assert trusted_until(anchors, {3: H[0], 7: H[3], 9: H[2]}) == 3
    assert trusted_until(anchors, {3: H[3], 7: H[1], 9: H[2]}) == 0
    assert trusted_until(anchors, {3: H[0], 7: H[1]}) == 7, "a missing anchored row disagrees"
    assert trusted_until([], {}) >= 2**62
