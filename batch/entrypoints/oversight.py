"""Operators' and auditors' commands: ``batch whoami``, ``batch payout approve|retry|cancel`` and
``batch audit verify|anchor|head``.

Who acts is what the database says (the login role of the journal DSN, stamped on every audit row);
``--operator`` / ``$BATCH_OPERATOR`` is only a display name stored beside it.
"""

from __future__ import annotations

import argparse
import functools
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batch.adapters.anchors import append_anchor, read_anchors
from batch.bootstrap import App
from batch.domain.audit import Anchor, AnchorError, AuditVerification, parse_expect
from batch.errors import ConfigError, UsageError
from batch.service.audit_checks import configured_anchors, full_verification
from batch.service.nightly.run import ExitCode
from batch.settings import Settings

#: builds the app, runs the function on it, closes it (the CLI's own, ``batch.entrypoints.cli._with_app``)
WithApp = Callable[[Settings, Callable[[App], int]], int]


def display_name(args: argparse.Namespace) -> str | None:
    """The display name given beside the database's login role (``--operator``, ``$BATCH_OPERATOR``, ``$USER``)."""
    return args.operator or os.environ.get("BATCH_OPERATOR") or os.environ.get("USER") or None


def _expect(text: str) -> Anchor:
    try:
        return parse_expect(text)
    except AnchorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parsers(sub: Any, payout_id: Callable[[str], uuid.UUID]) -> None:
    """The ``whoami``, ``payout`` and ``audit`` sub-commands."""
    sub.add_parser("whoami", help="who the journal database says you are: login role, memberships, application")

    payout = sub.add_parser("payout", help="operator controls on one payout (as your own login role)")
    payout_sub = payout.add_subparsers(dest="action", required=True)
    for name, text in (
        ("retry", "send a NEEDS_ATTENTION payout back to the step it stopped in"),
        ("cancel", "cancel a payout that has not reached the ledger"),
        ("approve", "approve a HELD payout (above the four-eyes threshold: two different operators)"),
    ):
        p = payout_sub.add_parser(name, help=text)
        p.add_argument("payout_id", type=payout_id)
        p.add_argument("--operator", help="display name kept beside your login role (default: $BATCH_OPERATOR)")
        p.add_argument("--reason", required=True, help="why (kept in the audit log; blank reasons are refused)")

    audit = sub.add_parser("audit", help="audit trail")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    verify = audit_sub.add_parser("verify", help="recompute the hash chain; name the first broken row")
    verify.add_argument(
        "--full",
        action="store_true",
        help="the whole chain, in parallel; the result is recorded and a failed one stops the next run's money",
    )
    verify.add_argument(
        "--processes", type=int, metavar="N", help="processes of --full (default: [audit] full_verify_processes)"
    )
    verify.add_argument(
        "--expect", type=_expect, action="append", default=[], metavar="SEQ:HASH", help="a head the chain must pass"
    )
    verify.add_argument(
        "--anchors", type=Path, action="append", default=[], metavar="FILE", help="an anchor file (JSON lines)"
    )
    verify.add_argument("--operator", help=argparse.SUPPRESS)
    anchor = audit_sub.add_parser("anchor", help="verify, then append the head to an anchor file (or print it)")
    anchor.add_argument("--to", type=Path, metavar="FILE", help="append-only anchor file (default: print the line)")
    anchor.add_argument("--operator", help=argparse.SUPPRESS)
    audit_sub.add_parser("head", help="print the chain head (seq and hash)")
    reanchor = audit_sub.add_parser(
        "reanchor", help="after an investigation: accept the chain's first broken row (an operator's own login)"
    )
    reanchor.add_argument("--reason", required=True, help="the incident and what was found (kept in the audit log)")
    reanchor.add_argument("--operator", help="display name kept beside your login role")


def cmd_whoami(settings: Settings, args: argparse.Namespace, with_app: WithApp) -> int:
    def go(app: App) -> int:
        for line in app.journal.whoami().describe():
            print(line)
        return ExitCode.OK

    return with_app(settings, go)


def cmd_payout(settings: Settings, args: argparse.Namespace, with_app: WithApp) -> int:
    name = display_name(args)

    def go(app: App) -> int:
        outcome = app.journal.operator_action(args.action, args.payout_id, reason=args.reason, display_name=name)
        print(outcome.summary(args.action, args.reason.strip()))
        print(f"  {outcome.acted(name)}")
        return ExitCode.OK

    return with_app(settings, go)


