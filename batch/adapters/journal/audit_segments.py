"""The full verification of the audit chain in parallel: one process per segment of the chain.

The chain 1..head is cut into equal seq ranges; each process opens its own connection, reads its range a
page at a time and recomputes every hash (``ChainWalk`` from the segment's first row, trusting only that
row's stored prev_hash). The parent then checks what no segment can see alone: each segment's last hash
is the next segment's first prev_hash, hash versions never go down across a cut, the first segment starts
at the genesis hash, and the chain passes through every witness (anchors and trusted checkpoints).

That is the fast path of an intact chain. When anything is wrong, or when people accepted broken rows
by re-anchoring (the walk must then jump past them), the caller verifies sequentially instead
(``AuditStore.verify_audit``), so the blame is exactly the one ``batch audit verify --full`` gives.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import args_row

from batch.adapters.journal.base import AUDIT
from batch.domain.audit import GENESIS_HASH, AuditRow, ChainWalk

#: rows per page of the chain walk
PAGE_ROWS = 10_000


def walk_rows(conn: psycopg.Connection[Any], walk: ChainWalk, *, after: int, until: int, batch_size: int) -> None:
    """Feed the rows after ``after`` up to ``until`` to the walk, a page at a time, until it breaks.

    The next page is read (by one helper thread, on this connection, while nothing else uses it) as the
    current one is hashed: the database's work and the hashing overlap. Memory: two pages.
    """
    with conn.cursor(row_factory=args_row(AuditRow)) as rows, ThreadPoolExecutor(1) as reader:

        def page_after(seq: int) -> list[AuditRow]:
            rows.execute(AUDIT.chain_between.pyformat, {"after": seq, "until": until, "n": batch_size})
            return rows.fetchall()

        page = page_after(after) if after < until else []
        while page:
            last = page[-1].seq
            ahead = reader.submit(page_after, last) if last < until else None
            for row in page:
                if not walk.feed(row):
                    if ahead is not None:
                        ahead.result()  # let the read finish before the cursor closes
                    return
            page = ahead.result() if ahead is not None else []


@dataclass(frozen=True)
class Segment:
    """What one process found in rows first..last: intact or not, and the ends the parent joins."""

    first: int
    last: int
    ok: bool
    rows: int
    first_prev_hash: str
    first_version: int
    last_hash: str
    last_version: int


#: below this many rows per process, starting one costs more than it saves
MIN_SEGMENT_ROWS = 50_000


def cuts(head: int, processes: int, min_rows: int = MIN_SEGMENT_ROWS) -> list[tuple[int, int]]:
    """Rows 1..head as at most ``processes`` contiguous, nearly equal (first, last) ranges of ``min_rows`` or more."""
    parts = max(1, min(processes, head // max(min_rows, 1)))
    size, extra = divmod(head, parts)
    ranges, first = [], 1
    for n in range(parts):
        last = first + size - 1 + (1 if n < extra else 0)
        ranges.append((first, last))
        first = last + 1
    return [r for r in ranges if r[0] <= r[1]]


def verify_segment(dsn: str, first: int, last: int, batch_size: int = PAGE_ROWS) -> Segment:
    """Recompute rows first..last on a connection of this process's own."""
    with psycopg.connect(dsn, autocommit=True, application_name="batch-audit-verify") as conn:
        ends = {
            int(seq): (str(prev_hash), int(version))
            for seq, _, prev_hash, version in conn.execute(AUDIT.hashes_at.pyformat, {"seqs": [first, last]})
        }
        if first not in ends:
            return Segment(first, last, False, 0, "", 0, "", 0)
        prev_hash, version = ends[first]
        walk = ChainWalk(first - 1, prev_hash, version)
        walk_rows(conn, walk, after=first - 1, until=last, batch_size=batch_size)
        broken = walk.finish()
    end_seq, end_hash = walk.head
    ok = broken is None and end_seq == last
    return Segment(first, last, ok, walk.rows, prev_hash, version, end_hash, ends.get(last, ("", 0))[1])


def joined(segments: Sequence[Segment], head: tuple[int, str]) -> bool:
    """Every segment intact, each one chaining to the next, from the genesis hash to the head."""
    if not segments:
        return head[0] == 0
    if segments[0].first_prev_hash != GENESIS_HASH or segments[-1].last_hash != head[1]:
        return False
    for before, after in itertools.pairwise(segments):
        if before.last_hash != after.first_prev_hash or before.last_version > after.first_version:
            return False
    return all(s.ok for s in segments)


def verify_in_parallel(
    dsn: str, head_seq: int, processes: int, *, min_rows: int = MIN_SEGMENT_ROWS, batch_size: int = PAGE_ROWS
) -> list[Segment]:
    """Each range of ``cuts`` verified by its own process (spawned: no connection is inherited)."""
    ranges = cuts(head_seq, processes, min_rows)
    if len(ranges) <= 1:
        return [verify_segment(dsn, first, last, batch_size) for first, last in ranges]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(ranges), mp_context=context) as pool:
        futures = [pool.submit(verify_segment, dsn, first, last, batch_size) for first, last in ranges]
        return [f.result() for f in futures]
