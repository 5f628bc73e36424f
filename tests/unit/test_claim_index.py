"""The claim's index (migration 0018) and the claim query agree with the domain on what is executable."""

from __future__ import annotations

import re

from batch.adapters.migrations import sql_root
from batch.adapters.sqlfiles import load_queries
from batch.domain.payout import EXECUTABLE_STATES, PayoutState

_NOT_IN = re.compile(r"state NOT IN \(([^)]*)\)")


def _states(clause: str) -> set[str]:
    return {word.strip().strip("'") for word in clause.split(",")}


def test_claim_repeats_the_claimable_index_predicate_which_excludes_exactly_the_non_executable_states() -> None:
    """The claim's NOT IN is the partial index's word for word, and it leaves out exactly what no flow executes."""
    migration = (sql_root() / "journal" / "0018_flat_night_indexes_short_chain_lock.sql").read_text(encoding="utf-8")
    index = _NOT_IN.search(migration[migration.index("CREATE INDEX payouts_claimable") :])
    claim = _NOT_IN.search(load_queries("journal_payouts").claim.sql)
    assert index is not None and claim is not None
    assert claim.group(0) == index.group(0)
    assert _states(index.group(1)) == {s.value for s in set(PayoutState) - EXECUTABLE_STATES}
