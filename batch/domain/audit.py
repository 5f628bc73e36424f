"""The audit hash chain, verified: the hash of each version, the walk that names the first broken row,
and the witnesses (anchors kept outside the database, checkpoints kept in it) the chain must pass through.

Each audit row hashes the previous row's hash and its own content (``batch.audit_chain``, migrations
0001 and 0005). Two versions of the hashed content:

    1  rows written before migration 0005: sha256 of
       prev_hash|seq|at|actor|action|run_id|payout_id|portfolio_id|details   (actor: what the client said)
    2  every row since: sha256 of 'v2' and, '|'-separated, each field as LEN:TEXT (``~`` for NULL):
       prev_hash, seq, at, actor (the login role, stamped), application_name (stamped), display_name
       (what the client said), action, run_id, payout_id, portfolio_id, details

``at`` is UTC with microseconds (``2026-11-30T01:30:00.123456Z``). The version never goes back along
the chain. Standard library only: the verifier recomputes every hash itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

GENESIS_HASH = "0" * 64
HASH_VERSIONS = (1, 2)


class AuditRow(NamedTuple):
    """One stored audit row as the verifier reads it (``at`` already as UTC text, ids as text)."""

    seq: int
    hash_version: int
    at: str
    actor: str
    application_name: str | None
    display_name: str | None
    action: str
    run_id: str | None
    payout_id: str | None
    portfolio_id: str | None
    details: str
    prev_hash: str
    hash: str


def hash_v1(
    prev_hash: str,
    seq: int,
    at: str,
    actor: str,
    action: str,
    run_id: str | None,
    payout_id: str | None,
    portfolio_id: str | None,
    details: str,
) -> str:
    """Version 1 (rows written before migration 0005): fields joined with '|', NULL as ''."""
    text = f"{prev_hash}|{seq}|{at}|{actor}|{action}|{run_id or ''}|{payout_id or ''}|{portfolio_id or ''}|{details}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _field(value: str | None) -> str:
    return "~" if value is None else f"{len(value)}:{value}"


def hash_v2(
    prev_hash: str,
    seq: int,
    at: str,
    actor: str,
    application_name: str | None,
    display_name: str | None,
    action: str,
    run_id: str | None,
    payout_id: str | None,
    portfolio_id: str | None,
    details: str,
) -> str:
    """Version 2: each field length-prefixed, so no field can be shifted into its neighbour."""
    # written out (not a loop over the fields): this runs once per row of a full verification
    number = str(seq)
    text = (
        f"v2|{len(prev_hash)}:{prev_hash}|{len(number)}:{number}|{len(at)}:{at}|{len(actor)}:{actor}"
        f"|{_field(application_name)}|{_field(display_name)}|{len(action)}:{action}|{_field(run_id)}"
        f"|{_field(payout_id)}|{_field(portfolio_id)}|{len(details)}:{details}"
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_hash(row: AuditRow) -> str:
    """The hash the row's own content and its stored prev_hash give, in the row's hash version."""
    if row.hash_version == 1:
        content = (row.actor, row.action, row.run_id, row.payout_id, row.portfolio_id, row.details)
        return hash_v1(row.prev_hash, row.seq, row.at, *content)
    return hash_v2(
        row.prev_hash,
        row.seq,
        row.at,
        row.actor,
        row.application_name,
        row.display_name,
        row.action,
        row.run_id,
        row.payout_id,
        row.portfolio_id,
        row.details,
    )


@dataclass(frozen=True)
class Anchor:
    """A chain head (seq, hash) recorded somewhere the chain must still pass through.

    ``source`` says where: an anchor file's line, ``--expect``, or a checkpoint in the journal.
    """

    seq: int
    hash: str
    source: str
    run_id: str | None = None
    at: str | None = None

    def line(self) -> str:
        """The anchor as one JSON line (``run_id``, ``seq``, ``hash``, ``at``), for an append-only file."""
        return json.dumps({"run_id": self.run_id, "seq": self.seq, "hash": self.hash, "at": self.at}) + "\n"


class AnchorError(ValueError):
    """An anchor (a file line or ``--expect``) that cannot be read."""


def _checked(seq: object, hash_: object, source: str) -> tuple[int, str]:
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise AnchorError(f"{source}: seq must be a positive integer, not {seq!r}")
    if not isinstance(hash_, str) or len(hash_) != 64 or any(c not in "0123456789abcdef" for c in hash_):
        raise AnchorError(f"{source}: hash must be 64 lowercase hex digits")
    return seq, hash_


def parse_expect(text: str) -> Anchor:
    """``SEQ:HASH`` as given to ``batch audit verify --expect``."""
    seq, sep, hash_ = text.strip().partition(":")
    if not sep or not seq.isdigit():
        raise AnchorError(f"--expect {text!r}: expected SEQ:HASH")
    return Anchor(*_checked(int(seq), hash_, f"--expect {seq}"), source=f"--expect {seq}")


def parse_anchor_line(text: str, source: str) -> Anchor:
    """One line of an anchor file (a JSON object with at least ``seq`` and ``hash``)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AnchorError(f"{source}: not a JSON line ({exc})") from exc
    if not isinstance(data, dict):
        raise AnchorError(f"{source}: not a JSON object")
    seq, hash_ = _checked(data.get("seq"), data.get("hash"), source)
    run_id, at = data.get("run_id"), data.get("at")
    return Anchor(
        seq, hash_, source, run_id=str(run_id) if run_id is not None else None, at=str(at) if at is not None else None
    )


