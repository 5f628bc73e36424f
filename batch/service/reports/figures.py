"""The report's smallest pieces, shared by its sections: a control-check line and an amount at its minor unit.

Pure; imported by the model, the deposits section and the checks (so that none of them imports another back).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from batch.domain.money import exact


def quantized(amount: Decimal | None, currency: str | None) -> Decimal | None:
    """An amount at the currency's minor unit, never rounded: a sub-minor 10.005 EUR stays 10.005."""
    if amount is None:
        return None
    return exact(amount, currency)


@dataclass(frozen=True)
class Check:
    name: str
    currency: str
    ok: bool
    detail: str
