"""The one JSON codec: exact Decimals in, normalised numbers out, and the journal's canonical form.

- ``loads``: every JSON number with a fraction or an exponent becomes a ``Decimal`` (``1e100`` stays
  exact); ``NaN``/``Infinity`` are refused (``JsonInputError``).
- ``dumps``: Decimals become JSON numbers in plain notation (``1E+2`` -> ``100``, never exponent form);
  floats are refused (their precision is already lost). ``exact=True`` keeps a Decimal's own digits
  and exponent instead and lets floats through (the sandbox stores documents exactly as written, and
  its admin endpoints answer with plain settings).
- ``canonical``: sorted keys, no spaces, Decimals as strings, dates, datetimes and UUIDs as text —
  stable text for the audit hash and the journal's JSON columns.

Standard library only: the domain, the adapters and the sandbox all use it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

__all__ = ["JsonInputError", "canonical", "canonical_rows", "dumps", "loads"]

_encode_string = json.encoder.encode_basestring_ascii


class JsonInputError(ValueError):
    """A text is not valid JSON (or uses NaN/Infinity)."""


def _refuse_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a valid JSON number")


def loads(text: str | bytes, *, parse_float: Callable[[str], Decimal] = Decimal) -> Any:
    """Parse JSON keeping every fractional or exponent number as an exact Decimal (or ``parse_float``'s)."""
    try:
        return json.loads(text, parse_float=parse_float, parse_constant=_refuse_constant)
    except JsonInputError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonInputError(f"invalid JSON: {exc}") from exc


def dumps(value: Any, *, exact: bool = False) -> str:
    """Compact JSON; Decimals as numbers in plain notation (or their exact text with ``exact``)."""
    parts: list[str] = []
    _write(value, parts, exact)
    return "".join(parts)


def _write(value: Any, parts: list[str], exact: bool) -> None:
    if isinstance(value, str):
        parts.append(_encode_string(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(str(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} cannot be written as a JSON number")
        parts.append(str(value) if exact else format(value, "f"))
    elif isinstance(value, float):
        if not exact:
            raise TypeError("floats are refused in JSON we write; use Decimal")
        parts.append(json.dumps(value, allow_nan=False))
    elif isinstance(value, Mapping):
        parts.append("{")
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, got {type(key).__name__}")
            if index:
                parts.append(",")
            parts.append(_encode_string(key))
            parts.append(":")
            _write(item, parts, exact)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, parts, exact)
        parts.append("]")
    else:
        raise TypeError(f"cannot serialize {type(value).__name__} to JSON")


def canonical(data: Mapping[str, Any]) -> str:
    """Stable JSON text (sorted keys, no spaces, Decimals as strings) used in the audit hash."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=_canonical_default)


def canonical_rows(rows: list[dict[str, Any]]) -> str:
    """Rows as a JSON array for ``jsonb_to_recordset`` (Decimals as strings keep every digit)."""
    return json.dumps(rows, separators=(",", ":"), default=_canonical_default)


def _canonical_default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
