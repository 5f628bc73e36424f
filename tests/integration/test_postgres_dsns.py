"""DSN resolution without implicit infrastructure, and database errors that say where and why (never a password)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from batch.adapters.migrations import migrate
from batch.adapters.postgres import (
    EmbeddedServer,
    connection_cause,
    dsn_location,
    make_engine,
    resolve_dsns,
    sqlalchemy_url,
    unavailable_as,
)
from batch.errors import ConfigError, DatabaseUnavailableError
from batch.settings import DatabaseSettings

PASSWORD = "pw-Db-31337"
REMOTE = f"postgresql://batch:{PASSWORD}@db.example.internal:6543/payout_journal"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _secret(value: str) -> SecretStr:
    return SecretStr(value)


def test_missing_dsn_without_embedded_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    """No journal DSN and embedded = false: ConfigError naming the setting and its env var; nothing created."""
    settings = DatabaseSettings(ledger_dsn=_secret(REMOTE), data_dir=tmp_path / "pg")
    with pytest.raises(ConfigError) as caught:
        resolve_dsns(settings)
    assert str(caught.value) == (
        "database.journal_dsn is not set (BATCH_DATABASE__JOURNAL_DSN); or set [database] embedded = true "
        f"to use the embedded server under {tmp_path / 'pg'}"
    )
    assert not (tmp_path / "pg").exists()


def test_every_missing_needed_dsn_is_named_in_one_line(tmp_path: Path) -> None:
    """Journal and ledger both unset: one line names both settings and both env vars."""
    with pytest.raises(ConfigError) as caught:
        resolve_dsns(DatabaseSettings(data_dir=tmp_path / "pg"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "database.journal_dsn and database.ledger_dsn are not set "
        "(BATCH_DATABASE__JOURNAL_DSN, BATCH_DATABASE__LEDGER_DSN)"
    )
    with pytest.raises(ConfigError, match=r"^database\.sandbox_dsn is not set \(BATCH_DATABASE__SANDBOX_DSN\)"):
        resolve_dsns(
            DatabaseSettings(journal_dsn=_secret(REMOTE), ledger_dsn=_secret(REMOTE)),
            components=("journal", "ledger", "sandbox"),
        )


def test_unneeded_sandbox_dsn_stays_empty_and_starts_nothing(tmp_path: Path) -> None:
    """Journal and ledger set, sandbox unset, even with embedded = true: no server, sandbox is ''."""
    for embedded in (False, True):
        settings = DatabaseSettings(
            journal_dsn=_secret(REMOTE), ledger_dsn=_secret(REMOTE), embedded=embedded, data_dir=tmp_path / "pg"
        )
        dsns = resolve_dsns(settings)
        assert (dsns.journal, dsns.ledger, dsns.sandbox, dsns.started_server) == (REMOTE, REMOTE, "", None)
    assert not (tmp_path / "pg").exists()


def test_embedded_true_starts_the_server_once_and_says_so(tmp_path: Path) -> None:
    """embedded = true and no DSN: the server under data_dir starts, three databases exist, the starter is told."""
    settings = DatabaseSettings(embedded=True, data_dir=tmp_path / "pg")
    server = EmbeddedServer(settings.data_dir)
    assert not server.is_running()
    try:
        first = resolve_dsns(settings)
        assert first.started_server == server
        assert server.is_running()
        for dsn in (first.journal, first.ledger, first.sandbox):
            engine = make_engine(dsn, pool_size=1)
            try:
                with engine.connect() as conn:
                    assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            finally:
                engine.dispose()
        assert {make_url(sqlalchemy_url(d)).database for d in (first.journal, first.ledger, first.sandbox)} == {
            "batch_journal",
            "core_ledger",
            "investsuite_sandbox",
        }
        again = resolve_dsns(settings)
        assert again.started_server is None  # already running: not this caller's to stop
        assert again.journal == first.journal
    finally:
        server.stop(mode="immediate")
    assert not server.is_running()


@pytest.mark.parametrize(
    ("dsn", "location"),
    [
        (REMOTE, "db.example.internal:6543/payout_journal"),
        ("postgresql://batch@db.example.internal/ledger", "db.example.internal:5432/ledger"),
        ("postgresql+psycopg://u:p@127.0.0.1:5433/x", "127.0.0.1:5433/x"),
        (f"postgresql://u:{PASSWORD}@/nowhere?host=/var/run/postgresql", "/var/run/postgresql:5432/nowhere"),
        (f"host=db user=u password={PASSWORD}", "<a DSN that is not a postgresql:// URL>"),
    ],
    ids=["password", "default-port", "sqlalchemy-url", "socket", "keyword-form"],
)
def test_dsn_location_is_host_port_and_database_only(dsn: str, location: str) -> None:
    """dsn_location gives host:port/dbname, never the user or the password."""
    assert dsn_location(dsn) == location
    assert PASSWORD not in dsn_location(dsn)


def test_connection_refused_names_the_component_location_and_cause() -> None:
    """A refused connection reads "<what> at host:port/db unavailable: connection refused", no password."""
    port = _closed_port()
    engine = make_engine(f"postgresql://batch:{PASSWORD}@127.0.0.1:{port}/payout_journal", pool_size=1)
    try:
        with pytest.raises(DatabaseUnavailableError) as caught, unavailable_as("journal database", engine.url):
            engine.connect()
    finally:
        engine.dispose()
    assert str(caught.value) == f"journal database at 127.0.0.1:{port}/payout_journal unavailable: connection refused"
    assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
    assert connection_cause(caught.value.__cause__) == "connection refused"


def test_migrate_against_a_dead_server_names_the_database() -> None:
    """`batch migrate` against a server that is down raises DatabaseUnavailableError naming the component and where."""
    port = _closed_port()
    engine = make_engine(f"postgresql://batch:{PASSWORD}@127.0.0.1:{port}/core_banking", pool_size=1)
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            migrate(engine, "ledger")
    finally:
        engine.dispose()
    assert str(caught.value) == f"ledger database at 127.0.0.1:{port}/core_banking unavailable: connection refused"


def test_connection_cause_masks_passwords_and_drops_libpq_preamble() -> None:
    """The cause is the driver's first line without 'connection to server at ... failed:', FATAL, or a password."""

    class Fake(Exception):
        pass

    refused = Fake(
        'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
        'password authentication failed for user "batch"\n\tmore detail'
    )
    assert connection_cause(refused) == 'password authentication failed for user "batch"'
    leaky = Fake(f"invalid connection option in postgresql://u:{PASSWORD}@h/db password={PASSWORD}")
    assert PASSWORD not in connection_cause(leaky)
    assert connection_cause(Fake("")) == "Fake"
