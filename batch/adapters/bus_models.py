"""The shapes of InvestSuite's outbound bus events (pydantic), parsed from the raw message body.

Envelope (docs, *Events*): ``{"id", "created", "version": "1.0.0", "subject", "action", "data"}``. The
listener decodes every body itself (``parse_message``; never a framework decoder that could fail before
the handler runs, whatever the content type says): a body over the size limit, not UTF-8, not JSON, an
envelope that does not validate (no id, no timezone on ``created``) or the data of a known event that
does not validate is *poison*: it is dead-lettered with the reason, never handled. JSON is read with
``batch.codec.loads`` (every number with a fraction or an exponent as an exact ``Decimal``:
``divest_amount: 1e100`` stays 10^100, never a float).

Also documented, and accepted (issue 24):

- the *bare* bodies of the Events page: ``portfolio.funding`` as ``{"id", "value", "currency"}`` and
  ``portfolio.removal`` as ``{"id"}``, told apart by the event name where the bus carries it (routing key
  or topic ending in ``portfolio.funding`` / ``portfolio.removal``) and by shape on a single topic;
- ``created`` written as the page's placeholder ``"-1000000000-01-01T00:00:00Z"`` (any year before 1):
  read as *time unknown* (``None``), never as "older than everything", so never dropped as stale.

Inbox keys: the event id where there is one; a bare body (whose ``id`` is the portfolio's) is keyed by a
digest of routing key and body, so a funding and a removal of one portfolio never collide; poison by the
broker's message id where the bus gives one, else by a digest of the body.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from batch import codec
from batch.domain.events import EventKind
from batch.domain.money import parse_amount
from batch.errors import InvalidAmountError

MAX_REASON = 500


def _time_or_unknown(raw: object) -> object:
    """The documented placeholder (a year before 1, e.g. ``-1000000000-01-01T00:00:00Z``) means "unknown"."""
    if isinstance(raw, str) and raw.strip().startswith("-"):
        return None
    return raw


class Envelope(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    #: None: the time is unknown (the docs' placeholder); such an event is never stale
    created: Annotated[AwareDatetime | None, BeforeValidator(_time_or_unknown)]
    version: str = Field(min_length=1, max_length=20)
    subject: str = Field(min_length=1, max_length=100)
    action: str = Field(min_length=1, max_length=100)
    data: dict[str, Any]

    @property
    def portfolio_id(self) -> str | None:
        """The portfolio the event is about: ``data.id`` of a portfolio event, ``data.portfolio_id`` otherwise."""
        for key in ("portfolio_id", "id") if not self.subject.lower().startswith("portfolio") else ("id",):
            value = self.data.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:64]
        return None


class _PortfolioEvent(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    external_id: str | None = Field(default=None, max_length=200)


class Creation(_PortfolioEvent):
    owned_by_user_id: str | None = Field(default=None, max_length=64)


class StatusUpdate(_PortfolioEvent):
    value: str = Field(min_length=1, max_length=64)


def _amount(raw: object) -> Decimal | None:
    if raw is None:  # null, like 0, means nothing is requested
        return None
    try:
        return parse_amount(raw)
    except InvalidAmountError as exc:
        raise ValueError(str(exc)) from exc


class Withdrawal(_PortfolioEvent):
    #: the TOTAL requested (not an increment); >= 1e100 is a full withdrawal
    divest_amount: Annotated[Decimal | None, BeforeValidator(_amount)]
    #: informational only (REST is the truth); the page's example is "a-currency-code"
    currency: str | None = Field(default=None, max_length=64)


class Funding(_PortfolioEvent):
    pass


class Removal(_PortfolioEvent):
    pass


EventData = Creation | StatusUpdate | Withdrawal | Funding | Removal
DATA_MODELS: dict[EventKind, type[EventData]] = {
    EventKind.CREATION: Creation,
    EventKind.STATUS_UPDATE: StatusUpdate,
    EventKind.WITHDRAWAL: Withdrawal,
    EventKind.FUNDING: Funding,
    EventKind.REMOVAL: Removal,
}


@dataclass(frozen=True)
class Poison:
    """A message that cannot be handled: why, and the key it is recorded under in the inbox."""

    reason: str
    key: str


def body_key(body: bytes) -> str:
    """The inbox key of a message without a usable event id: its content's hash."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _problems(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)[:MAX_REASON]


def routed_key(routing_key: str | None, body: bytes) -> str:
    """The inbox key of an event without an id of its own: a digest of its routing key and body."""
    return "sha256:" + hashlib.sha256((routing_key or "").encode("utf-8") + b"\n" + body).hexdigest()


def poison_key(body: bytes, message_id: str | None) -> str:
    """A poison message's inbox key: the broker's message id where there is one, else the body's digest."""
    if message_id and message_id.strip():
        return f"message-id:{message_id.strip()}"[:200]
    return body_key(body)


#: the keys of the envelope: a body with none of them is a bare body (funding, removal)
ENVELOPE_KEYS = frozenset({"created", "version", "subject", "action", "data"})
BARE_FUNDING = frozenset({"id", "value", "currency"})


def bare_kind(routing_key: str | None, raw: dict[str, Any]) -> EventKind | None:
    """The kind of a bare body: by the event name the bus carries, else by its shape; None when neither fits."""
    name = (routing_key or "").strip().lower().replace("/", ".")
    for kind in (EventKind.FUNDING, EventKind.REMOVAL):
        if name.endswith((f"portfolio.{kind}", f"portfolios.{kind}")):
            return kind
    keys = set(raw)
    if keys >= BARE_FUNDING:
        return EventKind.FUNDING
    if keys in ({"id"}, {"id", "external_id"}):
        return EventKind.REMOVAL
    return None


def parse_message(
    body: bytes, *, routing_key: str | None = None, message_id: str | None = None, max_bytes: int = 65536
) -> Envelope | Poison:
    """The event of a raw message as the bus handed it over, or why it is poison (decoded here, nowhere else)."""
    key = poison_key(body, message_id)
    if len(body) > max_bytes:
        return Poison(f"body of {len(body)} bytes is over the limit of {max_bytes}", key)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Poison(f"not UTF-8: {exc}"[:MAX_REASON], key)
    try:
        raw = codec.loads(text)
    except codec.JsonInputError as exc:
        return Poison(f"invalid JSON: {exc}"[:MAX_REASON], key)
    if not isinstance(raw, dict):
        return Poison("the body is not a JSON object", key)
    if ENVELOPE_KEYS.isdisjoint(raw):
        kind = bare_kind(routing_key, raw)
        if kind is None or not isinstance(raw.get("id"), str):
            return Poison("neither an event envelope nor a documented bare funding/removal body", key)
        return Envelope(
            id=routed_key(routing_key, body), created=None, version="1.0.0", subject="portfolio", action=kind, data=raw
        )
    return _envelope(raw, key)


def _envelope(raw: dict[str, Any], key: str) -> Envelope | Poison:
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        event_id = raw.get("id") if isinstance(raw.get("id"), str) and 0 < len(raw["id"]) <= 200 else None
        return Poison(f"bad envelope: {_problems(exc)}", event_id or key)


def parse_data(kind: EventKind, envelope: Envelope) -> EventData | Poison:
    """The data of a known event, or why it is poison (a missing portfolio id, an amount that is no number)."""
    try:
        return DATA_MODELS[kind].model_validate(envelope.data)
    except ValidationError as exc:
        return Poison(f"bad {kind} data: {_problems(exc)}", envelope.id)