@dataclass(frozen=True)
class AuditVerification:
    """The result of recomputing the audit hash chain.

    ``rows``: rows recomputed by this verification; ``from_seq``: the checkpoint it started from (its row
    and every later one recomputed), 0 for the whole chain. ``head_seq``/``head_hash``: the head when the
    chain verifies, else the last row before the first broken one. ``anchors_checked``: witnesses the
    chain was checked to pass through (anchors, ``--expect`` heads and checkpoints). ``checkpointed``:
    the head was recorded as a new checkpoint. ``accepted``: rows people accepted after an investigation
    (``batch audit reanchor``) that the verification walked on past, in words.
    """

    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    first_broken_seq: int | None = None
    problem: str | None = None
    from_seq: int = 0
    anchors_checked: int = 0
    checkpointed: bool = False
    accepted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Break:
    """The first broken row found, the last row before it that is still good, and what is wrong."""

    seq: int
    problem: str
    good_seq: int
    good_hash: str
    #: a witness break covers rows seq..until_seq (the chain was rewritten somewhere in between)
    until_seq: int | None = None


class ChainWalk:
    """Recompute the chain row by row from a trusted point (genesis, or a checkpoint that still matches).

    Feed rows in seq order; ``feed`` returns False once the first break is settled. Blame rules:
    - a missing seq names the first missing row;
    - a row whose content does not give its own stored hash is the edited row;
    - a broken link (a row's prev_hash is not the previous row's hash) names both rows and blames the
      previous row when the next row still chains to this one (the previous row was rewritten with a
      recomputed hash), else this row (its prev_hash and hash were rewritten);
    - a row of hash version 1 after version 2 rows was downgraded.
    """

    def __init__(self, after_seq: int = 0, after_hash: str = GENESIS_HASH, after_version: int = 1) -> None:
        self.start_seq = after_seq
        self.rows = 0
        self.broken: Break | None = None
        self._prev: tuple[int, str] = (after_seq, after_hash)
        self._before_prev: tuple[int, str] = (after_seq, after_hash)
        self._version = after_version
        self._pending: AuditRow | None = None

    @property
    def head(self) -> tuple[int, str]:
        """The last row accepted (the trusted start when none was)."""
        return self._prev

    def feed(self, row: AuditRow) -> bool:
        if self.broken is not None:
            return False
        if self._pending is not None:
            self._settle_link(confirmed=row.prev_hash == self._pending.hash, next_seq=row.seq)
            return False
        prev_seq, prev_hash = self._prev
        if row.seq != prev_seq + 1:
            gap = f"{prev_seq + 1}" if row.seq == prev_seq + 2 else f"{prev_seq + 1}..{row.seq - 1}"
            return self._break(
                prev_seq + 1, f"row(s) {gap} missing between seq {prev_seq} and seq {row.seq} (deleted?)", *self._prev
            )
        if row.hash_version not in HASH_VERSIONS or row.hash_version < self._version:
            problem = f"hash version {row.hash_version} after version {self._version} rows (downgraded?)"
            return self._break(row.seq, problem, *self._prev)
        if row_hash(row) != row.hash:
            return self._break(
                row.seq, "row content does not match its own stored hash (edited after it was written)", *self._prev
            )
        self.rows += 1
        if row.prev_hash != prev_hash:
            if prev_seq == self.start_seq:  # the previous row is the trusted start: this row was rewritten
                return self._break(
                    row.seq, f"broken link: row {row.seq}'s prev_hash is not the hash of seq {prev_seq}", *self._prev
                )
            self._pending = row  # which of the two rows was rewritten: the next row tells
            return True
        self._before_prev, self._prev = self._prev, (row.seq, row.hash)
        self._version = row.hash_version
        return True

    def finish(self) -> Break | None:
        """Settle a broken link found at the last row read (no later row to tell which was rewritten)."""
        if self._pending is not None and self.broken is None:
            self._settle_link(confirmed=True, next_seq=None)
        return self.broken

    def _settle_link(self, *, confirmed: bool, next_seq: int | None) -> None:
        row = self._pending
        assert row is not None
        prev_seq = self._prev[0]
        link = (
            f"broken link between seq {prev_seq} and seq {row.seq}:"
            f" row {row.seq}'s prev_hash is not row {prev_seq}'s hash"
        )
        if not confirmed:
            self._break(
                row.seq,
                f"{link}; row {next_seq} does not chain to row {row.seq} either, so row {row.seq} was rewritten"
                " (its prev_hash and hash recomputed)",
                *self._prev,
            )
        elif next_seq is None:
            self._break(
                prev_seq,
                f"{link}; row {row.seq} is the newest row read, so row {prev_seq} was rewritten (content and hash"
                f" recomputed) or row {row.seq}'s prev_hash was",
                *self._before_prev,
            )
        else:
            self._break(
                prev_seq,
                f"{link}; row {next_seq} still chains to row {row.seq}, so row {prev_seq} was rewritten"
                " (content and hash recomputed)",
                *self._before_prev,
            )

    def _break(self, seq: int, problem: str, good_seq: int, good_hash: str) -> bool:
        self.broken = Break(seq, problem, good_seq, good_hash)
        return False


