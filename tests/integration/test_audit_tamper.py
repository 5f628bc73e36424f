"""The audit log's hash chain against tampering behind the job's back.

A superuser can bypass the append-only triggers (``session_replication_role = replica`` skips
ordinary triggers, in the test's own transaction); the chain must still expose an edited, deleted,
reordered or re-hashed row, through ``Journal.verify_audit`` and ``batch audit verify`` (exit code 1,
naming the first broken seq). Cutting the tail or re-hashing from a point leaves a valid shorter or
different chain: only the anchors kept outside the database (``batch audit anchor``) show it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.anchors import read_anchors
from batch.adapters.journal import Anchor, AuditVerification, Journal
from batch.adapters.postgres import Dsns
from tests.fixtures.roles import operator_dsn

ROWS = 6
#: a thorough tamperer also erases the journal's own checkpoints (which would otherwise give them away)
FORGET_CHECKPOINTS = "DELETE FROM batch.audit_checkpoints"
V2_HASH = (
    "batch.audit_hash_v2(prev_hash, seq, at, actor, application_name, display_name, action, run_id, payout_id,"
    " portfolio_id, details)"
)


@pytest.fixture
def journal(journal_engine: Engine) -> Journal:
    """A journal whose audit log holds ROWS chained rows."""
    journal = Journal(journal_engine)
    _append(journal, 1, ROWS)
    return journal


def _append(journal: Journal, first: int, last: int) -> None:
    run_id = uuid.uuid4()
    for n in range(first, last + 1):
        journal.audit(actor="tester", action="run.test_event", run_id=run_id, portfolio_id=f"P{n}", details={"n": n})


@pytest.fixture
def config(dsns: Dsns, tmp_path: Path) -> Path:
    """A config file pointing the CLI at this test's databases."""
    path = tmp_path / "batch.toml"
    path.write_text(
        f'[database]\njournal_dsn = "{dsns.journal}"\nledger_dsn = "{dsns.ledger}"\nsandbox_dsn = "{dsns.sandbox}"\n',
        encoding="utf-8",
    )
    return path


def _behind_the_back(engine: Engine, *statements: str) -> None:
    """Run statements as the superuser with the append-only triggers bypassed (this transaction only)."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            conn.execute(sa.text(statement))


def _rehash(seq: int) -> str:
    """Recompute row ``seq``'s hash from its (edited) content, as a tamperer with the formula would."""
    return f"UPDATE batch.audit_log SET hash = {V2_HASH} WHERE seq = {seq}"


def _rechain(seq: int) -> list[str]:
    """Make row ``seq`` point at the previous row's (new) hash and recompute its own."""
    return [
        f"UPDATE batch.audit_log SET prev_hash = (SELECT hash FROM batch.audit_log WHERE seq = {seq - 1})"
        f" WHERE seq = {seq}",
        _rehash(seq),
    ]


