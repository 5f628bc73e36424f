"""Bus events without I/O: which kind an event is, staleness, what a portfolio gone does to its payout,
the envelope and data parsing (poison), and the events the sandbox derives from a change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from batch.adapters.bus_models import Creation, Envelope, Poison, Withdrawal, body_key, parse_data, parse_message
from batch.domain.events import CancelAction, EventKind, OpenPayout, classify, is_stale, on_portfolio_gone
from batch.domain.events import version_understood as understood
from batch.domain.payout import PayoutState
from batch.sandbox.bus_events import events_for_change
from batch.sandbox.seed import portfolio_document

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("subject", "action", "kind"),
    [
        ("portfolios", "creation", EventKind.CREATION),
        ("portfolio", "creation", EventKind.CREATION),
        ("portfolios", "status-update", EventKind.STATUS_UPDATE),
        ("portfolios", "divest-amount-update", EventKind.WITHDRAWAL),
        ("portfolios.withdrawal", "divest-amount-update", EventKind.WITHDRAWAL),
        ("portfolio", "withdrawal-request", EventKind.WITHDRAWAL),
        ("Portfolios", "FUNDING", EventKind.FUNDING),
        ("portfolios", "removal", EventKind.REMOVAL),
        ("optimizations", "status-update", None),
        ("portfolios", "archived", None),
        ("portfolios.removal", "creation", None),
    ],
)
def test_classify_accepts_both_subject_spellings(subject: str, action: str, kind: EventKind | None) -> None:
    """portfolios.X and portfolio.X name the same event; other subjects and actions are not ours."""
    assert classify(subject, action) == kind


def test_only_major_version_one_is_understood() -> None:
    """1.0.0 and 1.2.0 are read; 2.0.0 is recorded and acknowledged, not handled."""
    assert understood("1.0.0") and understood("1.2.0") and not understood("2.0.0")


def test_stale_means_strictly_older_than_the_last_handled() -> None:
    """Older than the last handled is stale; the same instant, newer, or nothing handled yet is not."""
    assert is_stale(T0 - timedelta(seconds=1), T0)
    assert not is_stale(T0, T0)
    assert not is_stale(T0 + timedelta(seconds=1), T0)
    assert not is_stale(T0, None)


@pytest.mark.parametrize(
    ("state", "reference", "action"),
    [
        (None, None, CancelAction.NOTHING_OPEN),
        (PayoutState.HELD, None, CancelAction.CANCEL),
        (PayoutState.PLANNED, None, CancelAction.CLAIM_THEN_CANCEL),
        (PayoutState.LEDGER_POSTED, "LT-1", CancelAction.LEFT_TO_COMPLETE),
        (PayoutState.EVENT_SENT, "LT-1", CancelAction.LEFT_TO_COMPLETE),
        (PayoutState.NEEDS_ATTENTION, "LT-1", CancelAction.LEFT_TO_COMPLETE),
        (PayoutState.NEEDS_ATTENTION, None, CancelAction.LEFT_FOR_OPERATOR),
    ],
)
def test_a_portfolio_gone_cancels_only_before_the_ledger(
    state: PayoutState | None, reference: str | None, action: CancelAction
) -> None:
    """INACTIVE or removed: cancel what has not reached the ledger; money that moved completes."""
    payout = None if state is None else OpenPayout(state, reference)
    assert on_portfolio_gone(payout) is action


def test_full_withdrawal_amount_stays_exact() -> None:
    """divest_amount 1e100 is parsed as the exact Decimal 10^100, never a float."""
    body = (
        b'{"id": "e1", "created": "2026-11-30T09:00:00Z", "version": "1.0.0", "subject": "portfolios",'
        b' "action": "divest-amount-update", "data": {"id": "P1", "divest_amount": 1e100, "currency": "EUR"}}'
    )
    envelope = parse_message(body)
    assert isinstance(envelope, Envelope)
    data = parse_data(EventKind.WITHDRAWAL, envelope)
    assert isinstance(data, Withdrawal)
    assert data.divest_amount == Decimal("1E+100") and isinstance(data.divest_amount, Decimal)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b'{"id": "e1", "created": "2026-11-30T09:00:00Z"', "invalid JSON"),
        (b"[1, 2]", "the body is not a JSON object"),
        (
            b'{"id": "", "created": "2026-11-30T09:00:00Z", "version": "1", "subject": "s", "action": "a", "data": {}}',
            "bad envelope: id",
        ),
        (
            b'{"id": "e", "created": "2026-11-30T09:00:00", "version": "1", "subject": "s", "action": "a", "data": {}}',
            "bad envelope: created",
        ),
        (b'{"id": "P1", "value": 5}', "neither an event envelope nor a documented bare"),
        (b'{"value": 5, "currency": "EUR", "id": 7}', "neither an event envelope nor a documented bare"),
    ],
)
def test_poison_names_its_reason(body: bytes, reason: str) -> None:
    """Not UTF-8, truncated JSON, not an object, an empty id, a time without zone, an unknown shape: poison."""
    result = parse_message(body)
    assert isinstance(result, Poison) and result.reason.startswith(reason)


def test_poison_without_an_id_is_keyed_by_its_content() -> None:
    """The same poison body always gets the same inbox key; one with an id keeps the id."""
    oops = parse_message(b"{oops")
    assert isinstance(oops, Poison) and oops == Poison(oops.reason, body_key(b"{oops"))
    with_id = parse_message(b'{"id": "e9", "created": "nope"}')
    assert isinstance(with_id, Poison) and with_id.key == "e9"


def test_withdrawal_amount_that_is_no_number_is_poison() -> None:
    """A divest_amount that is not a number makes the event poison (the amount cannot be a trigger's basis)."""
    envelope = Envelope(
        id="e",
        created=T0,
        version="1.0.0",
        subject="portfolios",
        action="divest-amount-update",
        data={"id": "P1", "divest_amount": "lots"},
    )
    assert isinstance(parse_data(EventKind.WITHDRAWAL, envelope), Poison)


def test_creation_data_keeps_the_link() -> None:
    """portfolios.creation data: portfolio id, external id, owner."""
    envelope = Envelope(
        id="e",
        created=T0,
        version="1.0.0",
        subject="portfolios",
        action="creation",
        data={"id": "P1", "external_id": "X1", "owned_by_user_id": "U1"},
    )
    data = parse_data(EventKind.CREATION, envelope)
    assert isinstance(data, Creation) and (data.external_id, data.owned_by_user_id) == ("X1", "U1")


def test_sandbox_derives_the_documented_events_from_a_change() -> None:
    """Created -> creation; divest changed -> divest-amount-update; status -> status-update; deleted -> removal."""
    before = portfolio_document("P01", "U01", 1, divest_amount=None)
    [created] = events_for_change(None, before)
    assert (created["subject"], created["action"], created["data"]["owned_by_user_id"]) == (
        "portfolios",
        "creation",
        "U01",
    )
    asked = {
        **before,
        "config": {
            **before["config"],
            "manager_settings": {**before["config"]["manager_settings"], "divest_amount": Decimal("250.00")},
        },
    }
    [withdrawal] = events_for_change(before, asked)
    assert withdrawal["action"] == "divest-amount-update"
    assert (withdrawal["data"]["divest_amount"], withdrawal["data"]["currency"]) == (Decimal("250.00"), "EUR")
    actions = [e["action"] for e in events_for_change(asked, {**asked, "status": "INACTIVE"})]
    assert actions == ["status-update"]
    assert [e["action"] for e in events_for_change(asked, {**asked, "deleted": True})] == ["removal"]
    assert events_for_change(asked, dict(asked)) == []
