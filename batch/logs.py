"""structlog set-up: JSON lines when stderr is not a terminal, readable console output when it is.

Event names are stable and dotted (``run.started``, ``payout.needs_attention``); context such as
``run_id``, ``business_date``, ``portfolio_id`` and ``payout_id`` is bound with contextvars.
A last processor masks anything that looks like a secret or a full account number.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEYS = re.compile(r"(secret|password|token|authorization|access_key|dsn)", re.IGNORECASE)
_IBAN = re.compile(r"\b([A-Z]{2}\d{2})[A-Z0-9]{8,26}([A-Z0-9]{4})\b")
_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def scrub(value: str) -> str:
    """Mask IBAN-like account numbers and DSN passwords in free text."""
    return _DSN_PASSWORD.sub(r"\1***@", _IBAN.sub(r"\1…\2", value))


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and key not in ("event",):
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = scrub(value)
    return event


def configure_logging(level: str = "INFO", stream: TextIO | None = None, json_output: bool | None = None) -> None:
    stream = stream or sys.stderr
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # one write() per line: worker processes share the planner's stderr, and print() writes the
        # line and its newline separately, so concurrent lines could interleave mid-line
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
