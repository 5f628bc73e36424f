"""structlog set-up: JSON lines or readable console output (``fmt``; ``auto``: JSON unless stderr is a terminal).

Event names are stable and dotted (``run.started``, ``payout.needs_attention``); context such as
``run_id``, ``business_date``, ``portfolio_id`` and ``payout_id`` is bound with contextvars.
Records of the standard library's ``logging`` (uvicorn, APScheduler, SQLAlchemy, ``warnings``) go
through the same processors and renderer, with the bound context, so in JSON mode every line on
stderr is one JSON object; they are shown from WARNING up (as Python does by default), or all of
them at DEBUG (httpx alone would log every request at INFO). A last processor masks anything that
looks like a secret or a full account number. Without ``tracebacks`` (the CLI's ``--debug``) an
exception is logged as one ``error`` field (``Type: message``), not as a traceback.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from enum import Enum
from typing import Any, Literal, TextIO, get_args

import structlog

from batch.errors import ConfigError

LogFormat = Literal["json", "console", "auto"]
#: the values of ``--log-format`` and ``--log-level``
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

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


def _plain(value: Any) -> Any:
    """Enums as their values, in dict keys and values and in lists too (``{"HOLD": 7}``, not ``{<Decision...>}``)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def _enum_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Every field as plain values: the console and JSON lines print an enum as its value."""
    for key, value in list(event.items()):
        if isinstance(value, (Enum, Mapping, list, tuple, set, frozenset)):
            event[key] = _plain(value)
    return event


def _exception_in_one_line(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace ``exc_info`` by ``error: "Type: message"`` on one line (tracebacks only when asked for)."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        exc = exc_info if isinstance(exc_info, BaseException) else exc_info[1]
        if exc is not None:
            event.setdefault("error", " ".join(f"{type(exc).__name__}: {exc}".split()))
    return event


_json_output = False


def json_logging() -> bool:
    """Whether the last ``configure_logging`` chose JSON lines (then nothing else may draw on stderr)."""
    return _json_output


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (a live progress display may redirect it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler this module installs (and replaces when logging is configured again)."""


def wants_json(fmt: LogFormat, stream: TextIO | None = None) -> bool:
    """Whether ``fmt`` means JSON lines on ``stream`` (default stderr): ``auto`` is JSON unless it is a terminal."""
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"unknown log format {fmt!r} (one of {', '.join(LOG_FORMATS)})")
    if fmt == "auto":
        target = stream if stream is not None else sys.stderr
        return not bool(getattr(target, "isatty", lambda: False)())
    return fmt == "json"


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "auto", *, stream: TextIO | None = None, tracebacks: bool = True
) -> bool:
    """Send structlog events and standard ``logging`` records to ``stream`` (default: stderr) as ``fmt``.

    ``level`` is one of ``LOG_LEVELS`` (any case); ``fmt`` one of ``LOG_FORMATS``. Returns True when
    the output is JSON. ``tracebacks=False`` logs exceptions as one ``error`` field. May be called
    again: the previous set-up is replaced.
    """
    global _json_output  # noqa: PLW0603 - the process's one logging set-up, as structlog's own is
    numeric = logging.getLevelName(level.upper())
    if level.upper() not in LOG_LEVELS or not isinstance(numeric, int):
        raise ConfigError(f"unknown log level {level!r} (one of {', '.join(LOG_LEVELS)})")
    json_output = wants_json(fmt, stream)
    target: Any = stream if stream is not None else _CurrentStderr()
    colors = bool(getattr(target, "isatty", lambda: False)())  # no escape codes in a file or a pipe
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=colors)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    exceptions: Any = structlog.processors.format_exc_info if tracebacks else _exception_in_one_line
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            exceptions,
            _enum_values,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # one write() per line: worker processes share the planner's stderr, and print() writes the
        # line and its newline separately, so concurrent lines could interleave mid-line
        logger_factory=structlog.WriteLoggerFactory(file=target),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(target, renderer, timestamper, exceptions, numeric, capture_warnings=json_output)
    _json_output = json_output
    return json_output


def _route_stdlib_logging(
    target: Any, renderer: Any, timestamper: Any, exceptions: Any, level: int, *, capture_warnings: bool
) -> None:
    """One root handler rendering ``logging`` records like structlog events (bound context included)."""
    handler = _StdlibHandler(target)  # StreamHandler writes the line and its newline in one write()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                _redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    logging.captureWarnings(capture_warnings)  # ``warnings`` printed as log records, i.e. JSON lines too


def owns_stdlib_logging() -> bool:
    """Whether ``configure_logging`` set up the root logger (then servers such as uvicorn should not)."""
    return any(isinstance(h, _StdlibHandler) for h in logging.getLogger().handlers)


def reset_logging() -> None:
    """Undo ``configure_logging``: structlog's defaults, our root handler removed, warnings printed again."""
    global _json_output  # noqa: PLW0603
    _json_output = False
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(handler)
    logging.captureWarnings(False)
