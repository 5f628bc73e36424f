"""Log set-up: JSON or console by switch, standard-library records rendered like ours, bound context everywhere."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from batch.errors import ConfigError
from batch.logs import LOG_FORMATS, configure_logging, owns_stdlib_logging, reset_logging, wants_json


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    reset_logging()


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # raises on any line that is not one JSON object


def test_json_mode_renders_every_record_as_one_json_line_with_the_bound_context() -> None:
    """JSON mode: structlog events, library records, exceptions and warnings are each one JSON line with run_id."""
    stream = io.StringIO()
    assert configure_logging("INFO", "json", stream=stream) is True
    log = structlog.get_logger("batch.test")
    with structlog.contextvars.bound_contextvars(run_id="r-42", business_date="2026-11-30"):
        log.info("run.started", dry_run=False)
        logging.getLogger("apscheduler.scheduler").warning("Run time of job %r was missed", "nightly")
        try:
            raise ValueError("socket closed\nsecond line")
        except ValueError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("pool size too small", UserWarning, stacklevel=1)
        logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/ 200")  # INFO of a library: not shown
    events = _json_lines(stream)
    assert [e["event"] for e in events][:3] == [
        "run.started",
        "Run time of job 'nightly' was missed",
        "Exception in ASGI application",
    ]
    assert len(events) == 4
    for event in events:
        assert (event["run_id"], event["business_date"]) == ("r-42", "2026-11-30")
        assert {"level", "timestamp"} <= event.keys()
    assert (events[1]["logger"], events[1]["level"]) == ("apscheduler.scheduler", "warning")
    assert "ValueError: socket closed" in events[2]["exception"]
    assert events[3]["logger"] == "py.warnings" and "pool size too small" in events[3]["event"]


def test_library_records_below_warning_appear_at_debug() -> None:
    """At DEBUG the libraries' INFO and DEBUG records are rendered too (still JSON)."""
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/ 200")
    structlog.get_logger().debug("payout.step_started", step="LEDGER_POST")
    assert [e["event"] for e in _json_lines(stream)] == [
        "HTTP Request: GET http://127.0.0.1/ 200",
        "payout.step_started",
    ]


def test_json_lines_mask_secrets_in_library_records() -> None:
    """A library record carrying a DSN password or an IBAN is masked like our own events."""
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    logging.getLogger("sqlalchemy.pool").error(
        "cannot connect to postgresql://batch:Pw-9x@db/ledger for BE71096123456769"
    )
    (event,) = _json_lines(stream)
    assert "Pw-9x" not in event["event"] and "BE71096123456769" not in event["event"]


def test_console_mode_writes_readable_lines() -> None:
    """console mode: the event name and fields on a readable line, not JSON; library records too."""
    stream = io.StringIO()
    assert configure_logging("INFO", "console", stream=stream) is False
    structlog.get_logger().info("run.finished", exit_code=0)
    logging.getLogger("apscheduler.scheduler").warning("job missed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "run.finished" in lines[0] and "exit_code" in lines[0]
    assert "job missed" in lines[1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_auto_is_json_unless_the_stream_is_a_terminal() -> None:
    """auto: JSON on a pipe or file, console on a terminal; json/console are taken as asked."""
    assert LOG_FORMATS == ("json", "console", "auto")
    assert wants_json("auto", io.StringIO()) is True
    assert wants_json("auto", _Terminal()) is False
    assert wants_json("json", _Terminal()) is True
    assert wants_json("console", io.StringIO()) is False
    terminal = _Terminal()
    assert configure_logging("INFO", "auto", stream=terminal) is False


def test_unknown_level_or_format_is_a_config_error() -> None:
    """A log level or format outside the documented choices is a ConfigError naming the choices."""
    with pytest.raises(ConfigError, match=r"unknown log level 'LOUD'.*DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        configure_logging("LOUD", "json", stream=io.StringIO())
    unknown: Any = "xml"  # as a config file or the command line may say it; the type allows only the choices
    with pytest.raises(ConfigError, match=r"unknown log format 'xml'.*json, console, auto"):
        configure_logging("INFO", unknown, stream=io.StringIO())


def test_configuring_again_replaces_the_handler_and_reset_removes_it() -> None:
    """A second configure_logging leaves one root handler (ours); reset_logging removes it."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=first)
    configure_logging("INFO", "json", stream=second)
    assert owns_stdlib_logging()
    logging.getLogger("x").warning("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1
    reset_logging()
    assert not owns_stdlib_logging()


def test_enums_are_printed_as_their_values() -> None:
    """Console and JSON lines print enums as values: ``{'HOLD': 7}``, never ``<Decision.HOLD: 'HOLD'>``."""
    from batch.domain.model import Decision  # noqa: PLC0415

    for fmt in ("console", "json"):
        stream = io.StringIO()
        configure_logging("INFO", fmt, stream=stream)
        structlog.get_logger("t").info("run.planned", by_decision={Decision.HOLD: 7}, decision=Decision.PAY)
        text = stream.getvalue()
        assert "<Decision" not in text and "HOLD" in text and "PAY" in text, text
