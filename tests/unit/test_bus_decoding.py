"""The listener's own decoding (issue 24): the documented bare bodies and placeholder ``created`` of the
Events page, inbox keys that never collide, and poison keyed by the broker's message id or the body."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batch.adapters.bus_models import (
    Envelope,
    Funding,
    Poison,
    Removal,
    body_key,
    parse_data,
    parse_message,
    routed_key,
)
from batch.domain.events import EventKind, classify

PORTFOLIO = "P01F8ZSNV0J45R9DFZ3D7D8C26F"
# the Events page's examples, verbatim (docs/concepts/events.md): the placeholder time of every envelope
PLACEHOLDER = "-1000000000-01-01T00:00:00Z"
PAGE_ENVELOPE = (
    b'{"id": "string", "created": "-1000000000-01-01T00:00:00Z", "version": "1.0.0", "subject": "string",'
    b' "action": "string", "data": {}}'
)
PAGE_WITHDRAWAL = (
    b'{"id": "E01", "created": "-1000000000-01-01T00:00:00Z", "version": "1.0.0", "subject": "portfolios",'
    b' "action": "divest-amount-update", "data": {"id": "P01F8ZSNV0J45R9DFZ3D7D8C26F", "external_id": "x",'
    b' "divest_amount": 1.234, "currency": "a-currency-code"}}'
)
PAGE_FUNDING = b'{"id": "P01F8ZSNV0J45R9DFZ3D7D8C26F", "value": 500, "currency": "EUR"}'
PAGE_REMOVAL = b'{"id": "P01F8ZSNV0J45R9DFZ3D7D8C26F"}'


def test_placeholder_created_is_time_unknown() -> None:
    """The page's placeholder ``created`` (year -1,000,000,000) reads as unknown, not as a parse failure."""
    for body in (PAGE_ENVELOPE, PAGE_WITHDRAWAL):
        assert PLACEHOLDER.encode() in body
        envelope = parse_message(body)
        assert isinstance(envelope, Envelope), envelope
        assert envelope.created is None


def test_placeholder_withdrawal_is_a_withdrawal_with_its_exact_amount() -> None:
    """The page's withdrawal example parses as a withdrawal of the exact Decimal 1.234."""
    envelope = parse_message(PAGE_WITHDRAWAL)
    assert isinstance(envelope, Envelope)
    kind = classify(envelope.subject, envelope.action)
    assert kind is EventKind.WITHDRAWAL
    data = parse_data(kind, envelope)
    assert not isinstance(data, Poison) and data.id == PORTFOLIO
    assert getattr(data, "divest_amount", None) == Decimal("1.234")


@pytest.mark.parametrize(
    ("body", "routing_key", "kind"),
    [
        (PAGE_FUNDING, "portfolio.funding", EventKind.FUNDING),
        (PAGE_REMOVAL, "portfolio.removal", EventKind.REMOVAL),
        (PAGE_FUNDING, None, EventKind.FUNDING),  # one topic for everything: told apart by shape
        (PAGE_REMOVAL, "investsuite.events", EventKind.REMOVAL),
        (PAGE_REMOVAL, "bank/events/portfolios.funding", EventKind.FUNDING),  # the name the bus carries wins
    ],
)
def test_bare_bodies_are_told_apart_by_event_name_then_by_shape(
    body: bytes, routing_key: str | None, kind: EventKind
) -> None:
    """Bare funding {id, value, currency} and removal {id}: by routing key/topic where given, else by shape."""
    envelope = parse_message(body, routing_key=routing_key)
    assert isinstance(envelope, Envelope), envelope
    assert classify(envelope.subject, envelope.action) is kind
    assert envelope.created is None and envelope.portfolio_id == PORTFOLIO
    data = parse_data(kind, envelope)
    assert isinstance(data, Funding if kind is EventKind.FUNDING else Removal) and data.id == PORTFOLIO


def test_bare_bodies_of_one_portfolio_never_share_an_inbox_key() -> None:
    """A funding and a removal of one portfolio (same id) get different keys; the routing key counts too."""
    funding = parse_message(PAGE_FUNDING, routing_key="portfolio.funding")
    removal = parse_message(PAGE_REMOVAL, routing_key="portfolio.removal")
    other_key = parse_message(PAGE_REMOVAL, routing_key="portfolios.removal")
    assert isinstance(funding, Envelope) and isinstance(removal, Envelope) and isinstance(other_key, Envelope)
    assert len({funding.id, removal.id, other_key.id, PORTFOLIO}) == 4
    assert removal.id == routed_key("portfolio.removal", PAGE_REMOVAL)
    assert parse_message(PAGE_REMOVAL, routing_key="portfolio.removal") == removal  # stable: a redelivery dedups


def test_poison_is_keyed_by_the_broker_message_id_else_by_its_body() -> None:
    """Poison with a broker message id is recorded under it; without one, under the body's digest."""
    with_id = parse_message(b"{truncated", message_id="amq-42")
    without = parse_message(b"{truncated")
    assert isinstance(with_id, Poison) and with_id.key == "message-id:amq-42"
    assert isinstance(without, Poison) and without.key == body_key(b"{truncated")


def test_over_size_body_is_poison_before_it_is_parsed() -> None:
    """A body over the limit is poison with its size named, even when it is valid JSON."""
    body = b'{"id": "e", "pad": "' + b"x" * 2000 + b'"}'
    result = parse_message(body, max_bytes=1024)
    assert isinstance(result, Poison) and result.reason.startswith(f"body of {len(body)} bytes is over the limit")


def test_a_real_time_is_kept_and_a_full_withdrawal_stays_exact() -> None:
    """Only the placeholder is unknown: a real ``created`` stays; 1e100 stays an exact Decimal."""
    body = (
        b'{"id": "e1", "created": "2026-11-30T09:00:00Z", "version": "1.0.0", "subject": "portfolios",'
        b' "action": "divest-amount-update", "data": {"id": "P1", "divest_amount": 1e100, "currency": "EUR"}}'
    )
    envelope = parse_message(body)
    assert isinstance(envelope, Envelope) and envelope.created is not None
    data = parse_data(EventKind.WITHDRAWAL, envelope)
    assert not isinstance(data, Poison)
    assert getattr(data, "divest_amount", None) == Decimal("1E+100")


def test_sandbox_page_shapes_parse_back_to_their_events() -> None:
    """The sandbox's "page" shapes: a bare removal on portfolio.removal, envelopes with the placeholder time."""
    from batch import codec  # noqa: PLC0415
    from batch.sandbox.bus_events import as_published, envelope  # noqa: PLC0415

    removal, key = as_published(envelope("removal", {"id": PORTFOLIO, "external_id": "x"}), "page")
    assert (removal, key) == ({"id": PORTFOLIO}, "portfolio.removal")
    parsed = parse_message(codec.dumps(removal).encode(), routing_key=key)
    assert isinstance(parsed, Envelope) and classify(parsed.subject, parsed.action) is EventKind.REMOVAL
    update, key = as_published(envelope("status-update", {"id": PORTFOLIO, "value": "ACTIVE"}), "page")
    assert update["created"] == PLACEHOLDER and key == "portfolios.status-update"
    parsed = parse_message(codec.dumps(update).encode(), routing_key=key)
    assert isinstance(parsed, Envelope) and parsed.created is None
    assert as_published(update, "envelope")[0] is update