def check_witnesses(witnesses: Sequence[Anchor], stored: Mapping[int, str], head: tuple[int, str]) -> Break | None:
    """The first witness (lowest seq) the chain no longer passes through, with the range it implicates.

    ``stored``: the hash each witnessed seq carries now (absent: no such row); ``head``: the chain's head.
    A missing row above the head means the tail was cut; a different hash means the chain was rewritten
    somewhere after the last witness that still matches.
    """
    good_seq, good_hash = 0, GENESIS_HASH
    head_seq, head_hash = head
    for witness in sorted(witnesses, key=lambda w: (w.seq, w.source)):
        found = stored.get(witness.seq)
        if found == witness.hash:
            if witness.seq > good_seq:
                good_seq, good_hash = witness.seq, witness.hash
            continue
        short = witness.hash[:16]
        if found is None and witness.seq > head_seq:
            return Break(
                head_seq + 1,
                f"the chain ends at seq {head_seq}, but {witness.source} recorded seq {witness.seq} ({short}…):"
                f" rows {head_seq + 1}..{witness.seq} were deleted",
                head_seq,
                head_hash,
                witness.seq,
            )
        if found is None:
            return Break(witness.seq, f"row {witness.seq} recorded by {witness.source} is missing", good_seq, good_hash)
        return Break(
            good_seq + 1,
            f"row {witness.seq} carries {found[:16]}…, not {short}… as {witness.source} recorded: the chain was"
            f" rewritten from a row in {good_seq + 1}..{witness.seq} (the last witness that still matches is seq"
            f" {good_seq})",
            good_seq,
            good_hash,
            witness.seq,
        )
    return None


def trusted_until(anchors: Sequence[Anchor], stored: Mapping[int, str]) -> int:
    """The highest seq the journal's own checkpoints may be trusted up to, given the external anchors.

    Every anchor agrees with the hash stored at its seq: no limit. Else the last anchor below the first
    one that disagrees (0: none): a checkpoint past it may have been rewritten along with the rows.
    """
    good = 0
    for anchor in sorted(anchors, key=lambda a: a.seq):
        if stored.get(anchor.seq) != anchor.hash:
            return good
        good = anchor.seq
    return 2**63 - 1


def first_break(chain: Break | None, witness: Break | None) -> Break | None:
    """The break to report: the chain's own (it names one row) unless a witness breaks before it."""
    if chain is None or witness is None:
        return chain or witness
    return chain if chain.seq <= (witness.until_seq or witness.seq) else witness


def verification(walk: ChainWalk, witness: Break | None, *, from_seq: int, anchors_checked: int) -> AuditVerification:
    """The walk and the witness check as one result."""
    broken = first_break(walk.finish(), witness)
    if broken is None:
        seq, hash_ = walk.head
        return AuditVerification(True, walk.rows, seq, hash_, from_seq=from_seq, anchors_checked=anchors_checked)
    return AuditVerification(
        False,
        walk.rows,
        broken.good_seq,
        broken.good_hash,
        broken.seq,
        broken.problem,
        from_seq=from_seq,
        anchors_checked=anchors_checked,
    )


def read_anchor_lines(lines: Iterable[str], name: str) -> list[Anchor]:
    """Every non-blank line of an anchor file as an Anchor (AnchorError names the first bad line)."""
    return [parse_anchor_line(text, f"{name} line {n}") for n, text in enumerate(lines, start=1) if text.strip()]