def _verified_line(result: AuditVerification) -> str:
    scope = (
        "the whole chain"
        if result.from_seq == 0
        else f"seq {result.from_seq}.., from the checkpoint at seq {result.from_seq}"
    )
    extra = f"; {result.anchors_checked} anchor(s) and checkpoint(s) matched" if result.anchors_checked else ""
    kept = "; checkpoint recorded" if result.checkpointed else ""
    accepted = "".join(f"\n  accepted after an investigation: {note}" for note in result.accepted)
    return (
        f"audit chain verified: {result.rows} rows checked ({scope}), head {result.head_seq} {result.head_hash}"
        f"{extra}{kept}{accepted}"
    )


def _broken_line(result: AuditVerification) -> str:
    return f"audit chain BROKEN at seq {result.first_broken_seq}: {result.problem} (last good row {result.head_seq})"


def _anchors(paths: list[Path]) -> list[Anchor]:
    found: list[Anchor] = []
    for path in paths:
        try:
            found += read_anchors(path)
        except (OSError, AnchorError) as exc:
            raise ConfigError(f"cannot read anchors: {exc}") from exc
    return found


def cmd_audit(settings: Settings, args: argparse.Namespace, with_app: WithApp) -> int:
    name = display_name(args)
    configured = configured_anchors(settings.audit) if args.action in ("verify", "anchor", "reanchor") else []
    if args.action == "verify":
        anchors = [*args.expect, *_anchors(args.anchors), *configured]
    elif args.action == "anchor" and args.to is not None and args.to.exists():
        anchors = _anchors([args.to])  # never anchor a chain that no longer passes the file's earlier anchors
    else:
        anchors = configured

    def go(app: App) -> int:
        journal = app.journal
        if args.action == "head":
            seq, head = journal.audit_head()
            print(f"{seq} {head}")
            return ExitCode.OK
        if args.action == "reanchor":
            return _reanchor(app, args.reason, name, anchors)
        if args.action == "verify" and args.full:
            processes = args.processes or settings.audit.full_verify_processes
            result, recorded = full_verification(app, processes=processes, anchors=anchors, display_name=name)
            print(_broken_line(result) if not result.ok else _verified_line(result))
            print(
                f"  full verification with {processes} process(es) "
                + ("recorded in the journal" if recorded else "NOT recorded (this role may not record it)")
                + ("" if result.ok else "; runs move no money until `batch audit reanchor --reason ...`")
            )
            return ExitCode.OK if result.ok else ExitCode.TECHNICAL_FAILURE
        result = journal.verify_audit(since_checkpoint=True, anchors=anchors, record_checkpoint=True, display_name=name)
        if not result.ok:
            print(_broken_line(result))
            return ExitCode.TECHNICAL_FAILURE
        if args.action == "verify":
            print(_verified_line(result))
            return ExitCode.OK
        if result.head_seq == 0:
            raise UsageError("nothing to anchor: the audit log is empty")
        run_id = journal.last_finished_run()
        at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        anchor = Anchor(
            result.head_seq, result.head_hash, "batch audit anchor", run_id=str(run_id) if run_id else None, at=at
        )
        if args.to is None:
            print(anchor.line(), end="")
        else:
            append_anchor(args.to, anchor)
            print(f"anchored seq {anchor.seq} {anchor.hash} (run {anchor.run_id}) to {args.to}")
        return ExitCode.OK

    return with_app(settings, go)


def _reanchor(app: App, reason: str, name: str | None, anchors: list[Anchor]) -> int:
    """Accept the first broken row the run's verification finds; runs verify from the new checkpoint on."""
    # after a failed full verification the break may lie before the checkpoint: walk the whole chain
    found = app.journal.verify_audit(since_checkpoint=app.journal.money_stop() is None, anchors=anchors)
    if found.ok or found.first_broken_seq is None:
        raise UsageError("nothing to re-anchor: the audit chain verifies")
    anchor = app.journal.reanchor(
        broken_seq=found.first_broken_seq, problem=found.problem or "", reason=reason, display_name=name
    )
    print(f"re-anchored: row {found.first_broken_seq} accepted ({found.problem})")
    print(f"  checkpoint at seq {anchor.seq} {anchor.hash} ({anchor.source}); runs verify from there on")
    print("  anchor it outside the database now: batch audit anchor --to NEW_FILE")
    return ExitCode.OK


def commands(with_app: WithApp) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    """The commands of this module, each run with the CLI's ``with_app`` (it builds the app and closes it)."""
    return {
        name: functools.partial(command, with_app=with_app)
        for name, command in (("whoami", cmd_whoami), ("payout", cmd_payout), ("audit", cmd_audit))
    }
