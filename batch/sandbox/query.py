"""The InvestSuite collection query language, the subset the job and the reference use, compiled to SQL.

Grammar (keywords are case-insensitive)::

    expression := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "(" expression ")" | field OPERATOR value | field "in" "[" value ("," value)* "]"
    OPERATOR   := eq | neq | lt | le | gt | ge
    value      := number | 'single-quoted string' ('' escapes a quote) | true | false | null
    field      := dotted path, e.g. config.manager_settings.divest_amount

Semantics: numbers compare numerically against JSON numbers and numeric strings (``neq 0`` excludes
``0`` and ``0.0``); ``eq``/``neq`` with a string compare text, ``*`` is a wildcard; ``eq null``
matches a missing field or JSON null. A comparison with a missing field is false, except ``neq``,
which is true (null is not 0). ``orderby`` is not supported (results are always ordered by id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

NumberValue = Decimal
Value = Decimal | str | bool | None

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<punct>[()\[\],])
      | (?P<word>[^\s()\[\],']+)
    )""",
    re.VERBOSE,
)
_FIELD_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$")
_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
OPERATORS = ("eq", "neq", "lt", "le", "gt", "ge")
_SQL_OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


class QuerySyntaxError(ValueError):
    """The query string does not parse."""


@dataclass(frozen=True)
class Comparison:
    field: tuple[str, ...]
    operator: str
    value: Value


@dataclass(frozen=True)
class Membership:
    field: tuple[str, ...]
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Junction:
    operator: str  # "and" | "or"
    operands: tuple[Expression, ...]


Expression = Comparison | Membership | Junction


