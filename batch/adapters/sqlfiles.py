"""Named SQL queries kept in ``.sql`` files, written in one parameter style (``:name``).

A query file ``sql/queries/<file>.sql`` holds several statements, each introduced by a line
``-- name: <query_name>`` (the lines up to the next such line are its text; full-line ``--`` comments
document it and are not sent). ``load_queries("<file>")`` returns them by name; each query offers its text
as a SQLAlchemy ``text()`` clause and, for the hot path's raw psycopg cursors, the same statement in
psycopg's ``%(name)s`` style (converted once, here, outside quoted literals and ``::`` casts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import sqlalchemy as sa

from batch.adapters.migrations import sql_root
from batch.errors import ConfigError

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
# a quoted literal (kept as is) or a :name parameter that is not part of a ``::`` cast
_PARAM_OR_LITERAL = re.compile(r"'(?:[^']|'')*'|(?<!:):([A-Za-z_]\w*)")


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    #: the comment lines right below the name line
    doc: str = ""

    @cached_property
    def text(self) -> sa.TextClause:
        """For SQLAlchemy connections (``conn.execute(q.text, {...})``)."""
        return sa.text(self.sql)

    @cached_property
    def pyformat(self) -> str:
        """The same statement for a raw psycopg cursor (``cursor.execute(q.pyformat, {...})``)."""

        def swap(match: re.Match[str]) -> str:
            return match.group(0) if match.group(1) is None else f"%({match.group(1)})s"

        return _PARAM_OR_LITERAL.sub(swap, self.sql.replace("%", "%%"))


@dataclass(frozen=True)
class Queries:
    """The named queries of one file; ``queries.name`` or ``queries["name"]``."""

    file: str
    by_name: dict[str, Query] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Query:
        try:
            return self.by_name[name]
        except KeyError:
            raise AttributeError(f"no query {name!r} in {self.file}.sql") from None

    def __getitem__(self, name: str) -> Query:
        return self.__getattr__(name)


def parse_queries(file: str, text: str) -> Queries:
    """Split a query file into its named statements (refuses duplicates and unnamed text)."""
    names = list(_NAME_LINE.finditer(text))
    if not names:
        raise ConfigError(f"{file}.sql has no '-- name:' line")
    if text[: names[0].start()].strip(" \n") and not all(
        line.startswith("--") or not line.strip() for line in text[: names[0].start()].splitlines()
    ):
        raise ConfigError(f"{file}.sql: SQL before the first '-- name:' line")
    queries: dict[str, Query] = {}
    for index, match in enumerate(names):
        end = names[index + 1].start() if index + 1 < len(names) else len(text)
        lines = text[match.end() : end].strip().splitlines()
        # full-line comments document the query and are not sent (a ':' in them is no parameter)
        doc = "\n".join(line.strip()[2:].strip() for line in lines if line.strip().startswith("--"))
        body = "\n".join(line for line in lines if not line.strip().startswith("--")).strip()
        name = match.group(1)
        if name in queries:
            raise ConfigError(f"{file}.sql: query {name} defined twice")
        if not body:
            raise ConfigError(f"{file}.sql: query {name} is empty")
        queries[name] = Query(name, body, doc)
    return Queries(file, queries)


@cache
def load_queries(file: str) -> Queries:
    """The named queries of ``sql/queries/<file>.sql`` (read once per process)."""
    path: Path = sql_root() / "queries" / f"{file}.sql"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"query file not found: {path}") from exc
    return parse_queries(file, text)
