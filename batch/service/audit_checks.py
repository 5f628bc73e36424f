"""The audit chain's checks that money depends on (DESIGN §10.6).

- Before any money moves, a run checks the anchors kept outside the database (``[audit] anchor_file``:
  one read of the journal for all of them), refuses while a failed full verification has not been
  followed by a re-anchoring, and verifies incrementally from the newest checkpoint the anchors still
  vouch for.
- The full verification (``batch audit verify --full``, nightly after the run) recomputes the whole
  chain in parallel and records its result in the journal, where the next run reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from batch.adapters.anchors import read_anchors
from batch.domain.audit import Anchor, AnchorError, AuditVerification
from batch.errors import AuditChainBrokenError, ConfigError
from batch.service.context import Services
from batch.settings import AuditSettings

log = structlog.get_logger("batch.audit")


def configured_anchors(settings: AuditSettings) -> list[Anchor]:
    """The anchors of ``[audit] anchor_file`` (none when it is not set); ConfigError when unreadable or missing."""
    if settings.anchor_file is None:
        return []
    try:
        return read_anchors(settings.anchor_file)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"[audit] anchor_file {settings.anchor_file} does not exist: create it with"
            f" `batch audit anchor --to {settings.anchor_file}` (or restore it from the write-once store)"
        ) from exc
    except (OSError, AnchorError) as exc:
        raise ConfigError(f"cannot read [audit] anchor_file: {exc}") from exc


def refuse_while_stopped(app: Services) -> None:
    """AuditChainBrokenError while a failed full verification stands (the listener's check: one query)."""
    stop = app.journal.money_stop()
    if stop is not None:
        raise AuditChainBrokenError(stop)


def check_before_money(app: Services, actor: str) -> AuditVerification:
    """Raise AuditChainBrokenError unless the chain may be trusted tonight; the verification on success."""
    anchors = configured_anchors(app.settings.audit)
    stop = app.journal.money_stop()
    if stop is not None:
        log.error("audit.full_verification_failed", reason=stop)
        raise AuditChainBrokenError(f"{stop}; nothing resumed or planned")
    verified = app.journal.verify_audit(
        since_checkpoint=True, anchors=anchors, record_checkpoint=True, display_name=actor
    )
    if not verified.ok:
        log.error("audit.chain_broken", first_broken_seq=verified.first_broken_seq, problem=verified.problem)
        raise AuditChainBrokenError(
            f"audit chain broken at seq {verified.first_broken_seq}: {verified.problem};"
            " nothing resumed or planned (see README: Verifying the audit trail)"
        )
    log.info("audit.chain_verified", rows=verified.rows, head_seq=verified.head_seq, anchors=len(anchors))
    return verified


def full_verification(
    app: Services, *, processes: int, anchors: list[Anchor], display_name: str | None
) -> tuple[AuditVerification, bool]:
    """Verify the whole chain (in parallel) and record the result; (result, whether it was recorded)."""
    started = datetime.now(UTC)
    result = app.journal.verify_full(processes=processes, anchors=anchors, display_name=display_name)
    recorded = app.journal.record_full_verification(
        result, started_at=started, processes=processes, display_name=display_name
    )
    log.info(
        "audit.full_verification",
        ok=result.ok,
        rows=result.rows,
        first_broken_seq=result.first_broken_seq,
        processes=processes,
        seconds=round((datetime.now(UTC) - started).total_seconds(), 3),
        recorded=recorded is not None,
    )
    return result, recorded is not None