@dataclass(frozen=True)
class _Token:
    kind: str  # "string" | "punct" | "word"
    text: str


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    source = source.rstrip()
    while position < len(source):
        match = _TOKEN_RE.match(source, position)
        if match is None or match.end() == position:
            raise QuerySyntaxError(f"cannot read the query at position {position}: {source[position:]!r}")
        kind = match.lastgroup or "word"
        tokens.append(_Token(kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._index = 0

    def _peek(self) -> _Token | None:
        return self._tokens[self._index] if self._index < len(self._tokens) else None

    def _next(self, expected: str) -> _Token:
        token = self._peek()
        if token is None:
            raise QuerySyntaxError(f"query ended early: expected {expected}")
        self._index += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token.kind == "word" and token.text.lower() == word:
            self._index += 1
            return True
        return False

    def parse(self) -> Expression:
        expression = self._expression()
        token = self._peek()
        if token is not None:
            raise QuerySyntaxError(f"unexpected {token.text!r} after a complete expression")
        return expression

    def _expression(self) -> Expression:
        operands = [self._term()]
        while self._keyword("or"):
            operands.append(self._term())
        return operands[0] if len(operands) == 1 else Junction("or", tuple(operands))

    def _term(self) -> Expression:
        operands = [self._factor()]
        while self._keyword("and"):
            operands.append(self._factor())
        return operands[0] if len(operands) == 1 else Junction("and", tuple(operands))

    def _factor(self) -> Expression:
        token = self._next("a field or '('")
        if token.kind == "punct" and token.text == "(":
            inner = self._expression()
            closing = self._next("')'")
            if closing.text != ")":
                raise QuerySyntaxError(f"expected ')', got {closing.text!r}")
            return inner
        if token.kind != "word" or not _FIELD_RE.match(token.text) or token.text.lower() in ("and", "or"):
            raise QuerySyntaxError(f"expected a field name, got {token.text!r}")
        field = tuple(token.text.split("."))
        operator = self._next("an operator").text.lower()
        if operator == "in":
            return Membership(field, self._list())
        if operator not in OPERATORS:
            raise QuerySyntaxError(f"unknown operator {operator!r} (supported: {', '.join(OPERATORS)}, in)")
        value = self._value()
        if operator in ("lt", "le", "gt", "ge") and (value is None or isinstance(value, bool)):
            raise QuerySyntaxError(f"{operator} needs a number or a string, not {value!r}")
        return Comparison(field, operator, value)

    def _list(self) -> tuple[Value, ...]:
        opening = self._next("'['")
        if opening.text != "[":
            raise QuerySyntaxError("expected '[' after in")
        values = [self._value()]
        while True:
            token = self._next("',' or ']'")
            if token.text == "]":
                return tuple(values)
            if token.text != ",":
                raise QuerySyntaxError(f"expected ',' or ']', got {token.text!r}")
            values.append(self._value())

    def _value(self) -> Value:
        token = self._next("a value")
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        if token.kind == "word":
            lowered = token.text.lower()
            if lowered == "true":
                return True
            if lowered == "false":
                return False
            if lowered == "null":
                return None
            if _NUMBER_RE.match(token.text):
                try:
                    return Decimal(token.text)
                except InvalidOperation as exc:  # pragma: no cover - the regex already checked
                    raise QuerySyntaxError(f"bad number {token.text!r}") from exc
        raise QuerySyntaxError(f"expected a value (number, 'string', true, false, null), got {token.text!r}")


def parse_query(source: str) -> Expression:
    """Parse a query string; raises QuerySyntaxError with a readable message."""
    if not source.strip():
        raise QuerySyntaxError("empty query")
    return _Parser(_tokenize(source)).parse()


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _path_literal(field: tuple[str, ...]) -> str:
    # Field names are restricted by _FIELD_RE to letters, digits, "_" and "$": safe inside a literal.
    # Literals (not parameters) let PostgreSQL match the partial index of the pending-withdrawal query.
    return "'{" + ",".join(field) + "}'"


def _number_literal(value: Decimal) -> str:
    return format(value, "f") if value == value.to_integral_value() and abs(value) < 10**30 else str(value)


def _compare_sql(node: Comparison, column: str, params: list[object]) -> str:
    target = f"{column} #> {_path_literal(node.field)}"
    value = node.value
    if value is None:
        kind = f"coalesce(jsonb_typeof({target}), 'null')"
        if node.operator == "eq":
            return f"{kind} = 'null'"
        if node.operator == "neq":
            return f"{kind} <> 'null'"
        raise QuerySyntaxError(f"{node.operator} null is not supported")
    if isinstance(value, bool):
        test = f"coalesce({target} = '{'true' if value else 'false'}'::jsonb, false)"
        return test if node.operator == "eq" else f"NOT {test}"
    if isinstance(value, Decimal):
        sql_operator = "=" if node.operator == "neq" else _SQL_OPERATORS[node.operator]
        literal = _number_literal(value)
        number = literal if not literal.startswith("-") else f"({literal})"
        test = f"coalesce(sandbox.num({target}) {sql_operator} {number}, false)"
        return f"NOT {test}" if node.operator == "neq" else test
    # a string: always a bound parameter
    text = f"{column} #>> {_path_literal(node.field)}"
    if node.operator in ("eq", "neq") and "*" in value:
        params.append(_like_pattern(value))
        test = f"coalesce(({text}) LIKE %s, false)"
    elif node.operator == "eq":
        params.append(value)
        return f"({text}) = %s"  # NULL is not true either; bare, it can use an index (sql/sandbox/0002)
    elif node.operator == "neq":
        params.append(value)
        test = f"coalesce(({text}) = %s, false)"
    else:
        params.append(value)
        return f"coalesce(({text}) {_SQL_OPERATORS[node.operator]} %s, false)"
    return f"NOT {test}" if node.operator == "neq" else test


def compile_sql(expression: Expression, column: str = "search_doc") -> tuple[str, list[object]]:
    """A SQL boolean expression over the jsonb ``column`` and its psycopg parameters (``%s`` style).

    Field paths and numbers are written as literals (validated by the parser), strings are parameters.
    """
    params: list[object] = []

    def visit(node: Expression) -> str:
        if isinstance(node, Junction):
            glue = " AND " if node.operator == "and" else " OR "
            return "(" + glue.join(visit(operand) for operand in node.operands) + ")"
        if isinstance(node, Membership):
            if all(isinstance(value, str) and "*" not in value for value in node.values):
                # plain strings: one array parameter (an id lookup sends up to 100 of them); bare, so it can use
                # an index (NULL for a missing field is not true either, and the grammar has no NOT)
                params.append(list(node.values))
                return f"({column} #>> {_path_literal(node.field)}) = ANY(%s)"
            parts = [visit(Comparison(node.field, "eq", value)) for value in node.values]
            return "(" + " OR ".join(parts) + ")"
        return _compare_sql(node, column, params)

    return visit(expression), params
