"""The shapes of InvestSuite's outbound bus events (pydantic), parsed from the raw message body.

Envelope (docs, *Events*): ``{"id", "created", "version": "1.0.0", "subject", "action", "data"}``. The body
is read with ``batch.codec.loads`` (every JSON number with a fraction or an exponent as an exact
``Decimal``: ``divest_amount: 1e100`` stays 10^100, never a float). A body that is not JSON, an envelope
that does not validate (no id, no timezone on ``created``) or the data of a known event that does not
validate is *poison*: it is dead-lettered with the reason, never handled.
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


class Envelope(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    created: AwareDatetime
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
    currency: str | None = Field(default=None, max_length=10)


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


def parse_envelope(body: bytes) -> Envelope | Poison:
    """The envelope of a raw message, or why it is poison."""
    try:
        raw = codec.loads(body)
    except codec.JsonInputError as exc:
        return Poison(f"invalid JSON: {exc}"[:MAX_REASON], body_key(body))
    if not isinstance(raw, dict):
        return Poison("the body is not a JSON object", body_key(body))
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        event_id = raw.get("id") if isinstance(raw.get("id"), str) and 0 < len(raw["id"]) <= 200 else None
        return Poison(f"bad envelope: {_problems(exc)}", event_id or body_key(body))


def parse_data(kind: EventKind, envelope: Envelope) -> EventData | Poison:
    """The data of a known event, or why it is poison (a missing portfolio id, an amount that is no number)."""
    try:
        return DATA_MODELS[kind].model_validate(envelope.data)
    except ValidationError as exc:
        return Poison(f"bad {kind} data: {_problems(exc)}", envelope.id)
