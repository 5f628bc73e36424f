"""The business date: today in the bank's time zone, the default date a run or a listener works for."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from zoneinfo import ZoneInfo


def business_today(timezone: str, now: Callable[[], datetime] | None = None) -> date:
    """Today in the configured time zone (the default business date)."""
    moment = now() if now is not None else datetime.now(ZoneInfo(timezone))
    return moment.astimezone(ZoneInfo(timezone)).date()
