"""The audit chain's verification as pure functions: hashes, the walk's blame rules, witnesses, anchors."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from batch.domain.audit import (
    GENESIS_HASH,
    Anchor,
    AnchorError,
    AuditRow,
    ChainWalk,
    check_witnesses,
    hash_v1,
    hash_v2,
    parse_anchor_line,
    parse_expect,
    read_anchor_lines,
    row_hash,
    verification,
)
from batch.domain.oversight import Identity, OperatorOutcome, display_amount, require_reason
from batch.domain.payout import PayoutState
from batch.errors import OperatorRefusedError


def _chain(n: int, *, v1: int = 0) -> list[AuditRow]:
    """n rows chained in Python; the first ``v1`` of them in hash version 1."""
    rows: list[AuditRow] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        version = 1 if seq <= v1 else 2
        row = AuditRow(
            seq,
            version,
            f"2026-11-30T01:00:0{seq % 10}.000000Z",
            "payout_job",
            None if version == 1 else "batch-journal",
            None if version == 1 else "nightly",
            "test.event",
            None,
            None,
            f"P{seq}",
            f'{{"n":{seq}}}',
            prev,
            "",
        )
        row = row._replace(hash=row_hash(row))
        rows.append(row)
        prev = row.hash
    return rows


def _walk(rows: list[AuditRow]) -> ChainWalk:
    walk = ChainWalk()
    for row in rows:
        if not walk.feed(row):
            break
    walk.finish()
    return walk


def _rehashed(row: AuditRow, **changes: Any) -> AuditRow:
    changed = row._replace(**changes)
    return changed._replace(hash=row_hash(changed))


def test_an_intact_chain_of_both_versions_verifies() -> None:
    """Version 1 rows followed by version 2 rows verify; the head is the last row."""
    rows = _chain(6, v1=3)
    walk = _walk(rows)
    assert (walk.broken, walk.rows, walk.head) == (None, 6, (6, rows[-1].hash))


def test_length_prefixes_keep_fields_from_shifting() -> None:
    """Moving a '|' between two neighbouring fields changes the version 2 hash (it would not change version 1)."""
    args = (GENESIS_HASH, 1, "t", "job", "app")
    assert hash_v2(*args, "a|b", "c", None, None, None, "{}") != hash_v2(*args, "a", "b|c", None, None, None, "{}")
    assert hash_v1(GENESIS_HASH, 1, "t", "a|b", "c", None, None, None, "{}") == hash_v1(
        GENESIS_HASH, 1, "t", "a", "b|c", None, None, None, "{}"
    )


def test_an_edited_row_is_blamed() -> None:
    """A row whose content no longer gives its own hash is the first broken row; the one before is the last good."""
    rows = _chain(6)
    rows[2] = rows[2]._replace(details="{}")
    broken = _walk(rows).broken
    assert broken is not None and (broken.seq, broken.good_seq) == (3, 2)
    assert "does not match its own stored hash" in broken.problem


def test_a_row_rewritten_with_its_hash_is_blamed_not_its_successor() -> None:
    """Row 3 rewritten with a recomputed hash: row 5 still chains to row 4, so row 3 is blamed, both rows named."""
    rows = _chain(6)
    rows[2] = _rehashed(rows[2], details="{}")
    broken = _walk(rows).broken
    assert broken is not None and (broken.seq, broken.good_seq, broken.good_hash) == (3, 2, rows[1].hash)
    assert "broken link between seq 3 and seq 4" in broken.problem and "so row 3 was rewritten" in broken.problem


def test_a_rewritten_link_is_blamed_on_the_row_carrying_it() -> None:
    """Row 4's prev_hash and hash rewritten: row 5 no longer chains to row 4, so row 4 is blamed."""
    rows = _chain(6)
    rows[3] = _rehashed(rows[3], prev_hash="a" * 64)
    broken = _walk(rows).broken
    assert broken is not None and (broken.seq, broken.good_seq) == (4, 3)


def test_a_broken_link_at_the_newest_row_blames_the_row_before_and_says_so() -> None:
    """With no later row to tell, the row before is blamed and the text names the alternative."""
    rows = _chain(4)
    rows[2] = _rehashed(rows[2], details="{}")
    broken = _walk(rows).broken
    assert broken is not None and broken.seq == 3 and "is the newest row read" in broken.problem


def test_a_missing_row_is_named() -> None:
    """A gap in seq names the first missing row."""
    rows = _chain(6)
    del rows[2:4]
    broken = _walk(rows).broken
    assert broken is not None and (broken.seq, broken.good_seq) == (3, 2)
    assert "row(s) 3..4 missing between seq 2 and seq 5" in broken.problem


def test_a_version_1_row_after_version_2_rows_is_refused() -> None:
    """The hash version never goes back along the chain."""
    rows = _chain(4, v1=2)
    rows[3] = _rehashed(rows[3], hash_version=1, application_name=None, display_name=None)
    broken = _walk(rows).broken
    assert broken is not None and broken.seq == 4 and "downgraded" in broken.problem