def _cli(config: Path, *args: str, role: str | None = None) -> subprocess.CompletedProcess[str]:
    """``batch audit ARGS`` (as the test's superuser, or as operator ``role`` with its own login)."""
    if role is not None:
        text = config.read_text(encoding="utf-8")
        dsn = text.split('journal_dsn = "', 1)[1].split('"', 1)[0]
        config = config.with_name(f"{role}.toml")
        config.write_text(text.replace(dsn, operator_dsn(dsn, role)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "batch", "--config", str(config), "audit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _assert_broken_at(
    journal: Journal, config: Path, seq: int, problem: str, *, anchors: Path | None = None
) -> AuditVerification:
    """The code and `batch audit verify --full` both name ``seq``; the last good row is the one before it."""
    extra = ["--anchors", str(anchors)] if anchors else []
    # the code first: `verify --full` records its result, which appends an audit row
    result = journal.verify_audit(anchors=read_anchors(anchors) if anchors else ())
    assert (result.ok, result.first_broken_seq, result.head_seq) == (False, seq, seq - 1)
    assert result.problem is not None and problem in result.problem
    done = _cli(config, "verify", "--full", *extra)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"audit chain BROKEN at seq {seq}:" in done.stdout
    assert problem in done.stdout
    return result


def test_intact_chain_verifies_in_code_and_cli(journal: Journal, config: Path) -> None:
    """An untouched chain verifies: every row counted, the head is the last row, `batch audit verify` exits 0."""
    result = journal.verify_audit()
    seq, head = journal.audit_head()
    assert result == AuditVerification(True, ROWS, ROWS, head)
    assert seq == ROWS
    done = _cli(config, "verify", "--full")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"audit chain verified: {ROWS} rows checked (the whole chain), head {ROWS} {head}" in done.stdout


def test_verification_pages_through_long_chains(journal: Journal) -> None:
    """The chain verifies across page boundaries (page size smaller than the chain)."""
    assert journal.verify_audit(batch_size=4).ok
    assert journal.verify_audit(batch_size=1).rows == ROWS


def test_edited_row_is_blamed(journal: Journal, journal_engine: Engine, config: Path) -> None:
    """A row whose content was changed no longer gives its own stored hash: that row is blamed."""
    _behind_the_back(journal_engine, "UPDATE batch.audit_log SET display_name = 'mallory' WHERE seq = 3")
    _assert_broken_at(journal, config, 3, "does not match its own stored hash")


def test_edited_row_with_a_recomputed_hash_is_blamed_not_the_next(
    journal: Journal, journal_engine: Engine, config: Path
) -> None:
    """Rewriting row 3's content and its hash breaks the link to row 4, which row 5 confirms: row 3 is blamed."""
    _behind_the_back(
        journal_engine, "UPDATE batch.audit_log SET details = replace(details, '3', '300') WHERE seq = 3", _rehash(3)
    )
    result = _assert_broken_at(journal, config, 3, "broken link between seq 3 and seq 4")
    assert result.problem is not None and "row 5 still chains to row 4, so row 3 was rewritten" in result.problem


def test_rewritten_link_is_blamed_on_the_row_that_carries_it(
    journal: Journal, journal_engine: Engine, config: Path
) -> None:
    """Row 4's prev_hash and hash rewritten: row 5 no longer chains to it either, so row 4 is blamed."""
    _behind_the_back(journal_engine, "UPDATE batch.audit_log SET prev_hash = repeat('a', 64) WHERE seq = 4", _rehash(4))
    result = _assert_broken_at(journal, config, 4, "broken link between seq 3 and seq 4")
    assert result.problem is not None and "so row 4 was rewritten" in result.problem


def test_deleted_row_is_named(journal: Journal, journal_engine: Engine, config: Path) -> None:
    """A deleted row leaves a gap in seq: the missing row is named."""
    _behind_the_back(journal_engine, "DELETE FROM batch.audit_log WHERE seq = 3")
    _assert_broken_at(journal, config, 3, "row(s) 3 missing between seq 2 and seq 4")


def test_reordered_rows_are_detected(journal: Journal, journal_engine: Engine, config: Path) -> None:
    """Two rows that swapped places (their seq exchanged) break the chain at the first of them."""
    _behind_the_back(
        journal_engine,
        "UPDATE batch.audit_log SET seq = -1 WHERE seq = 3",
        "UPDATE batch.audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE batch.audit_log SET seq = 4 WHERE seq = -1",
    )
    _assert_broken_at(journal, config, 3, "does not match its own stored hash")


def test_swapped_row_contents_are_detected(journal: Journal, journal_engine: Engine, config: Path) -> None:
    """Two rows that swapped their contents (seq kept) break the chain at the first of them."""
    columns = "at, actor, action, run_id, payout_id, portfolio_id, details, prev_hash, hash"
    _behind_the_back(
        journal_engine,
        f"CREATE TEMP TABLE swap AS SELECT seq, {columns} FROM batch.audit_log WHERE seq IN (3, 4)",
        # hash is UNIQUE: park row 3's hash first
        "UPDATE batch.audit_log SET hash = repeat('x', 64) WHERE seq = 3",
        *(
            f"UPDATE batch.audit_log a SET ({columns}) = (SELECT {columns} FROM swap s WHERE s.seq = {other})"
            f" WHERE a.seq = {seq}"
            for seq, other in ((4, 3), (3, 4))
        ),
    )
    _assert_broken_at(journal, config, 3, "does not match its own stored hash")


def test_truncated_tail_is_detected_with_the_anchors(
    journal: Journal, journal_engine: Engine, config: Path, tmp_path: Path
) -> None:
    """Deleting the newest rows (and the checkpoints) leaves a valid shorter chain; the anchor file shows the cut."""
    anchors = tmp_path / "anchors.jsonl"
    assert _cli(config, "anchor", "--to", str(anchors)).returncode == 0
    _behind_the_back(journal_engine, f"DELETE FROM batch.audit_log WHERE seq > {ROWS - 2}", FORGET_CHECKPOINTS)
    assert journal.verify_audit().ok, "without anchors the shorter chain is self-consistent"
    _assert_broken_at(journal, config, ROWS - 1, f"rows {ROWS - 1}..{ROWS} were deleted", anchors=anchors)


def test_rehashed_chain_is_detected_with_the_anchors_and_the_edited_row_blamed(
    journal: Journal, journal_engine: Engine, config: Path, tmp_path: Path
) -> None:
    """Row 7 edited, every row after it re-hashed, checkpoints erased: passes alone; the anchors blame row 7."""
    anchors = tmp_path / "anchors.jsonl"
    assert _cli(config, "anchor", "--to", str(anchors)).returncode == 0  # head 6
    _append(journal, ROWS + 1, ROWS + 3)
    assert _cli(config, "anchor", "--to", str(anchors)).returncode == 0  # head 9
    _behind_the_back(
        journal_engine,
        "UPDATE batch.audit_log SET details = replace(details, '7', '700') WHERE seq = 7",
        _rehash(7),
        *_rechain(8),
        *_rechain(9),
        FORGET_CHECKPOINTS,
    )
    assert journal.verify_audit().ok, "a consistently re-hashed chain verifies on its own"
    result = _assert_broken_at(journal, config, 7, "rewritten from a row in 7..9", anchors=anchors)
    assert "the last witness that still matches is seq 6" in str(result.problem)


def test_rehash_that_leaves_the_checkpoints_is_caught_by_them(journal: Journal, journal_engine: Engine) -> None:
    """A full verification also checks every checkpoint: a re-hash after one is found without any anchor."""
    assert journal.verify_audit(since_checkpoint=True, record_checkpoint=True).checkpointed
    edit = "UPDATE batch.audit_log SET details = '{}' WHERE seq = 5"
    _behind_the_back(journal_engine, edit, _rehash(5), *_rechain(6))
    result = journal.verify_audit()
    assert (result.ok, result.first_broken_seq, result.head_seq) == (False, 1, 0)
    assert result.problem is not None and f"rewritten from a row in 1..{ROWS}" in result.problem


def test_expected_head_is_checked(journal: Journal, config: Path) -> None:
    """`--expect SEQ:HASH` passes for the real head and fails for another hash or a seq beyond the head."""
    seq, head = journal.audit_head()
    assert _cli(config, "verify", "--expect", f"{seq}:{head}").returncode == 0
    beyond = _cli(config, "verify", "--expect", f"{seq + 2}:{head}")
    assert beyond.returncode == 1 and f"rows {seq + 1}..{seq + 2} were deleted" in beyond.stdout
    wrong = _cli(config, "verify", "--full", "--expect", f"{seq}:{'f' * 64}")  # recorded: appends a row
    assert wrong.returncode == 1 and f"not ffffffffffffffff… as --expect {seq} recorded" in wrong.stdout
    assert _cli(config, "verify", "--expect", "six:abc").returncode == 2


def test_anchor_file_is_only_appended_to(journal: Journal, config: Path, tmp_path: Path) -> None:
    """Each `batch audit anchor --to FILE` adds one JSON line (run_id, seq, hash, at); earlier lines stay as written."""
    anchors = tmp_path / "anchors.jsonl"
    assert _cli(config, "anchor", "--to", str(anchors)).returncode == 0
    first = anchors.read_bytes()
    _append(journal, ROWS + 1, ROWS + 1)
    done = _cli(config, "anchor", "--to", str(anchors))
    assert done.returncode == 0, done.stderr
    text = anchors.read_bytes()
    assert text.startswith(first)
    lines = [json.loads(line) for line in text.decode().splitlines()]
    assert [(line["seq"], sorted(line)) for line in lines] == [
        (ROWS, ["at", "hash", "run_id", "seq"]),
        (ROWS + 1, ["at", "hash", "run_id", "seq"]),
    ]
    assert lines[1]["hash"] == journal.audit_head()[1]
    printed = _cli(config, "anchor")
    assert printed.returncode == 0 and json.loads(printed.stdout)["seq"] == ROWS + 1


def test_anchor_refuses_a_broken_chain(journal: Journal, journal_engine: Engine, config: Path, tmp_path: Path) -> None:
    """A chain that does not verify is never anchored: exit 1, the anchor file untouched."""
    anchors = tmp_path / "anchors.jsonl"
    _behind_the_back(journal_engine, "UPDATE batch.audit_log SET details = '{}' WHERE seq = 2")
    done = _cli(config, "anchor", "--to", str(anchors))
    assert done.returncode == 1 and "BROKEN at seq 2" in done.stdout
    assert not anchors.exists()


def test_incremental_verification_starts_after_the_last_checkpoint(journal: Journal) -> None:
    """A verification records its head; the next one recomputes only the rows after it."""
    first = journal.verify_audit(since_checkpoint=True, record_checkpoint=True, display_name="night")
    assert (first.ok, first.rows, first.from_seq, first.checkpointed) == (True, ROWS, 0, True)
    _append(journal, ROWS + 1, ROWS + 3)
    second = journal.verify_audit(since_checkpoint=True, record_checkpoint=True)
    assert (second.ok, second.rows, second.from_seq, second.head_seq) == (True, 1 + 3, ROWS, ROWS + 3)
    assert second.anchors_checked == 1, "the checkpoint row was checked to still carry its hash"


def test_edit_of_the_checkpoint_row_itself_is_caught_incrementally(journal: Journal, journal_engine: Engine) -> None:
    """The incremental verification recomputes the checkpoint's own row: its edited content is named."""
    assert journal.verify_audit(since_checkpoint=True, record_checkpoint=True).checkpointed
    _behind_the_back(journal_engine, f"UPDATE batch.audit_log SET details = '{{}}' WHERE seq = {ROWS}")
    result = journal.verify_audit(since_checkpoint=True)
    assert (result.ok, result.first_broken_seq, result.from_seq) == (False, ROWS, ROWS)


def test_edit_before_the_checkpoint_needs_the_full_verification(journal: Journal, journal_engine: Engine) -> None:
    """A row edited before the checkpoint is outside the incremental check; `--full` names it."""
    assert journal.verify_audit(since_checkpoint=True, record_checkpoint=True).checkpointed
    _behind_the_back(journal_engine, "UPDATE batch.audit_log SET details = '{}' WHERE seq = 2")
    assert journal.verify_audit(since_checkpoint=True).ok
    full = journal.verify_audit()
    assert (full.ok, full.first_broken_seq) == (False, 2)


def test_rewritten_checkpoint_row_falls_back_to_the_whole_chain(journal: Journal, journal_engine: Engine) -> None:
    """When the checkpoint's row no longer carries its hash the whole chain is walked: the rewritten row is named."""
    assert journal.verify_audit(since_checkpoint=True, record_checkpoint=True).checkpointed
    _append(journal, ROWS + 1, ROWS + 2)
    _behind_the_back(journal_engine, f"UPDATE batch.audit_log SET details = '{{}}' WHERE seq = {ROWS}", _rehash(ROWS))
    result = journal.verify_audit(since_checkpoint=True, record_checkpoint=True)
    assert (result.ok, result.first_broken_seq, result.from_seq, result.checkpointed) == (False, ROWS, 0, False)


def test_checkpoints_are_only_appended_through_their_function(journal: Journal, journal_engine: Engine) -> None:
    """Checkpoints refuse UPDATE and DELETE, and the function refuses a hash the row does not carry."""
    assert journal.verify_audit(since_checkpoint=True, record_checkpoint=True).checkpointed
    for statement in ("UPDATE batch.audit_checkpoints SET seq = 1", "DELETE FROM batch.audit_checkpoints"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), journal_engine.begin() as conn:
            conn.execute(sa.text(statement))
    with pytest.raises(sa.exc.DBAPIError, match="does not carry hash"), journal_engine.begin() as conn:
        conn.execute(sa.text(f"SELECT batch.audit_checkpoint({ROWS}, repeat('f', 64), 0, 1, true, 'x')"))


def test_superuser_without_bypass_is_refused_by_the_trigger(journal: Journal, journal_engine: Engine) -> None:
    """Even the table owner cannot UPDATE, DELETE or TRUNCATE audit rows while the triggers are on."""
    for statement in (
        "UPDATE batch.audit_log SET actor = 'mallory' WHERE seq = 1",
        "DELETE FROM batch.audit_log WHERE seq = 1",
        "TRUNCATE batch.audit_log",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), journal_engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert journal.verify_audit().ok


def test_witnesses_are_checked_by_the_api(journal: Journal) -> None:
    """`verify_audit(anchors=...)` counts the anchors it checked and fails on one the chain does not pass."""
    seq, head = journal.audit_head()
    good = journal.verify_audit(anchors=[Anchor(seq, head, "test")])
    assert (good.ok, good.anchors_checked) == (True, 1)
    bad = journal.verify_audit(anchors=[Anchor(2, head, "test")])
    assert (bad.ok, bad.first_broken_seq, bad.head_seq) == (False, 1, 0)


def test_reanchoring_accepts_the_broken_row_and_verification_walks_on(
    journal: Journal, journal_engine: Engine, config: Path
) -> None:
    """After an investigation an operator (not the superuser) accepts row 3; later breaks are still found."""
    _behind_the_back(journal_engine, "UPDATE batch.audit_log SET details = '{}' WHERE seq = 3")
    assert _cli(config, "verify").returncode == 1
    superuser = _cli(config, "reanchor", "--reason", "INC-7: restored from the DBA's notes")
    assert superuser.returncode == 2 and "a superuser is a member of every role" in superuser.stderr
    done = _cli(config, "reanchor", "--reason", "INC-7: details of row 3 edited by a DBA", role="alice")
    assert done.returncode == 0, done.stderr
    assert "re-anchored: row 3 accepted (row content does not match its own stored hash" in done.stdout
    assert _cli(config, "verify").returncode == 0, "runs verify from the re-anchoring on"
    full = _cli(config, "verify", "--full")
    assert full.returncode == 0, full.stdout
    assert "accepted after an investigation: row 3 accepted by alice" in full.stdout
    assert "INC-7: details of row 3 edited by a DBA" in full.stdout
    (row,) = [r for r in _rows(journal_engine) if r.action == "audit.reanchored"]
    assert (row.seq, row.actor, json.loads(row.details)["accepted_break_seq"]) == (ROWS + 1, "alice", 3)
    _append(journal, ROWS + 2, ROWS + 3)
    _behind_the_back(journal_engine, f"UPDATE batch.audit_log SET details = '{{}}' WHERE seq = {ROWS + 2}")
    later = journal.verify_audit()
    assert (later.ok, later.first_broken_seq) == (False, ROWS + 2)
    assert _cli(config, "reanchor", "--reason", "again", role="alice").returncode == 0
    assert journal.verify_audit().ok
    nothing = _cli(config, "reanchor", "--reason", "nothing is broken", role="alice")
    assert nothing.returncode == 2 and "nothing to re-anchor" in nothing.stderr


def _rows(engine: Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT seq, actor, action, details FROM batch.audit_log ORDER BY seq")))
