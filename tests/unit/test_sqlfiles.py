"""Named SQL query files: parsing, one parameter style, conversion for raw psycopg cursors."""

from __future__ import annotations

import pytest

from batch.adapters.sqlfiles import load_queries, parse_queries
from batch.errors import ConfigError


def test_named_queries_are_split_and_their_comments_kept_apart() -> None:
    """Each `-- name:` starts a query; full-line comments become its doc and are not sent."""
    queries = parse_queries(
        "x", "-- header\n\n-- name: one\n-- takes {run id hex[:8]}\nSELECT :a\n\n-- name: two\nSELECT 2\n"
    )
    assert queries.one.sql == "SELECT :a"
    assert queries.one.doc == "takes {run id hex[:8]}"
    assert queries["two"].sql == "SELECT 2"


def test_pyformat_converts_parameters_but_not_casts_literals_or_percent() -> None:
    """`:name` becomes `%(name)s`; `::type` casts, quoted literals and `%` stay what they were."""
    (query,) = parse_queries("x", "-- name: q\nSELECT :a::jsonb, 'x:y', ':z', 5 % 2, CAST(:b AS text)").by_name.values()
    assert query.pyformat == "SELECT %(a)s::jsonb, 'x:y', ':z', 5 %% 2, CAST(%(b)s AS text)"


@pytest.mark.parametrize(
    "text",
    ["SELECT 1", "-- name: a\nSELECT 1\n-- name: a\nSELECT 2", "-- name: a\n-- only a comment\n"],
    ids=["no name line", "duplicate name", "empty query"],
)
def test_malformed_query_files_are_refused(text: str) -> None:
    """A file without names, with a name twice or with an empty query is a configuration error."""
    with pytest.raises(ConfigError):
        parse_queries("x", text)


def test_every_shipped_query_file_loads() -> None:
    """The journal's query files parse, and every query compiles as a SQLAlchemy text clause."""
    for file in ("journal_runs", "journal_decisions", "journal_payouts", "journal_audit", "journal_oversight"):
        for query in load_queries(file).by_name.values():
            assert query.text.text and query.pyformat