def test_a_walk_from_a_checkpoint_blames_a_first_row_that_does_not_chain_to_it() -> None:
    """Starting after a trusted checkpoint, a first row whose prev_hash differs is itself blamed."""
    rows = _chain(6)
    walk = ChainWalk(after_seq=3, after_hash="b" * 64, after_version=2)
    for row in rows[3:]:
        walk.feed(row)
    assert walk.finish() is not None and walk.broken is not None and walk.broken.seq == 4


def test_witnesses_name_a_cut_tail_and_a_rewritten_range() -> None:
    """A witness beyond the head means rows were deleted; a different hash implicates rows after the last match."""
    rows = _chain(9)
    stored = {r.seq: r.hash for r in rows}
    cut = check_witnesses([Anchor(9, rows[8].hash, "a")], {}, (6, rows[5].hash))
    assert cut is not None and (cut.seq, cut.good_seq, cut.until_seq) == (7, 6, 9)
    assert "rows 7..9 were deleted" in cut.problem
    rewritten = check_witnesses(
        [Anchor(3, rows[2].hash, "a1"), Anchor(6, rows[5].hash, "a2"), Anchor(9, "c" * 64, "a3")], stored, (9, "x")
    )
    assert rewritten is not None and (rewritten.seq, rewritten.good_seq, rewritten.until_seq) == (7, 6, 9)
    assert "rewritten from a row in 7..9" in rewritten.problem
    assert check_witnesses([Anchor(6, rows[5].hash, "a")], stored, (9, "x")) is None


def test_the_chain_break_wins_when_it_lies_within_the_witness_range() -> None:
    """A content edit at row 8 and an anchor mismatch at row 9 (last match 6): row 8, the precise one, is reported."""
    rows = _chain(9)
    rows[7] = rows[7]._replace(details="{}")
    walk = ChainWalk()
    for row in rows:
        walk.feed(row)
    witness = check_witnesses(
        [Anchor(6, rows[5].hash, "a"), Anchor(9, "c" * 64, "b")], {r.seq: r.hash for r in rows}, (9, rows[8].hash)
    )
    result = verification(walk, witness, from_seq=0, anchors_checked=2)
    assert (result.ok, result.first_broken_seq, result.head_seq) == (False, 8, 7)


@pytest.mark.parametrize(
    ("text", "error"),
    [("12", "SEQ:HASH"), ("x:" + "a" * 64, "SEQ:HASH"), ("0:" + "a" * 64, "positive"), ("3:ABC", "64 lowercase")],
)
def test_expect_arguments_are_checked(text: str, error: str) -> None:
    """`--expect` needs a positive seq and 64 lowercase hex digits."""
    with pytest.raises(AnchorError, match=error):
        parse_expect(text)


def test_anchor_lines_round_trip_and_bad_lines_are_named() -> None:
    """An anchor's line reads back as the same anchor; a bad line is named by its number."""
    anchor = Anchor(5, "d" * 64, "batch audit anchor", run_id=str(uuid.uuid4()), at="2026-11-30T02:00:00.000000Z")
    (again,) = read_anchor_lines([anchor.line(), "\n"], "anchors.jsonl")
    assert (again.seq, again.hash, again.run_id, again.at, again.source) == (
        5,
        "d" * 64,
        anchor.run_id,
        anchor.at,
        "anchors.jsonl line 1",
    )
    with pytest.raises(AnchorError, match=r"anchors\.jsonl line 2"):
        read_anchor_lines([anchor.line(), '{"seq": 1}'], "anchors.jsonl")
    with pytest.raises(AnchorError, match="not a JSON line"):
        parse_anchor_line("seq=1", "f line 1")


@pytest.mark.parametrize("reason", ["", "  ", "\t\n"])
def test_blank_reasons_are_refused(reason: str) -> None:
    """An operator's reason must say something."""
    with pytest.raises(OperatorRefusedError, match="a reason is required"):
        require_reason(reason)


def test_an_approval_says_in_words_what_happened() -> None:
    """First of two: a second operator must approve; the last one: released, with the approvers."""
    held = OperatorOutcome(
        uuid.UUID(int=1), PayoutState.HELD, PayoutState.HELD, Decimal("60000.00000000"), "EUR", "alice", "cli", 1, 2
    )
    assert held.summary("approve", "ok") == (
        "approval 1 of 2 recorded for payout 00000000-0000-0000-0000-000000000001, 60,000.00 EUR;"
        " a second operator must approve (reason: ok)"
    )
    released = OperatorOutcome(
        uuid.UUID(int=1), PayoutState.HELD, PayoutState.PLANNED, Decimal(60000), "EUR", "bob", "cli", 2, 2, ("a", "bob")
    )
    assert released.summary("approve", "ok").endswith("released: the next run pays it (approved by a, bob; reason: ok)")
    assert display_amount(Decimal("1234567"), "JPY") == "1,234,567 JPY"


def test_whoami_says_why_the_jobs_role_may_not_act() -> None:
    """A member of batch_job may not act on payouts, a superuser being a member of every role."""
    superuser = Identity("postgres", "postgres", "batch-journal", True, True, True)
    assert not superuser.may_act_on_payouts
    assert "batch_job, batch_operator (superuser: a member of every role)" in superuser.memberships()
    assert superuser.describe()[-1].endswith("no: a member of batch_job (the job's role never acts as an operator)")
    assert Identity("alice", "alice", "cli", False, False, True).may_act_on_payouts
