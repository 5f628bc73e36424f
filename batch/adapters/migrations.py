"""Forward-only SQL migrations: numbered ``NNNN_name.sql`` files applied in order.

Each component (``journal``, ``ledger``, ``sandbox``) has its own folder under ``sql/`` and its own
schema of the same-named database. Applied files are recorded with their SHA-256 in
``<schema>.schema_migrations``; an applied file whose content changed is refused. The whole
migration runs under a transaction-level advisory lock, so two concurrent ``batch migrate`` are safe.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch.adapters.postgres import unavailable_as
from batch.errors import ConfigError

_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

#: component -> schema name in its database
COMPONENTS: dict[str, str] = {"journal": "batch", "ledger": "ledger", "sandbox": "sandbox"}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_root() -> Path:
    """The ``sql/`` folder: beside the package in a source checkout, else packaged data."""
    here = Path(__file__).resolve().parents[2] / "sql"
    if here.is_dir():
        return here
    packaged = Path(str(resources.files("batch"))) / "sql"
    if packaged.is_dir():
        return packaged
    raise ConfigError("cannot find the sql/ migrations folder")


def load_migrations(folder: Path) -> list[Migration]:
    migrations: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if not match:
            raise ConfigError(f"migration file name not understood: {path.name}")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"duplicate migration numbers in {folder}")
    return migrations


def migrate(engine: Engine, component: str, folder: Path | None = None) -> list[str]:
    """Apply the pending migrations of ``component``; return the names applied (empty when up to date)."""
    schema = COMPONENTS[component]
    migrations = load_migrations(folder or sql_root() / component)
    applied_now: list[str] = []
    with unavailable_as(f"{component} database", engine.url), engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"batch.migrate.{schema}"})
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
        conn.execute(
            sa.text(
                f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum char(64) NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        )
        rows = conn.execute(sa.text(f"SELECT version, name, checksum FROM {schema}.schema_migrations"))
        applied = {r.version: (r.name, r.checksum.strip()) for r in rows}
        known = {m.version for m in migrations}
        for version, (name, _) in applied.items():
            if version not in known:
                raise ConfigError(f"{component}: applied migration {name} is missing from the folder")
        for migration in migrations:
            if migration.version in applied:
                name, checksum = applied[migration.version]
                if checksum != migration.checksum:
                    raise ConfigError(
                        f"{component}: applied migration {name} was edited after it was applied "
                        "(checksum differs); write a new migration instead"
                    )
                continue
            # Through the DB-API cursor without parameters: the file is sent verbatim (no %-formatting).
            conn.connection.cursor().execute(migration.sql)
            conn.execute(
                sa.text(f"INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
                {"v": migration.version, "n": migration.name, "c": migration.checksum},
            )
            applied_now.append(migration.name)
    return applied_now


def pending(engine: Engine, component: str, folder: Path | None = None) -> list[str]:
    """Migrations of ``component`` not applied yet (all of them on an empty database)."""
    schema = COMPONENTS[component]
    migrations = load_migrations(folder or sql_root() / component)
    with engine.connect() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f"{schema}.schema_migrations"}).scalar()
        applied = (
            set(conn.execute(sa.text(f"SELECT version FROM {schema}.schema_migrations")).scalars()) if exists else set()
        )
    return [m.name for m in migrations if m.version not in applied]
