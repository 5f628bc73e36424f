"""Full-book cash reconciliation rules: every REAL_MONEY portfolio's InvestSuite ``$CCY`` cash against the
ledger balance of the account it maps to. Pure functions of plain records (``batch.service.reconcile.readback``
does the reading)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batch.service.reconcile.rules import ZERO, Break, BreakType, mask, text


@dataclass(frozen=True)
class BookPortfolio:
    """A REAL_MONEY portfolio as InvestSuite lists it, with the ledger account it maps to."""

    portfolio_id: str
    currency: str
    cash: Decimal | None
    account_reference: str | None


@dataclass(frozen=True)
class BookAccount:
    """The mapped ledger account's balance (``available`` = balance minus active holds)."""

    reference: str
    currency: str
    kind: str
    balance: Decimal
    available: Decimal


@dataclass
class BookFigures:
    """One currency's full-book totals: InvestSuite cash against the ledger balances it maps to."""

    portfolios: int = 0
    investsuite_cash: Decimal = ZERO
    ledger_balance: Decimal = ZERO
    breaks: int = 0
    absolute_difference: Decimal = ZERO

    def to_dict(self, currency: str) -> dict[str, Any]:
        return {
            "portfolios": self.portfolios,
            "investsuite_cash": text(self.investsuite_cash, currency),
            "ledger_balance": text(self.ledger_balance, currency),
            "difference": text(self.investsuite_cash - self.ledger_balance, currency),
            "absolute_difference": text(self.absolute_difference, currency),
            "breaks": self.breaks,
        }


def match_book_account(
    portfolio: BookPortfolio, account: BookAccount | None, tolerance: Decimal, figures: dict[str, BookFigures]
) -> Break | None:
    """Compare one portfolio's InvestSuite cash with its ledger account's balance; count it into ``figures``."""
    f = figures.setdefault(portfolio.currency, BookFigures())
    f.portfolios += 1
    cash = portfolio.cash if portfolio.cash is not None else ZERO
    f.investsuite_cash += cash
    base: dict[str, Any] = {"portfolio_id": portfolio.portfolio_id, "currency": portfolio.currency, "source": "ledger"}
    problem: Break | None = None
    if portfolio.account_reference is None:
        problem = Break(BreakType.UNMAPPED_PORTFOLIO, expected=cash, **base)
    elif account is None or account.kind != "CUSTOMER_INVESTMENT_CASH":
        problem = Break(
            BreakType.NO_LEDGER_ACCOUNT,
            expected=cash,
            evidence={"ledger_account": mask(portfolio.account_reference)},
            **base,
        )
    elif account.currency != portfolio.currency:
        problem = Break(
            BreakType.CURRENCY_MISMATCH,
            expected=cash,
            found=account.balance,
            evidence={"ledger_account": mask(account.reference), "ledger_currency": account.currency},
            **base,
        )
    else:
        f.ledger_balance += account.balance
        difference = abs(cash - account.balance)
        f.absolute_difference += difference
        if difference > tolerance:
            problem = Break(
                BreakType.CASH_MISMATCH,
                expected=cash,
                found=account.balance,
                evidence={
                    "ledger_account": mask(account.reference),
                    "difference": cash - account.balance,
                    "ledger_available": account.available,
                },
                **base,
            )
    if problem is not None:
        f.breaks += 1
    return problem


def orphan_account(reference: str, currency: str, balance: Decimal, mapped: set[str]) -> Break | None:
    """A customer ledger account no listed portfolio maps to."""
    if reference in mapped:
        return None
    return Break(
        BreakType.ORPHAN_LEDGER_ACCOUNT,
        portfolio_id=None,
        currency=currency,
        found=balance,
        evidence={"ledger_account": mask(reference)},
    )
